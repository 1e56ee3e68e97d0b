"""See env.py."""
