"""Playing a model on an environment split for evaluation (the trainer's watch and ``mtrl eval``).

:class:`Evaluator` owns a sampling engine with the evaluation's own settings (temperature 0 is
greedy) and a rollout engine in evaluation mode: evaluation-only environments (SOP-Bench) are
allowed, nothing becomes training data, and every episode's external evaluation is kept. Tasks
are the first ``max_tasks`` of the split, in order, each played ``samples_per_task`` times
(the group), so two evaluations of the same weights see the same tasks and, with a fixed key,
the same noise. :func:`mtrl_jax.evaluation.summarize` turns the records into the report's
numbers (success by the external evaluator, unbiased pass@k, trajectory metrics).

Non-goals: the report files (``mtrl_jax.evaluation.write_report``), loading checkpoints (the
CLI does it), comparing runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
from flax import nnx

from mtrl_jax.evaluation import summarize
from mtrl_jax.rollout.engine import RolloutConfig, RolloutEngine, run_blocking
from mtrl_jax.sampler.config import SamplerConfig
from mtrl_jax.sampler.engine import SamplingEngine
from mtrl_jax.tasks import first_tasks
from mtrl_jax.trajectory import TrajectoryRecord


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """What an evaluation plays.

    Attributes:
        max_tasks: First tasks of the split to play (None: all of them).
        samples_per_task: Episodes per task (``n`` of pass@k).
        temperature: Sampling temperature (0: greedy).
        pass_k: The ``k`` of the reported pass@k.
        max_new_tokens: Token limit of one assistant turn.
        num_slots: Concurrent sequences of the evaluation's sampling engine.
        max_len: Longest context of one episode.
        decode_steps_per_call: Tokens per slot per decode call.
        seed: Base of the sampling key and the episodes' reset seeds.
    """

    max_tasks: int | None = None
    samples_per_task: int = 1
    temperature: float = 0.0
    pass_k: tuple[int, ...] = (1,)
    max_new_tokens: int = 256
    num_slots: int = 64
    max_len: int = 1024
    decode_steps_per_call: int = 8
    seed: int = 0


class Evaluator:
    """Plays a model on the tasks of one environment split.

    Args:
        make_env: Zero-argument factory of the evaluation split's environment.
        num_tasks: Tasks in the split (None: the environment does not list them; then
            ``max_tasks`` episodes with distinct seeds are played).
        tokenizer: The model's tokenizer (chat template).
        model: A decoder of the right structure (its weights are replaced by :meth:`run`'s).
        settings: What to play.
        stop_token_ids: Tokens ending a turn (default: the tokenizer's EOS).
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        num_tasks: int | None,
        tokenizer: Any,
        model: nnx.Module,
        settings: EvalSettings,
        *,
        stop_token_ids: Sequence[int] | None = None,
    ):
        if num_tasks is None and settings.max_tasks is None:
            raise ValueError("the environment does not list its tasks: set eval.max_tasks")
        if num_tasks is None:  # seeds alone tell the episodes apart
            self.tasks: list[dict[str, Any]] = [{}] * (settings.max_tasks or 0)
        else:
            self.tasks = first_tasks(num_tasks, settings.max_tasks)
        self.settings = settings
        sampler_cfg = SamplerConfig(
            temperature=settings.temperature, max_new_tokens=settings.max_new_tokens
        )
        self.engine = SamplingEngine(
            model,
            num_slots=settings.num_slots,
            max_len=settings.max_len,
            tokenizer=tokenizer,
            config=sampler_cfg,
            key=jax.random.key(settings.seed),
            decode_steps_per_call=settings.decode_steps_per_call,
        )
        rollout_cfg = RolloutConfig(
            group_size=settings.samples_per_task,
            max_new_tokens=settings.max_new_tokens,
            stop_token_ids=None if stop_token_ids is None else tuple(stop_token_ids),
            max_concurrency=max(settings.num_slots, 1),
            seed=settings.seed,
        )
        self.rollout = RolloutEngine(self.engine, tokenizer, make_env, rollout_cfg)
        self._key = jax.random.key(settings.seed)

    def play(
        self, params_state: nnx.State | nnx.Module, *, version: int = 0
    ) -> list[TrajectoryRecord]:
        """Plays every task with the given weights (a decoder or its full ``nnx.State``)."""
        self.engine.set_params(params_state, version)
        self.engine.set_key(self._key)  # same weights, same noise: evaluations are comparable
        batch = run_blocking(self.rollout.collect(self.tasks, step=0, evaluation=True))
        return batch.records

    def run(
        self, params_state: nnx.State | nnx.Module, *, version: int = 0
    ) -> tuple[dict[str, Any], list[TrajectoryRecord]]:
        """Plays every task and summarises (``mtrl_jax.evaluation.summarize``)."""
        records = self.play(params_state, version=version)
        return summarize(records, ks=self.settings.pass_k), records


def full_state(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State) -> nnx.Module:
    """A decoder holding *copies* of the state: the train step donates (frees) its buffers."""
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, rest))
