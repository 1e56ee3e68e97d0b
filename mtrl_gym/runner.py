"""An asyncio episode runner: many episodes at once, never in lockstep.

Each episode is its own task on the event loop: reset, then ask the policy, step, repeat. A slow
tool or a slow policy call only delays its own episode, because tools run through
:meth:`TextEnv.astep` (async tools awaited, blocking tools on worker threads). A semaphore bounds
how many episodes are in flight and each episode has its own wall-clock timeout; an episode that
runs out of time is reported with status ``timeout`` (excluded by the trainer) and its environment
is closed. Results come back in job order.

Non-goals: batching policy calls into one model forward pass (the sampler does that behind an
async policy) and process-level parallelism (see ``gymnasium.make_vec``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker

from mtrl_gym.types import EndedBy, Status

# A policy maps (observation, info) to the next assistant message; it may be async.
Policy = Callable[[str, dict[str, Any]], str | Awaitable[str]]


@dataclass(frozen=True, kw_only=True)
class EpisodeJob:
    """One episode to run.

    Attributes:
        env: An environment, or a zero-argument factory (the runner then owns and closes it).
        policy: Maps ``(observation, info)`` to an action; sync or async.
        seed: Reset seed.
        options: Reset options (e.g. ``{"task_id": ...}``).
        tag: Free-form label copied to the result (group id, sample index, ...).
    """

    env: gym.Env | Callable[[], gym.Env]
    policy: Policy
    seed: int | None = None
    options: dict[str, Any] | None = None
    tag: Any = None


@dataclass(kw_only=True)
class EpisodeResult:
    """What happened in one episode."""

    tag: Any
    task_id: str | None
    status: str
    reward: float
    terminated: bool
    truncated: bool
    final_answer: Any
    eval: dict[str, Any] | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    ended_by: str | None = None  # ``info["ended_by"]``: answer, tool, user, limit or failure
    eval_only: bool = False  # from an evaluation-only env: never write it where training reads
    start_s: float = 0.0  # monotonic times, for diagnostics and the concurrency tests
    end_s: float = 0.0

    @property
    def duration_s(self) -> float:
        """Wall-clock duration of the episode."""
        return self.end_s - self.start_s


def _async_step(env: gym.Env) -> Callable[[str], Awaitable[tuple[Any, ...]]]:
    """``astep`` of a TextEnv under Gymnasium's standard no-op wrappers, else a thread."""
    inner = env
    while isinstance(inner, OrderEnforcing | PassiveEnvChecker):
        inner = inner.env
    astep = getattr(inner, "astep", None)
    if astep is not None:
        return astep
    return lambda action: asyncio.to_thread(env.step, action)


class EpisodeRunner:
    """Runs episodes concurrently with a concurrency limit and per-episode timeouts.

    Args:
        max_concurrency: Episodes in flight at once.
        episode_timeout_s: Wall-clock limit of one episode (``None``: no limit).
        max_steps: Safety bound on steps per episode (environments truncate well before).
    """

    def __init__(
        self,
        *,
        max_concurrency: int = 64,
        episode_timeout_s: float | None = None,
        max_steps: int = 1024,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.episode_timeout_s = episode_timeout_s
        self.max_steps = max_steps

    async def run(self, jobs: Iterable[EpisodeJob]) -> list[EpisodeResult]:
        """Runs all jobs; returns results in job order."""
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def guarded(job: EpisodeJob) -> EpisodeResult:
            async with semaphore:
                return await self.run_episode(job)

        return list(await asyncio.gather(*(guarded(j) for j in jobs)))

    def run_sync(self, jobs: Iterable[EpisodeJob]) -> list[EpisodeResult]:
        """Blocking :meth:`run` for scripts and notebooks without an event loop."""
        return asyncio.run(self.run(jobs))

    async def run_episode(self, job: EpisodeJob) -> EpisodeResult:
        """Runs one episode under the runner's timeout."""
        owned = not isinstance(job.env, gym.Env)
        env = job.env() if owned else job.env  # type: ignore[operator]
        result = EpisodeResult(
            tag=job.tag,
            task_id=None,
            status=str(Status.TRUNCATED),
            reward=0.0,
            terminated=False,
            truncated=True,
            final_answer=None,
            eval=None,
            eval_only=bool(getattr(env.unwrapped, "eval_only", False)),
            start_s=time.monotonic(),
        )
        try:
            async with asyncio.timeout(self.episode_timeout_s):
                await self._play(env, job, result)
        except TimeoutError:
            result.status, result.truncated, result.terminated = str(Status.TIMEOUT), True, False
            result.reward, result.ended_by = 0.0, str(EndedBy.LIMIT)
            if not owned:
                env.close()  # the episode is abandoned; release its resources now
        finally:
            result.end_s = time.monotonic()
            if owned:
                env.close()
        return result

    async def _play(self, env: gym.Env, job: EpisodeJob, result: EpisodeResult) -> None:
        obs, info = await asyncio.to_thread(env.reset, seed=job.seed, options=job.options)
        result.task_id = info.get("task_id")
        step = _async_step(env)
        for _ in range(self.max_steps):
            action = job.policy(obs, info)
            if inspect.isawaitable(action):
                action = await action
            obs, reward, terminated, truncated, info = await step(action)
            result.steps.append(
                {"action": action, "observation": obs, "reward": reward, "info": info}
            )
            if terminated or truncated:
                result.reward = float(reward)
                result.terminated, result.truncated = bool(terminated), bool(truncated)
                result.status = info.get("status", str(Status.OK))
                result.final_answer = info.get("final_answer")
                result.eval = info.get("eval")
                result.ended_by = info.get("ended_by")
                return
