"""The RL trainer: rollouts, group advantages, updates, checkpoints, tracking and evaluation.

One :class:`Trainer` runs one :class:`~mtrl_jax.config.RunConfig`:

1. **Setup.** The model comes from ``model.path`` (an HF folder) or, when None, the default tiny
   model is built into ``<run>/base_model``. The train and evaluation splits become environment
   factories (:mod:`mtrl_jax.tasks`); evaluation-only environments are refused for training
   before anything runs (:func:`mtrl_gym.ensure_trainable`).
2. **Warm start** (``sft.steps > 0``): behaviour cloning on oracle demonstrations or recorded
   trajectories (:mod:`mtrl_jax.sft`); RL then starts from those weights with a fresh optimiser.
   The warm-started weights are also written as an HF folder, ``<run>/warm_start``, so they
   can be evaluated or exported like any model, and a resumed run finds its KL reference.
3. **RL steps.** Each step plays ``env.tasks_per_step`` tasks ``rollout.group_size`` times,
   computes group advantages (infrastructure failures excluded, never scored 0), packs the
   trajectories and updates the weights: once by default, or ``train.epochs`` passes of
   ``train.minibatches`` updates each (PPO-style; the ratio to the sampling policy and the
   loss's clipping bound how far the later updates move). The sampler then gets a copy of the
   new weights and the policy version goes up by one.
4. **Sync or async** (``async.mode``). Sync: rollout, then update, one after the other. Async:
   a producer thread keeps up to ``async.queue_size`` rounds ahead of the learner while the
   learner trains, so generation and training overlap. Every token carries the version that
   sampled it; a round's staleness is ``version_now - oldest version in it``. With
   ``staleness_policy: pause`` the producer does not start round ``r`` before the learner has
   finished ``r - max_staleness`` rounds; a round raises the policy version at most once (not
   at all when nothing was left to train on), so the bound holds by construction and an empty
   round cannot stall the producer; with ``drop`` the
   producer runs freely and the learner drops trajectories older than the bound (counted).
   Old log-probs are recomputed with the learner's current weights before each async update,
   so the loss's IS correction (``train.loss.is_correction``) weighs ``pi_old / mu`` with the
   behaviour log-probs ``mu`` of the sampler.
5. **Checkpoints** (orbax, :mod:`mtrl_jax.checkpoint`) hold the train state and, as JSON, the
   step, policy version, task-stream position, sampling key, evaluation history and the
   tracking run id. A run restarted with the same config, or one differing only in keys safe
   to change such as ``steps`` (:mod:`mtrl_jax.resume`), resumes from the newest intact one,
   saying so on its first line; another config is refused unless asked to resume anyway.
   Sync runs are exactly reproducible across a resume on CPU: every random choice is a function
   of ``(seed, step)`` (task order, reset seeds, sampling keys, per-call noise streams).
6. **Tracking** (MLflow): the flattened config as params; per step ``rollout/*``,
   ``advantage/*``, ``loss/*``, ``policy/*``, ``is/*``, ``optim/*``, ``packing/*``,
   ``staleness/*``, ``perf/*`` and the token accounting ``tokens/*`` (this step) and
   ``tokens_total/*`` (cumulative); traces of ``tracking.log_episodes`` episodes per step;
   the step's trajectories as a JSONL artifact.
   With ``train.loss.kl_coef > 0`` each round also gets the log-probs of a frozen reference
   policy, the weights RL started from (``<run>/warm_start`` after a warm start, else the
   model), for the loss's KL penalty (``loss/kl``, ``policy/kl_ref``).
7. **Devices** (``mesh``). By default everything runs on the first device, without a mesh.
   Otherwise the train state is sharded over the ``mesh.train`` mesh
   (:func:`~mtrl_jax.sharding.shard_train_state`), each packed batch's rows over its ``data``
   and ``fsdp`` axes, and the update and the async recomputation of old log-probs are jitted
   with those shardings. The sampler (and the evaluation's) is placed with
   :func:`~mtrl_jax.sharding.shard_sampler` on the training mesh (``colocated``: rollout and
   training take turns on the same devices) or on devices of its own (``disjoint``); after
   each update the new weights are ``jax.device_put`` onto the sampler's shardings, and in
   ``async`` mode the producer samples on its devices while the learner trains on the others.
   Checkpoints are saved from the sharded state and restored onto the run's mesh, whatever
   mesh wrote them.
8. **Evaluation watch**: before training, every ``eval.every`` steps and at the end, the
   held-out split is played with the evaluation's own sampler settings and scored by the
   external evaluator (``eval/*``). When the training reward rose over the last
   ``eval.hack_window`` evaluations while the held-out success did not, the trainer warns:
   that is how a reward the policy can satisfy without doing the task shows.

Non-goals: multi-environment mixtures, reward models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mtrl_gym import ensure_trainable
from mtrl_jax.checkpoint import Checkpointer, key_from_json, key_to_json
from mtrl_jax.config import ConfigError, RunConfig, flatten, to_dict
from mtrl_jax.eval_job import EvalSettings, Evaluator, full_state
from mtrl_jax.evaluation import summarize
from mtrl_jax.packing import pack_trajectories
from mtrl_jax.resume import ResumeMode, plan_run
from mtrl_jax.rollout.engine import RolloutBatch, RolloutEngine, run_blocking
from mtrl_jax.sampler import PrefillStats
from mtrl_jax.sampler.engine import SamplingEngine
from mtrl_jax.sharding import (
    make_run_meshes,
    make_sharded_logprob_fn,
    make_sharded_train_step,
    param_shardings,
    shard_batch,
    shard_sampler,
    shard_train_state,
)
from mtrl_jax.tasks import TaskStream, count_tasks, env_factory, first_tasks
from mtrl_jax.tracking import Tracker, make_tracker
from mtrl_jax.train_step import TrainState, init_train_state, make_logprob_fn, make_train_step
from mtrl_jax.trajectory import TrajectoryRecord
from mtrl_jax.types import TrainBatch, Trajectory

log = logging.getLogger(__name__)

# Metrics that depend on wall-clock time or thread scheduling (which requests the sampler
# admitted together decides how much prompt it shared); everything else is reproducible
# across a resume.
TIMING_PREFIXES = ("perf/", "rollout/episode_s", "rollout/sample_s")


# Metrics logged at every step of their kind, last of that step's record: a step whose mark is
# in the tracking run was fully logged (see ``Trainer._logged_until``).
_LOG_MARKS = {"train": "staleness/max", "eval": "eval/infra_failures"}


class RewardHackingWarning(UserWarning):
    """Training reward rose while the held-out evaluation did not."""


@dataclasses.dataclass
class _Round:
    """One round of rollouts handed from the producer to the learner."""

    step: int
    batch: RolloutBatch
    rollout_s: float
    position: int  # the task stream's position after this round's tasks


def _staleness(trajectories: list[Trajectory], version: int) -> np.ndarray:
    """Versions behind ``version`` of each trajectory's oldest sampled token."""
    out = []
    for t in trajectories:
        sampled = t.policy_version[np.asarray(t.loss_mask) > 0]
        out.append(version - int(sampled.min()) if sampled.size else 0)
    return np.asarray(out, np.int64)


