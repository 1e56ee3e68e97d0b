"""Fixtures for the model tests (see ``helpers.py`` for the checkpoint variants)."""

from __future__ import annotations

import pytest

from tests.mtrl_jax.models.helpers import Checkpoint, make_checkpoint


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Checkpoint]:
    """All variants, made on first use (a lazy dict) and shared by every test module."""

    class Lazy(dict):
        def __missing__(self, name: str) -> Checkpoint:
            self[name] = make_checkpoint(name, tmp_path_factory.mktemp(name))
            return self[name]

    return Lazy()
