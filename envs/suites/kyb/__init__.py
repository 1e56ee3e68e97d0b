"""The ``kyb`` SOP suite: know-your-business checks for new merchant accounts (see README.md).

Data files live in ``data/``; ``generate.py`` rewrites them from a seed.
"""
