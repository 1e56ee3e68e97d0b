"""The ``routing`` SOP suite: support ticket triage into a queue with a priority (see README.md).

Data files live in ``data/``; ``generate.py`` rewrites them from a seed.
"""
