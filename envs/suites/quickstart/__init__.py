"""The ``quickstart`` SOP suite: a parcel help desk sized for a tiny model (see README.md).

Data files live in ``data/``; ``generate.py`` rewrites them from a seed.
"""
