"""The ``refunds`` SOP suite: refund eligibility at an online store (see README.md).

Data files live in ``data/``; ``generate.py`` rewrites them from a seed.
"""
