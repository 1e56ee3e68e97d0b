"""SqlQuery: questions answered with SQL over a per-episode sqlite database (see env.py)."""
