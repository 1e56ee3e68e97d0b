"""Authored SOP suites: procedures, tools and task tables written for mtrl, in the SOP layout.

Each sub-package (``refunds``, ``hazmat``, ``kyb``, ``routing``, ``quickstart``) holds a seeded
generator (``generate.py``), a README and the generated files under ``data/``: ``sop.txt``,
``tools.json``, ``metadata.json``, ``tasks.csv``, ``behavior.json`` (format
``sop-tool-behavior/1``) and the manifest ``suite.json`` (format ``mtrl-sop-suite/1``) that names
them. Nothing here comes from SOP-Bench; the suites only share its folder layout so that one generic
replay engine (``mtrl_envs.sop``) can serve both.

Non-goals: loading, presenting or scoring suites (that is the engine's job); these modules only
write data files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUITE_NAMES: tuple[str, ...] = ("refunds", "hazmat", "kyb", "routing", "quickstart")
"""The authored suites, in the order the docs list them."""


def data_dir(name: str) -> Path:
    """Returns the folder holding a suite's generated files (the one ``suite.json`` lives in).

    Args:
        name: One of :data:`SUITE_NAMES`.

    Returns:
        The ``data/`` folder of that suite, inside the installed package.

    Raises:
        ValueError: If ``name`` is not an authored suite.

    >>> data_dir("refunds").name
    'data'
    """
    if name not in SUITE_NAMES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITE_NAMES)}")
    return Path(__file__).parent / name / "data"


def make_env(suite: str, *, split: str | None = "train", **kwargs: Any) -> Any:
    """Builds the generic SOP environment on one authored suite (the registered entry point).

    Args:
        suite: One of :data:`SUITE_NAMES`.
        split: ``train``, ``validation``, ``test``, or ``None`` for every task.
        **kwargs: Passed to :class:`mtrl_envs.sop.SopEnv` (tool format, budgets, ...).
    """
    from mtrl_envs.sop import SopEnv  # imported here so `data_dir` stays dependency-free

    return SopEnv(data_dir(suite), split=split, **kwargs)
