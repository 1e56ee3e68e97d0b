"""The rollout engine: G episodes per task through the async episode runner, scored as groups.

For each task (reset options such as ``{"task_id": ...}`` or ``{"task_index": ...}``) the engine
plays ``group_size`` episodes, all tasks' episodes concurrently on one event loop through
:class:`mtrl_gym.EpisodeRunner`. Each episode's policy is an async closure around the sampler:
it appends the environment's new messages as a chat-template delta
(:class:`~mtrl_jax.rollout.sequence.EpisodeSequence`), awaits ``sampler.generate`` on the
episode's session, and hands the decode of the sampled tokens to ``env.step``. While one episode
waits on a slow tool or on the sampler, the others proceed. Sampler sessions are named
``"{group_id}/{sample_index}/{k}"``, ``k`` counting the episode's training samples (a new one
starts when the chat template rewrote history); each is ended when its sample or episode ends.
A prompt the sampler refuses (``stop_reason == "context_full"``) ends the episode as
``truncated`` (the agent's own length, scored like any truncation), with the refused tokens left
out of the record.

Behaviour log-probs are the sampler's ``model_logprobs`` (the model's own distribution, before
temperature / top-k / top-p), not ``logprobs`` of the distribution actually sampled from. The
learner computes log-probs of the same model without those transforms, so the ratio of the two
then measures only the numerical mismatch between sampler and trainer (and staleness), which is
what the importance corrections in ``mtrl_jax.losses`` are for. The sampling log-probs are kept
in the record for diagnostics.

Episodes that end in an infrastructure failure (status ``infra_error`` or ``timeout``, including
a sampler call that raised) are excluded from their group before advantages are computed; they
are never scored 0 (that would poison the group's baseline). Groups shrink instead, through the
mask of :func:`mtrl_jax.advantages.to_group_layout`, and the count is reported as
``rollout/excluded_infra``.

Scoring a training round, in order: overlong shaping (``cfg.overlong``,
:mod:`mtrl_jax.rollout.shaping`) turns the environment's rewards into the rewards the advantages
see, and may mark truncated episodes to stay out of the loss; the groups are laid out; with
``cfg.advantage.filter_groups`` groups whose (shaped) rewards are all equal are dropped
(:func:`mtrl_jax.advantages.drop_identical_groups`, DAPO's dynamic sampling without the refill);
advantages are computed over what is left. Dropped and masked episodes keep their records (with
advantage 0 for dropped groups) but produce no learner trajectories.

Non-goals: batching sampler calls (the sampler's job), staleness control and weight sync (the
trainer's), writing records (``mtrl_jax.trajectory.TrajectoryWriter``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import gymnasium as gym
import numpy as np

from mtrl_gym import EpisodeJob, EpisodeResult, EpisodeRunner, ensure_trainable
from mtrl_jax.advantages import (
    AdvantageConfig,
    compute_group_advantages,
    drop_identical_groups,
    from_group_layout,
    to_group_layout,
)
from mtrl_jax.rollout.metrics import EXCLUDED_STATUSES, rollout_metrics
from mtrl_jax.rollout.sequence import ChatTokenizer, EpisodeSequence, SampleLike
from mtrl_jax.rollout.shaping import OverlongConfig, shape_overlong
from mtrl_jax.trajectory import SampleWeighting, TrajectoryRecord
from mtrl_jax.types import Trajectory

T = TypeVar("T")


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` that does not hand the result back through the main task.

    On the main thread, ``asyncio.run`` (Python 3.11) restores the SIGINT handler at exit, and
    ``signal.signal`` builds ``repr()`` of the old handler, a partial holding the main task,
    whose repr includes the task's *result*: for a round of trajectory records that is a
    multi-second numpy printout. The result is therefore passed out of band.
    """
    box: list[T] = []

    async def main() -> None:
        box.append(await coro)

    asyncio.run(main())
    return box[0]


class _ContextFull(Exception):
    """Internal: the sampler's context cannot hold the next prompt; the episode is truncated."""


