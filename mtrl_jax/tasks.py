"""Environment factories and the resumable task stream of a run.

:func:`env_factory` turns the run's ``env`` section into a zero-argument factory: a registered id
goes through ``gym.make`` with the split and extra kwargs; an ``http(s)://`` URL makes a
:class:`mtrl_gym.remote.RemoteEnv` (the environment is served elsewhere; the token comes from
``MTRL_REMOTE_TOKEN``). :func:`count_tasks` asks an environment how many tasks its split has.

:class:`TaskStream` hands out tasks for training rounds: epoch ``e`` visits every task once in an
order drawn from ``(seed, e)``, and the only state is the number of tasks handed out so far, so a
checkpoint that stores :attr:`TaskStream.position` resumes the stream exactly (no task replayed
or skipped). An environment that does not list its tasks gets ``{}`` options with distinct reset
seeds instead (the rollout seeds every episode).

Non-goals: curricula and difficulty filtering (wrap the stream), weighting several environments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import mtrl_gym  # noqa: F401 - registers the built-in environment ids


def env_factory(env_id: str, *, split: str | None, kwargs: dict[str, Any]) -> Callable[[], gym.Env]:
    """A zero-argument factory for the run's environments.

    Args:
        env_id: A registered id (``mtrl/SopQuickstart-v0``) or the URL of an environment served
            by ``python -m mtrl_gym.remote serve``.
        split: The task split (passed as ``split=``; None passes nothing). Ignored for a URL:
            the server chose its environment's split.
        kwargs: Extra ``gym.make`` keyword arguments (``RemoteEnv`` arguments for a URL).
    """
    if env_id.startswith(("http://", "https://")):
        from mtrl_gym.remote import make_remote  # needs the `remote` extra

        # The server fixes its environment's arguments, the split included
        # (``serve ID --env-kwargs '{"split": "train"}'``); ``kwargs`` go to RemoteEnv.
        return functools.partial(make_remote, env_id, **kwargs)
    options = dict(kwargs)
    if split is not None:
        options["split"] = split
    gym.spec(env_id)  # an unknown id fails here, with Gymnasium's suggestion, not mid-rollout
    return functools.partial(gym.make, env_id, **options)


def count_tasks(make_env: Callable[[], gym.Env]) -> int | None:
    """The number of tasks of the environment's split, or None if it does not list them."""
    env = make_env()
    try:
        tasks = getattr(env.unwrapped, "tasks", None)
        return len(tasks()) if callable(tasks) else None
    finally:
        env.close()


def first_tasks(num_tasks: int, count: int | None) -> list[dict[str, Any]]:
    """Reset options of the first ``count`` tasks (all when None) of a split, in order."""
    n = num_tasks if count is None else min(count, num_tasks)
    return [{"task_index": i} for i in range(n)]


class TaskStream:
    """Reset options for training rounds, reshuffled every epoch, resumable by position.

    Args:
        num_tasks: Tasks in the split (None: the environment does not list them).
        seed: Base of the per-epoch orders.
        position: Tasks already handed out (from a checkpoint).
    """

    def __init__(self, num_tasks: int | None, *, seed: int, position: int = 0):
        if num_tasks is not None and num_tasks < 1:
            raise ValueError("the environment's split has no tasks")
        self.num_tasks, self.seed, self.position = num_tasks, seed, position
        self._epoch, self._order = -1, np.zeros(0, np.int64)

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            assert self.num_tasks is not None
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._order = epoch, rng.permutation(self.num_tasks)
        return self._order

    def take(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` tasks' reset options; advances :attr:`position`."""
        out: list[dict[str, Any]] = []
        for p in range(self.position, self.position + count):
            if self.num_tasks is None:
                out.append({})
            else:
                epoch, i = divmod(p, self.num_tasks)
                out.append({"task_index": int(self._order_of(epoch)[i])})
        self.position += count
        return out
