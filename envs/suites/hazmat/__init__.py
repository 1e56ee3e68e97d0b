"""The ``hazmat`` SOP suite: hazard class and air eligibility of outbound packages (README.md).

Data files live in ``data/``; ``generate.py`` rewrites them from a seed.
"""