class Sampler(Protocol):
    """The sampler interface the rollout needs (``mtrl_jax.sampler.SamplingEngine``)."""

    async def generate(  # noqa: D102
        self,
        session_id: str,
        new_tokens: list[int],
        *,
        max_new_tokens: int | None = None,
        stop_token_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        request_id: int | None = None,
    ) -> SampleLike: ...

    def end_session(self, session_id: str) -> None: ...  # noqa: D102


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    """How episodes are sampled and scored.

    Attributes:
        group_size: ``G``, episodes per task (the advantage baseline's group).
        max_new_tokens: Token limit of one assistant turn.
        stop_token_ids: Tokens that end a turn; None: the tokenizer's ``eos_token_id``.
        stop_strings: Strings that end a turn.
        max_concurrency: Episodes in flight at once.
        episode_timeout_s: Wall-clock limit of one episode (status ``timeout``); None: none.
        max_steps: Safety bound on turns per episode (environments truncate well before).
        seed: Base of the episodes' reset seeds.
        advantage: The group advantage estimator and the group filter.
        overlong: Overlong reward shaping or filtering (:mod:`mtrl_jax.rollout.shaping`).
        sample_weighting: Advantage weighting of per-turn samples (``mtrl_jax.trajectory``).
    """

    group_size: int = 8
    max_new_tokens: int = 512
    stop_token_ids: tuple[int, ...] | None = None
    stop_strings: tuple[str, ...] = ()
    max_concurrency: int = 64
    episode_timeout_s: float | None = None
    max_steps: int = 64
    seed: int = 0
    advantage: AdvantageConfig = dataclasses.field(default_factory=AdvantageConfig)
    overlong: OverlongConfig = dataclasses.field(default_factory=OverlongConfig)
    sample_weighting: SampleWeighting = "inverse_count"

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.max_new_tokens < 1 or self.max_steps < 1:
            raise ValueError("group_size, max_new_tokens and max_steps must be >= 1")
        # Checked here, where the estimator meets the group size: a k-subset of a G-group
        # needs k <= G (smaller groups after exclusions fall back to k = n by design).
        if self.advantage.estimator == "pass_at_k" and self.advantage.k > self.group_size:
            raise ValueError(
                f"advantage.k ({self.advantage.k}) must be <= group_size ({self.group_size}) "
                "for the pass_at_k estimator"
            )


@dataclasses.dataclass(kw_only=True)
class RolloutBatch:
    """One round of rollouts.

    Attributes:
        records: Every episode, excluded ones included (their ``advantage`` is None).
        trajectories: The learner's trajectories of the included episodes (empty when the round
            was an evaluation), ready for ``pack_trajectories``.
        metrics: ``rollout/*`` and ``advantage/*`` scalars.
    """

    records: list[TrajectoryRecord]
    trajectories: list[Trajectory]
    metrics: dict[str, float]