def _token_metrics(records: list[TrajectoryRecord]) -> dict[str, float]:
    """This round's token accounting: prompt/env tokens read, generated tokens.

    Tokens read are input tokens as an API prices them; ``perf/prefill_tokens`` (set by
    ``_collect``) is what the sampler actually ran after sharing prefixes.
    """
    total = sum(len(r.tokens) for r in records)
    generated = sum(int(r.loss_mask.sum()) for r in records)
    return {"tokens/prefilled": float(total - generated), "tokens/generated": float(generated)}


def _update_metrics(updates: list[dict[str, Any]], epochs: int) -> dict[str, float]:
    """One round's train-step metrics over its updates.

    Token counts add up over the updates of one pass (``tokens/*`` summed, divided by the
    passes); losses, ratios, norms and the rest are averaged over the updates.
    """
    out = {}
    for key in updates[0]:
        values = [float(u[key]) for u in updates]
        out[key] = sum(values) / epochs if key.startswith("tokens/") else float(np.mean(values))
    return out


def _summary_metrics(summary: dict[str, Any], prefix: str) -> dict[str, float]:
    """Scalar fields of ``evaluation.summarize`` as ``prefix/*`` metrics (None left out)."""
    out: dict[str, float] = {}
    for key in (
        "success_rate",
        "reward_mean",
        "turns_mean",
        "tool_calls_mean",
        "tool_error_rate",
        "format_error_rate",
        "truncation_rate",
        "infra_failures",
    ):
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    for k, entry in (summary.get("pass_at_k") or {}).items():
        if entry.get("value") is not None:
            out[f"{prefix}/pass_at_{k}"] = float(entry["value"])
    tokens = summary.get("tokens") or {}
    for key in ("sampled_mean", "total"):
        if isinstance(tokens.get(key), (int, float)):
            out[f"{prefix}/tokens_{key}"] = float(tokens[key])
    return out


