"""Per-episode resources for stateful tools (the stateful-tools pattern).

An :class:`EpisodeResources` owns what one episode's tools need: temporary directories, sqlite
connections, identifiers, private copies of in-memory JSON state, anything with a cleanup
callback. :class:`~mtrl_gym.core.TextEnv`
creates one at ``reset`` and releases it at the next ``reset``, at ``close``, and, through
``weakref.finalize``, when the environment is garbage-collected without being closed. Release runs
callbacks in reverse order of allocation and is idempotent, so nothing leaks across the 10^5
episodes of a training run.

Identifiers come from the environment's ``np_random``, so the same seed gives the same ids (a
reproducibility requirement), while temporary paths stay private to the episode.

Non-goals: isolation of untrusted code (see ``mtrl_gym.sandbox``).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mtrl_gym.types import JSON, copy_json


def _release_all(callbacks: list[Callable[[], Any]]) -> None:
    """Runs and clears cleanup callbacks, newest first; reports failures after trying all."""
    errors: list[BaseException] = []
    while callbacks:
        fn = callbacks.pop()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - keep releasing the rest, re-raise below
            errors.append(e)
    if errors:
        raise ExceptionGroup("failed to release episode resources", errors)  # type: ignore[arg-type]


class EpisodeResources:
    """Resources allocated for one episode and released together.

    Args:
        rng: Generator for identifiers (pass the environment's ``np_random``).
        base_dir: Parent directory for temporary directories (default: the system temp dir).
    """

    def __init__(self, rng: np.random.Generator | None = None, base_dir: str | None = None):
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self._base_dir = base_dir
        # The finalizer holds only the callback list, never ``self``, so it cannot keep us alive.
        self._callbacks: list[Callable[[], Any]] = []
        self._finalizer = weakref.finalize(self, _release_all, self._callbacks)
        self._released = False

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has run."""
        return self._released

    def on_release(self, fn: Callable[[], Any]) -> None:
        """Registers a cleanup callback, run at release (newest first)."""
        self._check_open()
        self._callbacks.append(fn)

    def tempdir(self, prefix: str = "mtrl-") -> Path:
        """Creates a private temporary directory removed at release."""
        self._check_open()
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self._base_dir))
        self._callbacks.append(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def sqlite(self, database: str | Path = ":memory:", **kwargs: Any) -> sqlite3.Connection:
        """Opens a sqlite connection closed at release.

        ``check_same_thread`` defaults to False because the episode runner may call a tool from a
        worker thread; an episode never calls two tools at once, so access stays serial.
        """
        self._check_open()
        kwargs.setdefault("check_same_thread", False)
        conn = sqlite3.connect(database, **kwargs)
        self._callbacks.append(conn.close)
        return conn

    def copy_json(self, value: JSON) -> Any:
        """The episode's own deep copy of in-memory JSON-like state, emptied at release.

        For tools that change plain-data state (a small "database" of dicts and lists kept in
        task metadata or a module constant): they mutate the copy, never the shared original,
        so no change leaks into another episode or another environment. Copying recurses over
        dicts, lists and tuples only (tuples become lists), which is several times faster than
        ``copy.deepcopy`` on such data; anything else is shared, so keep the state JSON-like.
        At release a dict or list copy is cleared, so a reference a tool kept past its episode
        sees no stale state and holds no memory.

        >>> shared = {"orders": [{"id": "O-1", "status": "processing"}]}
        >>> with EpisodeResources() as resources:
        ...     orders = resources.copy_json(shared)
        ...     orders["orders"][0]["status"] = "cancelled"
        >>> shared["orders"][0]["status"], orders
        ('processing', {})
        """
        self._check_open()
        copy = copy_json(value)
        if isinstance(copy, dict | list):
            self._callbacks.append(copy.clear)
        return copy

    def new_id(self, prefix: str = "") -> str:
        """A reproducible random identifier (16 hex digits) drawn from the episode's generator."""
        return f"{prefix}{int(self._rng.integers(0, 2**63)):016x}"

    def release(self) -> None:
        """Releases everything allocated so far; safe to call more than once."""
        self._released = True
        self._finalizer()  # runs _release_all once and detaches the GC hook

    def _check_open(self) -> None:
        if self._released:
            raise RuntimeError("episode resources were already released (call reset first)")

    def __enter__(self) -> EpisodeResources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