class RolloutEngine:
    """Plays groups of episodes against a sampler and turns them into trajectories.

    Args:
        sampler: Async token-in-token-out sampler (see :class:`Sampler`).
        tokenizer: A transformers tokenizer with a chat template.
        make_env: An environment id for ``gym.make``, or a zero-argument factory.
        cfg: Rollout options.
    """

    def __init__(
        self,
        sampler: Sampler,
        tokenizer: ChatTokenizer,
        make_env: str | Callable[[], gym.Env],
        cfg: RolloutConfig | None = None,
    ):
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.make_env = (lambda: gym.make(make_env)) if isinstance(make_env, str) else make_env
        self.cfg = cfg or RolloutConfig()
        stops = self.cfg.stop_token_ids
        if stops is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            stops = () if eos is None else (int(eos),)
        self.stop_token_ids = tuple(stops)
        self.runner = EpisodeRunner(
            max_concurrency=self.cfg.max_concurrency,
            episode_timeout_s=self.cfg.episode_timeout_s,
            max_steps=self.cfg.max_steps,
        )

    def collect_sync(
        self, tasks: Sequence[Mapping[str, Any]], *, step: int = 0, evaluation: bool = False
    ) -> RolloutBatch:
        """Blocking :meth:`collect` for scripts without an event loop."""
        return run_blocking(self.collect(tasks, step=step, evaluation=evaluation))

    async def collect(
        self, tasks: Sequence[Mapping[str, Any]], *, step: int = 0, evaluation: bool = False
    ) -> RolloutBatch:
        """Plays ``group_size`` episodes of every task and scores them by group.

        Args:
            tasks: Reset options of each task, e.g. ``[{"task_id": "q1"}, {"task_index": 3}]``.
            step: Round number; part of the group ids and the reset seeds.
            evaluation: An evaluation round: evaluation-only environments are allowed, no
                advantages are computed and no learner trajectories are returned. Otherwise
                every environment must pass :func:`mtrl_gym.ensure_trainable`.

        Returns:
            The records, the learner's trajectories and the metrics.

        Raises:
            EvalOnlyError: a training round on an evaluation-only environment.
        """
        records = await self.play(tasks, step=step, evaluation=evaluation)
        return self.score(records, evaluation=evaluation)

    async def play(
        self,
        tasks: Sequence[Mapping[str, Any]],
        *,
        step: int = 0,
        task_offset: int = 0,
        evaluation: bool = False,
    ) -> list[TrajectoryRecord]:
        """Plays ``group_size`` episodes of every task; :meth:`score` turns them into a batch.

        ``task_offset`` numbers these tasks after ``task_offset`` others of the same round (a
        refill after dynamic sampling dropped groups): group ids, reset seeds and sampler
        request ids all use ``task_offset + t``, so a refill never repeats an episode's noise.
        """
        g = self.cfg.group_size
        envs: list[gym.Env] = []
        try:
            for _ in range(len(tasks) * g):
                envs.append(self.make_env())
                if not evaluation:
                    ensure_trainable(envs[-1])  # before any episode runs
            semaphore = asyncio.Semaphore(self.cfg.max_concurrency)
            coros = []
            for i, options in enumerate(tasks):
                t = task_offset + i
                key = options.get("task_id", options.get("task_index", ""))
                group_id = f"{step}:{t}:{key}"
                for j in range(g):
                    seed = int(
                        np.random.SeedSequence([self.cfg.seed, step, t, j]).generate_state(1)[0]
                    )
                    job = (envs[i * g + j], dict(options), seed, group_id, j, t * g + j)
                    coros.append(self._episode(*job, semaphore))
            return list(await asyncio.gather(*coros))
        finally:
            for env in envs:
                env.close()

    async def _episode(
        self,
        env: gym.Env,
        options: dict[str, Any],
        seed: int,
        group_id: str,
        index: int,
        stream: int,
        semaphore: asyncio.Semaphore,
    ) -> TrajectoryRecord:
        """Plays one episode; a sampler failure becomes an ``infra_error`` record.

        ``stream`` numbers the episode within the round: its ``k``-th sampler call uses request
        id ``stream * (max_steps + 1) + k``, so its noise depends on which episode and turn it is,
        never on the order in which concurrent episodes reach the sampler.
        """
        seq = EpisodeSequence(self.tokenizer, stop_token_ids=self.stop_token_ids)
        state: dict[str, Any] = {"session": None, "samples": 0, "sample_s": 0.0, "calls": 0}

        async def policy(observation: str, info: dict[str, Any]) -> str:
            del observation  # the structured messages in ``info`` are what gets rendered
            if not seq.messages and info.get("tools"):
                seq.tools = info["tools"]
            ids, fresh = seq.add_messages(info.get("messages", []))
            if fresh:  # a new training sample needs a sampler context that is exactly its tokens
                self._end_session(state["session"])
                state["session"] = f"{group_id}/{index}/{state['samples']}"
                state["samples"] += 1
            start = time.monotonic()
            result = await self.sampler.generate(
                state["session"],
                ids,
                max_new_tokens=self.cfg.max_new_tokens,
                stop_token_ids=self.stop_token_ids,
                stop_strings=self.cfg.stop_strings,
                request_id=(stream * (self.cfg.max_steps + 1) + state["calls"]) % (2**31 - 1),
            )
            state["calls"] += 1
            state["sample_s"] += time.monotonic() - start
            if not result.tokens and result.stop_reason == "context_full":
                seq.discard_prompt(len(ids), fresh)
                raise _ContextFull
            return seq.add_sample(result)

        job = EpisodeJob(env=env, policy=policy, seed=seed, options=options)
        error: str | None = None
        async with semaphore:
            start = time.monotonic()
            truncated = False
            try:
                result: EpisodeResult | None = await self.runner.run_episode(job)
            except _ContextFull:  # the agent's own length: a truncation, scored like one
                result, truncated = None, True
            except Exception as e:  # noqa: BLE001 - the sampler's failure, not the agent's
                result, error = None, f"{type(e).__name__}: {e}"
            finally:
                self._end_session(state["session"])
            elapsed = time.monotonic() - start
        record = self._record(seq, result, error, group_id, index, elapsed, state["sample_s"], env)
        if truncated:
            record.status, record.eval = "truncated", {"success": False, "status": "truncated"}
        return record

    def _end_session(self, session_id: str | None) -> None:
        """Frees the sampler session (deferred by the sampler if a cancelled call is in flight)."""
        if session_id is not None:
            self.sampler.end_session(session_id)

    def _record(
        self,
        seq: EpisodeSequence,
        result: EpisodeResult | None,
        error: str | None,
        group_id: str,
        index: int,
        elapsed: float,
        sample_s: float,
        env: gym.Env,
    ) -> TrajectoryRecord:
        messages = [dict(m) for m in seq.messages]
        tool_calls: list[dict[str, Any]] = []
        if result is not None:
            for s in result.steps:
                tool_calls += s["info"].get("tool_calls", [])
            if result.steps:  # the last step's messages were never sent to the sampler
                messages += [dict(m) for m in result.steps[-1]["info"].get("messages", [])]
        episode_s = result.duration_s if result is not None else elapsed
        common = {
            "group_id": group_id,
            "sample_index": index,
            "messages": messages,
            "tool_calls": tool_calls,
            "timings": {
                "episode_s": episode_s,
                "sample_s": sample_s,
                "env_s": max(episode_s - sample_s, 0.0),
            },
            "eval_only": bool(getattr(env.unwrapped, "eval_only", False)),
            **seq.arrays(),
        }
        if result is None:
            failure = {"success": False, "status": "infra_error", "error": error}
            task_id = getattr(getattr(env.unwrapped, "task", None), "id", None)
            return TrajectoryRecord(task_id=task_id, status="infra_error", eval=failure, **common)
        return TrajectoryRecord(
            task_id=result.task_id,
            reward=float(result.reward),
            eval=result.eval,
            status=str(result.status),
            final_answer=result.final_answer,
            **common,
        )

    def score(self, records: list[TrajectoryRecord], *, evaluation: bool = False) -> RolloutBatch:
        """Group advantages over the included episodes, learner trajectories and metrics.

        Sets each record's ``advantage`` (scoring the same records again, e.g. with a refill's
        added, overwrites it). ``advantage/groups`` counts the groups kept for training.
        """
        sampler_errors = [r for r in records if r.eval and "error" in r.eval and not r.num_turns]
        if records and len(sampler_errors) == len(records):
            # Every episode failed before its first turn: a systematic bug, not flaky infra.
            raise RuntimeError(f"every episode failed: {sampler_errors[0].eval}")
        valid = np.array([r.status not in EXCLUDED_STATUSES for r in records], bool)
        trains = np.zeros(len(records), bool)
        adv_metrics: dict[str, float] = {}
        if valid.any() and not evaluation:  # an evaluation round trains nothing
            included = [r for r, ok in zip(records, valid, strict=True) if ok]
            shaped = shape_overlong(
                [r.reward for r in included],
                [int(r.loss_mask.sum()) for r in included],  # L: sampled tokens, all turns
                [r.status for r in included],
                self.cfg.overlong,
            )
            rewards = np.zeros(len(records), np.float32)
            rewards[valid] = shaped.rewards
            layout = to_group_layout(
                [r.group_id for r in records], rewards, valid, group_size=self.cfg.group_size
            )
            dropped = 0
            if self.cfg.advantage.filter_groups:
                layout, dropped = drop_identical_groups(layout)
            adv, raw = compute_group_advantages(layout.rewards, layout.mask, self.cfg.advantage)
            adv_metrics = {k: float(v) for k, v in raw.items()} | shaped.metrics
            adv_metrics["advantage/filtered_groups"] = float(dropped)
            for record, a, ok in zip(records, from_group_layout(adv, layout), valid, strict=True):
                record.advantage = float(a) if ok else None
            trains = from_group_layout(layout.mask, layout) > 0  # excluded and dropped: False
            trains[valid] &= shaped.train_mask
        trajectories: list[Trajectory] = []
        for record, train in zip(records, trains, strict=True):
            if train:
                trajectories += record.to_learner(sample_weighting=self.cfg.sample_weighting)
        metrics = {**rollout_metrics(records), **adv_metrics}
        metrics["rollout/learner_sequences"] = float(len(trajectories))
        return RolloutBatch(records=records, trajectories=trajectories, metrics=metrics)