class Trainer:
    """Runs one configuration end to end (see the module docstring).

    A run folder that holds a checkpoint is resumed only as ``resume`` allows
    (:mod:`mtrl_jax.resume`); when it is, or when a folder is moved aside, one ``[mtrl] ...``
    line on stderr says so before anything is built.

    Args:
        cfg: The resolved run configuration.
        tracker: Overrides the tracker built from ``cfg.tracking`` (tests).
        progress: Show a progress bar on stderr.
        resume: ``"check"``: resume the run folder's checkpoint only if its stored config
            differs from ``cfg`` in keys safe to change (``steps``, ``eval.*``, ...), else
            raise :class:`~mtrl_jax.resume.ConfigMismatchError`. ``"stored"``: resume it with
            its stored config (safe keys from ``cfg``). ``"fresh"``: move an existing run
            folder aside to ``<name>.old-<timestamp>`` and start a new run.

    Raises:
        ConfigMismatchError: see ``resume``.
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        tracker: Tracker | None = None,
        progress: bool = True,
        resume: ResumeMode = "check",
    ):
        from mtrl_jax.models import load_pretrained, load_tokenizer  # heavy imports, lazily

        setup_start = time.perf_counter()
        self.cfg = cfg
        # Wall-clock seconds per phase (setup, warm start, each evaluation, RL), returned by run.
        self.phases: dict[str, float] = {}
        # Before anything is loaded: a mesh that does not fit the devices is a config error.
        # (Mesh keys are safe to change on resume: every plan runs with this cfg's mesh.)
        self.train_mesh, self.sampler_mesh = self._meshes()
        # Before anything is built or written: refuse a run folder of another experiment.
        self.plan = plan_run(cfg, resume)
        self.cfg = cfg = self.plan.cfg
        notice = self.plan.notice()
        if notice is not None:  # not progress: what this command does to the folder, always
            print(f"[mtrl] {notice}", file=sys.stderr, flush=True)
            log.info("%s", notice)
        self.run_dir = cfg.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.make_train_env = env_factory(
            cfg.env.id, split=cfg.env.train_split, kwargs=cfg.env.kwargs
        )
        eval_split = cfg.eval.split if cfg.eval.split is not None else cfg.env.eval_split
        self.make_eval_env = env_factory(cfg.env.id, split=eval_split, kwargs=cfg.env.kwargs)
        probe = self.make_train_env()
        try:
            ensure_trainable(probe)  # SOP-Bench and other evaluation-only data never train
        finally:
            probe.close()

        self.model_path = self._model_path()
        self.tokenizer = load_tokenizer(self.model_path)
        model = load_pretrained(self.model_path, dtype=cfg.model.dtype)
        self.eos_token_id = int(model.config.eos_token_id)
        self.graphdef, state = init_train_state(model, cfg.train)
        self.state = self._place(state)
        if self.train_mesh is None:
            self.train_step = make_train_step(self.graphdef, cfg.train)
            self.logprob_fn = make_logprob_fn(self.graphdef, cfg.train.chunk_size)
        else:
            self.train_step = make_sharded_train_step(self.graphdef, cfg.train, self.train_mesh)
            self.logprob_fn = make_sharded_logprob_fn(
                self.graphdef, cfg.train.chunk_size, self.state, self.train_mesh
            )
        # Disjoint sampler devices: where each update's weights are copied to.
        self._to_sampler: tuple[Any, Any] | None = None
        if self.sampler_mesh is not None and self.sampler_mesh is not self.train_mesh:
            self._to_sampler = (
                param_shardings(self.state.params, self.sampler_mesh),
                param_shardings(self.state.rest, self.sampler_mesh),
            )
        self.version = 0
        self.step = 0
        self.tasks = TaskStream(count_tasks(self.make_train_env), seed=cfg.seed)
        self.trained_position = 0  # task-stream position of the last round trained on
        self.sample_key = jax.random.key(cfg.seed)
        self.history: list[
            dict[str, float]
        ] = []  # per evaluation: step, train reward, eval success
        self.totals: dict[str, float] = {}  # cumulative token accounting
        self.last_metrics: dict[str, float] = {}  # the latest RL step's metrics
        self.reference: tuple[nnx.State, nnx.State] | None = None  # KL reference (params, rest)
        self.train_reward = float("nan")  # the latest RL step's mean reward (for the watch)
        self.sampler = SamplingEngine(
            self._sampler_model(),  # its own copy: the train step donates the state's buffers
            num_slots=cfg.engine.num_slots,
            max_len=cfg.engine.max_len,
            tokenizer=self.tokenizer,
            config=cfg.sampler,
            key=self.sample_key,
            decode_steps_per_call=cfg.engine.decode_steps_per_call,
        )
        self._place_sampler(self.sampler)
        self.rollout = RolloutEngine(self.sampler, self.tokenizer, self.make_train_env, cfg.rollout)
        self._evaluator: Evaluator | None = None
        self.checkpointer = Checkpointer(cfg.checkpoint_dir, keep=cfg.checkpoint.keep)
        resumed = self._restore()
        self.tracker = tracker if tracker is not None else self._make_tracker(resumed)
        self.tracker.log_params(flatten(cfg))
        self.resumed = resumed is not None
        # Steps after the checkpoint are run again on resume; the interrupted attempt may have
        # logged some of them (or more: a corrupt newest checkpoint falls back further). Each
        # step is recorded once, by the first attempt that logged it, as W&B does with steps it
        # has seen: the run's metrics, traces and trajectory files then match an uninterrupted
        # run's (sync runs on one machine re-run a step identically).
        self._logged_until: dict[str, int] = {}
        if self.resumed:
            for kind, key in _LOG_MARKS.items():
                last = self.tracker.last_logged_step(key)
                if last is not None and last >= self.step:
                    self._logged_until[kind] = last
            for kind, last in self._logged_until.items():
                log.info(
                    "resumed at step %d: %s steps up to %d were logged before; not logged again",
                    self.step,
                    kind,
                    last,
                )
        self.phases["setup_s"] = round(time.perf_counter() - setup_start, 1)

    # ------------------------------------------------------------------------------ setup

    def _meshes(self) -> tuple[Mesh | None, Mesh | None]:
        """``(train mesh, sampler mesh)``; ``(None, None)`` for the default single device."""
        if jax.process_count() > 1:  # `mtrl train` initializes multi-process JAX from env vars
            raise NotImplementedError(
                f"the trainer runs in one process, not {jax.process_count()}: its sampler and "
                "checkpointer are single-process"
            )
        m = self.cfg.mesh
        if m.single_device:
            return None, None
        try:
            meshes = make_run_meshes(m.train, m.sampler_mesh if m.sampler == "disjoint" else None)
        except ValueError as err:
            raise ConfigError(f"mesh: {err}") from None
        train, sampler = meshes
        log.info("training mesh %s; sampler mesh %s (%s)", train.shape, sampler.shape, m.sampler)
        return meshes

    def _place(self, state: TrainState) -> TrainState:
        """The train state laid out on the training mesh (as it is without one)."""
        return state if self.train_mesh is None else shard_train_state(state, self.train_mesh)

    def _place_batch(self, batch: TrainBatch) -> TrainBatch:
        """A host (or device) batch on the device(s): rows split over the mesh's data axes."""
        if self.train_mesh is None:
            return jax.tree.map(jnp.asarray, batch)
        return shard_batch(batch, self.train_mesh)

    def _place_sampler(self, engine: SamplingEngine) -> None:
        """Lays a sampling engine's weights and KV cache out on the sampler mesh, if any."""
        if self.sampler_mesh is not None:
            shard_sampler(engine, self.sampler_mesh)

    def _model_path(self) -> Path:
        if self.cfg.model.path is not None:
            return Path(self.cfg.model.path)
        from mtrl_jax.models.make_default import build_default

        path = self.run_dir / "base_model"
        if not (path / "config.json").exists():
            self._say(f"building the tiny default model and its tokenizer into {path} (~10 s)")
            build_default(path, seed=self.cfg.model.seed)
        return path

    def _make_tracker(self, resumed: dict[str, Any] | None) -> Tracker:
        t = self.cfg.tracking
        return make_tracker(
            t.enabled,
            tracking_uri=t.tracking_uri,
            experiment=t.experiment,
            run_name=t.run_name or self.cfg.name,
            run_dir=self.run_dir,
            resume_run_id=(resumed or {}).get("tracking_run_id"),
            log_episodes=t.log_episodes > 0,
            log_trajectories=t.log_trajectories,
        )

    def _restore(self) -> dict[str, Any] | None:
        """Resumes from the newest intact checkpoint, if any (a corrupt one is skipped)."""
        mesh = self.train_mesh  # onto this run's mesh, whatever mesh saved the checkpoint
        shardings = None if mesh is None else param_shardings(self.state, mesh)
        found = self.checkpointer.restore_latest(self.state, shardings=shardings)
        if found is None:
            return None
        self.state, meta, step = found
        self.step = int(meta["step"])
        self.version = int(meta["policy_version"])
        self.tasks.position = self.trained_position = int(meta["task_position"])
        self.sample_key = key_from_json(meta["sample_key"])
        self.history = list(meta.get("history", []))
        self.totals = dict(meta.get("totals", {}))
        self.train_reward = float(meta.get("train_reward", float("nan")))
        self.sampler.set_params(self._sampler_model(), self.version)
        log.info("resumed from checkpoint step %d (policy version %d)", step, self.version)
        return meta

    def _sampler_model(self) -> nnx.Module:
        """The current weights as a decoder for a sampler, in buffers of its own.

        The train step donates the state's buffers, so a sampler must never hold them: on the
        training devices they are copied; on disjoint sampler devices the transfer is the copy
        (``set_params`` then finds them already in the sampler's layout).
        """
        if self._to_sampler is None:
            return full_state(self.graphdef, self.state.params, self.state.rest)
        params, rest = jax.device_put((self.state.params, self.state.rest), self._to_sampler)
        return nnx.merge(self.graphdef, params, rest)

    @property
    def evaluator(self) -> Evaluator:
        """The held-out evaluation player (built on first use)."""
        if self._evaluator is None:
            e, c = self.cfg.eval, self.cfg
            settings = EvalSettings(
                max_tasks=e.max_tasks,
                samples_per_task=e.samples_per_task,
                temperature=e.temperature,
                pass_k=e.pass_k,
                max_new_tokens=c.rollout.max_new_tokens,
                num_slots=c.engine.num_slots,
                max_len=c.engine.max_len,
                decode_steps_per_call=c.engine.decode_steps_per_call,
                seed=c.seed,
            )
            self._evaluator = Evaluator(
                self.make_eval_env,
                count_tasks(self.make_eval_env),
                self.tokenizer,
                self._sampler_model(),
                settings,
                stop_token_ids=self.rollout.stop_token_ids,
            )
            self._place_sampler(self._evaluator.engine)
        return self._evaluator

    # -------------------------------------------------------------------------- warm start

    def warm_start(self) -> list[dict[str, float]]:
        """Supervised warm start (``sft`` section); returns its per-step metrics."""
        from mtrl_jax.demonstrations import oracle_records
        from mtrl_jax.sft import run_sft
        from mtrl_jax.trajectory import read_trajectories

        s = self.cfg.sft
        start = time.perf_counter()
        if s.demo_source == "oracle":
            n = count_tasks(self.make_train_env)
            if n is None:
                raise ValueError("oracle demonstrations need an environment that lists its tasks")
            tasks = first_tasks(n, s.demo_tasks)
            self._say(f"warm start: playing the oracle on {len(tasks)} training tasks")
            records = oracle_records(
                self.make_train_env,
                tasks,
                self.tokenizer,
                stop_token_id=self.eos_token_id,
                answers=s.answers,
                altered_fraction=s.altered_fraction,
                recap=s.recap,
                confused_pairs=s.confused_pairs,
            )
        else:
            assert s.trajectories is not None  # checked by the config
            records = [r for r in read_trajectories(s.trajectories) if r.status == "ok"]
        model = nnx.merge(self.graphdef, self.state.params, self.state.rest)
        self._say(
            f"warm start: {s.steps} SFT steps on {len(records)} demonstrations "
            "(the first step compiles: 10-30 s on 2 cores)"
        )
        bar = self._bar(s.steps, "sft")

        def on_step(step: int, metrics: dict[str, float]) -> None:
            self.tracker.log_metrics(metrics, step=step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['sft/loss']:.3f}")

        _, sft_state, history = run_sft(
            model,
            records,
            steps=s.steps,
            batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            # The SFT step runs on one device with one micro-batch: no row multiple needed.
            packing=dataclasses.replace(
                self.cfg.packing,
                seq_len=s.seq_len or self.cfg.packing.seq_len,
                rows_multiple=1,
                row_buckets=None,
                overlong="truncate",
            ),
            seed=self.cfg.seed,
            on_step=on_step,
        )
        if bar is not None:
            bar.close()
        # RL starts from the warm-started weights with a fresh optimiser state.
        _, state = init_train_state(
            nnx.merge(self.graphdef, sft_state.params, sft_state.rest), self.cfg.train
        )
        self.state = self._place(state)
        self.sampler.set_params(self._sampler_model(), self.version)
        self.export(self.run_dir / "warm_start")
        self.phases["sft_s"] = round(time.perf_counter() - start, 1)
        return history

    def _load_reference(self) -> tuple[nnx.State, nnx.State]:
        """The KL reference: the weights RL starts from, read from their HF folder.

        Read from disk in the uninterrupted run as in a resumed one, so both use the same
        reference weights (a resumed run never holds the warm start in memory).
        """
        from mtrl_jax.models import load_pretrained

        path = self.run_dir / "warm_start" if self.cfg.sft.steps > 0 else self.model_path
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the KL reference {path} is missing: a resumed warm-started run reads the warm "
                "start from there (it was written before the first RL step)"
            )
        _, params, rest = nnx.split(
            load_pretrained(path, dtype=self.cfg.model.dtype), nnx.Param, ...
        )
        if self.train_mesh is not None:
            mesh = self.train_mesh
            params, rest = jax.device_put(
                (params, rest), (param_shardings(params, mesh), param_shardings(rest, mesh))
            )
        return params, rest

    # ------------------------------------------------------------------------------- loop

    def run(self) -> dict[str, Any]:
        """Warm start (unless resumed), evaluation, RL steps, final evaluation and checkpoint.

        Returns:
            ``{"before": eval summary or None, "after": eval summary, "steps": int,
            "history": [...], "run_dir": str, "phases": {name: wall-clock seconds}}``.
        """
        cfg = self.cfg
        before = None
        try:
            if not self.resumed:
                if cfg.sft.steps > 0:
                    sft = self.warm_start()
                    self._say(
                        f"warm start: {len(sft)} SFT steps, loss "
                        f"{sft[0]['sft/loss']:.3f} -> {sft[-1]['sft/loss']:.3f}"
                    )
                before = self.evaluate()
            if cfg.train.loss.kl_coef > 0.0:
                self.reference = self._load_reference()
            if self.step < cfg.steps:
                self._say(
                    f"RL: {cfg.steps - self.step} steps of {cfg.env.tasks_per_step} tasks x "
                    f"{cfg.rollout.group_size} episodes ({cfg.async_.mode}; the first step "
                    "compiles the sampler and the train step: about a minute on 2 cores)"
                )
            start = time.perf_counter()
            if cfg.async_.mode == "sync":
                self._run_sync()
            else:
                self._run_async()
            self.phases["rl_s"] = round(time.perf_counter() - start, 1)
            after = self.evaluate() if self.step > 0 or before is None else before
            self.save()
        except BaseException:
            self.tracker.close("FAILED")
            raise
        self.tracker.close("FINISHED")
        return {
            "before": before,
            "after": after,
            "steps": self.step,
            "history": self.history,
            "run_dir": str(self.run_dir),
            "phases": dict(self.phases),
        }

    def _say(self, message: str) -> None:
        """A progress line on stderr (only with ``progress``)."""
        if self.progress:
            print(f"[mtrl] {message}", file=sys.stderr, flush=True)

    def _bar(self, total: int, desc: str) -> Any:
        if not self.progress or total <= 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)

    def _collect(self, step: int) -> _Round:
        """Plays round ``step`` (its tasks, keys and seeds are functions of the step)."""
        start = time.perf_counter()
        tasks = self.tasks.take(self.cfg.env.tasks_per_step)
        self.sampler.set_key(jax.random.fold_in(self.sample_key, step))
        self.sampler.stats = PrefillStats()
        batch = run_blocking(self.rollout.collect(tasks, step=step))
        batch = self._refill(batch, step, offset=len(tasks))
        position = self.tasks.position
        # Prompt compute as the sampler did it: shared prefixes are prefilled once per round
        # (how much depends on which episodes reached the sampler together: a perf metric).
        batch.metrics["perf/prefill_tokens"] = float(self.sampler.stats.prefilled_tokens)
        batch.metrics["perf/prefix_reused_tokens"] = float(self.sampler.stats.reused_tokens)
        return _Round(step, batch, time.perf_counter() - start, position)

    def _refill(self, batch: RolloutBatch, step: int, *, offset: int) -> RolloutBatch:
        """Dynamic sampling's refill: new tasks for the groups the filter dropped, capped.

        Each extra collection plays as many tasks as groups are missing, numbered after the
        round's others (new group ids, seeds and sampler streams), then the whole round is
        scored again. Tasks come from the stream, so a checkpoint's position covers them.
        """
        a = self.cfg.rollout.advantage
        records, added = list(batch.records), 0
        for _ in range(a.refill_rounds):
            missing = self.cfg.env.tasks_per_step - int(batch.metrics.get("advantage/groups", 0))
            if missing <= 0:
                break
            more = self.tasks.take(missing)
            records += run_blocking(self.rollout.play(more, step=step, task_offset=offset))
            offset, added = offset + missing, added + missing
            batch = self.rollout.score(records)
        batch.metrics["advantage/refill_tasks"] = float(added)
        return batch

    def _run_sync(self) -> None:
        bar = self._bar(self.cfg.steps - self.step, "rl")
        while self.step < self.cfg.steps:
            self._learn(self._collect(self.step), recompute_old=False)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{self.train_reward:.3f}")
        if bar is not None:
            bar.close()

    def _run_async(self) -> None:
        a = self.cfg.async_
        rounds: queue.Queue[_Round | BaseException] = queue.Queue(maxsize=a.queue_size)
        stop = threading.Event()
        progress = threading.Condition()
        produced = self.step

        def producer() -> None:
            r = produced
            try:
                while not stop.is_set():
                    if a.staleness_policy == "pause":
                        # Round r may start once the learner has finished rounds < r - bound.
                        # Counted in rounds (steps), not versions: an empty round makes no
                        # update, and waiting on versions would then wait forever. At most one
                        # version per round keeps staleness <= bound either way.
                        with progress:
                            progress.wait_for(
                                lambda r=r: stop.is_set() or self.step >= r - a.max_staleness
                            )
                    if stop.is_set():
                        return
                    item = self._collect(r)
                    while not stop.is_set():
                        with contextlib.suppress(queue.Full):
                            rounds.put(item, timeout=0.1)
                            break
                    r += 1
            except BaseException as error:  # surfaced in the learner thread
                rounds.put(error)

        thread = threading.Thread(target=producer, name="mtrl-rollout", daemon=True)
        thread.start()
        bar = self._bar(self.cfg.steps - self.step, "rl")
        try:
            while self.step < self.cfg.steps:
                wait = time.perf_counter()
                item = rounds.get()
                if isinstance(item, BaseException):
                    raise item
                self._learn(item, recompute_old=True, wait_s=time.perf_counter() - wait)
                if bar is not None:
                    bar.update(1)
                with progress:
                    progress.notify_all()
        finally:
            stop.set()
            with progress:
                progress.notify_all()
            thread.join(timeout=5)  # a daemon: a producer stuck in a rollout must not hang us
            if bar is not None:
                bar.close()

    def _learn(self, rnd: _Round, *, recompute_old: bool, wait_s: float = 0.0) -> None:
        """The updates of a round (a round with nothing left to train on counts as a step)."""
        cfg, start = self.cfg, time.perf_counter()
        # Checkpoints store the position of the rounds *trained on*: rounds the async producer
        # sampled ahead are sampled again after a resume, never skipped.
        self.trained_position = rnd.position
        batch = rnd.batch
        trajectories = batch.trajectories
        staleness = _staleness(trajectories, self.version)
        dropped = 0
        if cfg.async_.mode == "async" and cfg.async_.staleness_policy == "drop":
            keep = staleness <= cfg.async_.max_staleness
            dropped = int((~keep).sum())
            trajectories = [t for t, k in zip(trajectories, keep, strict=True) if k]
            staleness = staleness[keep]
        metrics: dict[str, float] = dict(batch.metrics)
        metrics |= _token_metrics(batch.records)
        metrics |= _summary_metrics(
            summarize(batch.records, ks=sorted({1, cfg.rollout.group_size})), "rollout"
        )
        metrics |= self._staleness_metrics(staleness, dropped)
        if not trajectories:
            metrics["optim/skipped_empty"] = 1.0
            self._log_step(metrics, batch.records)
            self.step += 1
            return
        packed, info = pack_trajectories(trajectories, cfg.packing)
        packed = self._place_batch(packed)
        if recompute_old:  # pi_old is the learner's current policy; mu stays the sampler's
            packed = packed.replace(
                old_logp=self.logprob_fn(self.state.params, self.state.rest, packed)
            )
        if self.reference is not None:
            packed = packed.replace(ref_logp=self.logprob_fn(*self.reference, packed))
        updates = []
        for minibatch in self._minibatches(packed, rnd.step):
            # A row share gathered on the device is laid out again (no-op for the whole batch).
            self.state, raw = self.train_step(self.state, self._place_batch(minibatch))
            updates.append(jax.device_get(raw))
        metrics |= _update_metrics(updates, cfg.train.epochs)
        metrics |= {k: float(v) for k, v in info.metrics.items()}
        self.version += 1
        self.sampler.set_params(self._sampler_model(), self.version)
        train_s = time.perf_counter() - start
        metrics["tokens/trained"] = metrics.get("tokens/real", 0.0) * cfg.train.epochs
        metrics |= {
            "perf/rollout_s": rnd.rollout_s,
            "perf/train_s": train_s,
            "perf/wait_s": wait_s,
            "perf/tokens_per_s": metrics["tokens/generated"] / max(rnd.rollout_s, 1e-9),
            "perf/train_tokens_per_s": metrics["tokens/trained"] / max(train_s, 1e-9),
        }
        self._log_step(metrics, batch.records)
        self.step += 1
        if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.steps:
            self.evaluate()
        if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
            self.save()

    def _minibatches(self, batch: TrainBatch, step: int) -> Iterator[TrainBatch]:
        """The round's updates: ``train.epochs`` passes of ``train.minibatches`` row shares.

        Rows are reshuffled every pass with a seed of (run seed, step, pass), so a resumed run
        makes the same updates; a share holding only padding rows is skipped (Adam would still
        move the weights on a zero gradient).
        """
        t = self.cfg.train
        if t.epochs == 1 and t.minibatches == 1:
            yield batch
            return
        rows = batch.tokens.shape[0]
        size = rows // t.minibatches  # rows_multiple is a multiple of minibatches (config)
        for epoch in range(t.epochs):
            order = np.random.default_rng([self.cfg.seed, step, epoch]).permutation(rows)
            for i in range(t.minibatches):
                take = np.sort(order[i * size : (i + 1) * size])
                minibatch = jax.tree.map(lambda x, take=take: x[take], batch)
                if bool(minibatch.loss_mask.any()):
                    yield minibatch

    def _staleness_metrics(self, staleness: np.ndarray, dropped: int) -> dict[str, float]:
        out = {
            "staleness/mean": float(staleness.mean()) if staleness.size else 0.0,
            "staleness/max": float(staleness.max()) if staleness.size else 0.0,
            "staleness/dropped": float(dropped),
        }
        for v in range(self.cfg.async_.max_staleness + 1):  # the histogram, one metric a bin
            out[f"staleness/hist_{v}"] = float((staleness == v).sum())
        return out

    def _log_step(self, metrics: dict[str, float], records: list[TrajectoryRecord]) -> None:
        for key in ("prefilled", "generated", "trained"):
            name = f"tokens/{key}"
            self.totals[name] = self.totals.get(name, 0.0) + metrics.get(name, 0.0)
            metrics[f"tokens_total/{key}"] = self.totals[name]
        self.last_metrics = metrics
        self.train_reward = metrics.get("rollout/return_mean", float("nan"))
        if self._logged("train"):
            return
        n = self.cfg.tracking.log_episodes
        if n:
            self.tracker.log_episodes(records[:n], step=self.step)
        self.tracker.log_trajectories(records, step=self.step)
        self.tracker.log_metrics(metrics, step=self.step)  # last: holds the step's mark

    def _logged(self, kind: str) -> bool:
        """Whether the interrupted attempt of a resumed run already logged this step's record."""
        return self.step <= self._logged_until.get(kind, -1)

    # ------------------------------------------------------------------ evaluation, saving

    def evaluate(self) -> dict[str, Any]:
        """Plays the held-out split with the current weights; logs ``eval/*``; watches hacking."""
        e, evaluator = self.cfg.eval, self.evaluator
        how = "greedy" if e.temperature == 0 else f"temperature {e.temperature}"
        self._say(
            f"evaluating at step {self.step} on {len(evaluator.tasks)} held-out tasks "
            f"({e.samples_per_task} sample(s) each, {how})"
        )
        start = time.perf_counter()
        summary, records = evaluator.run(self._sampler_model(), version=self.version)
        seconds = time.perf_counter() - start
        self.phases[f"eval_step{self.step}_s"] = round(seconds, 1)
        self._say(
            f"held-out success at step {self.step}: {summary.get('success_rate')} ({seconds:.0f} s)"
        )
        if not self._logged("eval"):
            self.tracker.log_episodes(
                records[: self.cfg.tracking.log_episodes], step=self.step, tag="eval"
            )
            self.tracker.log_metrics(_summary_metrics(summary, "eval"), step=self.step)
        self.history.append(
            {
                "step": float(self.step),
                "train_reward": float(self.train_reward),
                "eval_success": float(summary.get("success_rate") or 0.0),
            }
        )
        self._watch()
        return summary

    def _watch(self) -> None:
        """Warns when the training reward rose over the window and the evaluation did not."""
        window = [h for h in self.history if np.isfinite(h["train_reward"])]
        window = window[-self.cfg.eval.hack_window :]
        if len(window) < self.cfg.eval.hack_window:
            return
        rewards = [h["train_reward"] for h in window]
        evals = [h["eval_success"] for h in window]
        rising = all(b > a for a, b in zip(rewards, rewards[1:], strict=False))
        flat = evals[-1] <= evals[0]
        self.tracker.log_metrics(
            {"watch/reward_without_eval": float(rising and flat)}, step=self.step
        )
        if rising and flat:
            warnings.warn(
                f"training reward rose {rewards[0]:.3f} -> {rewards[-1]:.3f} over the last "
                f"{len(window)} evaluations while held-out success went {evals[0]:.3f} -> "
                f"{evals[-1]:.3f}: the policy may be exploiting the reward",
                RewardHackingWarning,
                stacklevel=2,
            )

    def save(self) -> Path:
        """Writes a checkpoint of the full state at the current step."""
        meta = {
            "step": self.step,
            "policy_version": self.version,
            "task_position": self.trained_position,
            "sample_key": key_to_json(self.sample_key),
            "history": self.history,
            "totals": self.totals,
            "train_reward": self.train_reward,
            "tracking_run_id": self.tracker.run_id,
            "config": to_dict(self.cfg),
        }
        return self.checkpointer.save(self.step, self.state, meta, overwrite=True)

    def export(self, out: str | Path) -> Path:
        """Writes the current weights and tokenizer as an HF folder (transformers loads it)."""
        from mtrl_jax.models import save_pretrained

        out = Path(out)
        save_pretrained(nnx.merge(self.graphdef, self.state.params, self.state.rest), out)
        self.tokenizer.save_pretrained(str(out))
        generation = self.model_path / "generation_config.json"  # generate()'s stop tokens
        if generation.exists():
            shutil.copyfile(generation, out / "generation_config.json")
        return out


def run(cfg: RunConfig, **kwargs: Any) -> dict[str, Any]:
    """Builds a :class:`Trainer` and runs it."""
    return Trainer(cfg, **kwargs).run()
