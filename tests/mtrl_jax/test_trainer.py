"""End-to-end tests of the RL trainer and the ``mtrl`` jobs built on it, on tiny runs.

Every run uses the default tiny model (built once for the module), two tasks of two episodes per
step, 16-token turns and one evaluation task, so a step costs about a second on CPU. Compiled
programs go to a persistent compilation cache for this module only: each ``Trainer`` jits its own
train step, and the cache lets runs with the same shapes share the compiled program.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import jax
import numpy as np
import pytest

from mtrl_gym import EvalOnlyError
from mtrl_jax import cli
from mtrl_jax.advantages import ADVANTAGE_ESTIMATORS
from mtrl_jax.checkpoint import Checkpointer, CorruptCheckpointWarning
from mtrl_jax.config import load_config
from mtrl_jax.losses import POLICY_LOSSES
from mtrl_jax.resume import ConfigMismatchError
from mtrl_jax.tracking import NullTracker
from mtrl_jax.trainer import TIMING_PREFIXES, RewardHackingWarning, Trainer
from mtrl_jax.types import TrainBatch
from tests.conftest import SOP_BENCH_DATA, SOP_BENCH_MISSING

EVAL_ONLY_ID = "mtrl-test/EvalOnlyQuickstart-v0"


class RecordingTracker(NullTracker):
    """Keeps every ``log_metrics`` call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: Any, step: int) -> None:  # noqa: D102
        self.calls.append((step, dict(metrics)))

    def steps(self) -> dict[int, dict[str, float]]:
        """The per-step training metrics (an RL step always logs ``staleness/max``) by step."""
        out: dict[int, dict[str, float]] = {}
        for step, metrics in self.calls:
            if "staleness/max" in metrics:
                assert step not in out, f"step {step} logged twice"
                out[step] = metrics
        return out


@pytest.fixture(scope="module", autouse=True)
def compilation_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A persistent compilation cache for this module (subprocesses may share it)."""
    from jax.experimental.compilation_cache import compilation_cache

    settings = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    before = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # re-read the directory even if JAX already compiled
    yield settings["jax_compilation_cache_dir"]
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtrl_jax.models.make_default import build_default

    return build_default(tmp_path_factory.mktemp("base_model"))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


def tiny(out_dir: Path, name: str, base_model: Path, *extra: str) -> list[str]:
    """Overrides that shrink any quickstart config to a run of about a second per step."""
    return [
        f"out_dir={out_dir}",
        f"name={name}",
        f"model.path={base_model}",
        "steps=1",
        "env.tasks_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=16",
        "rollout.max_concurrency=4",
        "sampler.max_new_tokens=16",
        "engine.num_slots=4",
        "engine.max_len=768",
        "packing.rows_multiple=1",
        "train.num_micro_batches=1",
        "eval.max_tasks=1",
        "sft.steps=0",
        "tracking.enabled=false",
        *extra,
    ]


def make_trainer(config: str, overrides: list[str]) -> tuple[Trainer, RecordingTracker]:
    tracker = RecordingTracker()
    return Trainer(load_config(config, overrides), tracker=tracker, progress=False), tracker


def leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_same_metrics(a: dict[str, float], b: dict[str, float], where: str) -> None:
    timing = [k for k in a if k.startswith(TIMING_PREFIXES)]
    assert timing, "timing metrics are expected in every step"
    keep = sorted(k for k in a if not k.startswith(TIMING_PREFIXES))
    assert keep == sorted(k for k in b if not k.startswith(TIMING_PREFIXES)), where
    for k in keep:
        same = a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k]))
        assert same, f"{where}: {k} differs: {a[k]!r} vs {b[k]!r}"


def untimed(summary: Any) -> Any:
    """An evaluation summary without its wall-clock fields (``episode_s_mean``)."""
    if isinstance(summary, dict):
        return {k: untimed(v) for k, v in summary.items() if not re.search(r"_s(_|$)", k)}
    if isinstance(summary, list):
        return [untimed(v) for v in summary]
    return summary


# --- resume ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resume_runs(out_dir: Path, base_model: Path) -> dict[str, Any]:
    """An uninterrupted 4-step run, and a run stopped after 2 steps then resumed to 4.

    The stopped run's folder is copied before it resumes (the copy serves the corruption test).
    An entropy bonus keeps the gradient non-zero although the untrained policy earns no reward,
    so every update after the first (the warmup starts at learning rate 0) changes the weights
    and hence the later rollouts. The runs warm-start and
    pay a KL penalty to the warm start, so a resume must also find the same reference.
    """
    extra = (
        "checkpoint.every=1",
        "train.loss.entropy_coef=0.01",
        "train.loss.kl_coef=0.05",
        "sft.steps=2",
        "sft.batch_size=2",
        "sft.demo_tasks=2",
    )
    full, full_tracker = make_trainer(
        "quickstart", tiny(out_dir, "full", base_model, *extra, "steps=4")
    )
    full_out = full.run()
    overrides = tiny(out_dir, "resumed", base_model, *extra, "steps=2")
    first, first_tracker = make_trainer("quickstart", overrides)
    first.run()
    stopped_params = leaves(first.state.params)
    shutil.copytree(first.run_dir, out_dir / "corrupt")
    overrides = tiny(out_dir, "resumed", base_model, *extra, "steps=4")
    second, second_tracker = make_trainer("quickstart", overrides)
    assert second.resumed and second.step == 2
    second_out = second.run()
    return {
        "full": full,
        "full_out": full_out,
        "full_steps": full_tracker.steps(),
        "stopped_params": stopped_params,
        "resumed": second,
        "resumed_out": second_out,
        "resumed_steps": first_tracker.steps() | second_tracker.steps(),
        "extra": extra,
    }


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_trainer__resume_reproduces_every_step_metric(resume_runs, step):
    full, resumed = resume_runs["full_steps"], resume_runs["resumed_steps"]
    assert sorted(full) == sorted(resumed) == [0, 1, 2, 3]
    assert_same_metrics(full[step], resumed[step], f"step {step}")


def test_trainer__run_reports_the_wall_clock_of_every_phase(resume_runs):
    phases = resume_runs["full_out"]["phases"]
    # Setup, the warm start, the evaluation before RL (step 0), RL, the final evaluation.
    assert sorted(phases) == ["eval_step0_s", "eval_step4_s", "rl_s", "setup_s", "sft_s"]
    assert all(seconds >= 0 for seconds in phases.values())
    # A resumed run times what it ran: no warm start, no evaluation before RL.
    assert sorted(resume_runs["resumed_out"]["phases"]) == ["eval_step4_s", "rl_s", "setup_s"]


def test_trainer__kl_penalty_is_measured_against_the_warm_start(resume_runs, base_model):
    from flax import nnx

    from mtrl_jax.models import load_pretrained

    full = resume_runs["full"]
    warm_folder = full.run_dir / "warm_start"
    reference = leaves(full.reference[0])
    warm = leaves(nnx.split(load_pretrained(warm_folder), nnx.Param, ...)[1])
    base = leaves(nnx.split(load_pretrained(base_model), nnx.Param, ...)[1])
    assert all(np.array_equal(a, b) for a, b in zip(reference, warm, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(reference, base, strict=True))
    steps = resume_runs["full_steps"]
    # Until an update with a learning rate above 0 (the warmup starts at 0) the policy is the
    # warm start itself, and the KL to it is zero up to float rounding; after one it is not.
    moved = [any(steps[j]["optim/lr"] > 0 for j in range(step)) for step in range(4)]
    assert moved == [False, False, True, True]
    for step in range(4):
        kl = steps[step]["policy/kl_ref"]
        assert (kl > 1e-6) if moved[step] else (abs(kl) < 1e-9), (step, kl)
        np.testing.assert_allclose(steps[step]["loss/kl"], 0.05 * kl, rtol=1e-5, atol=1e-12)


def test_trainer__shared_prompt_prefixes_are_prefilled_once_per_round(resume_runs):
    for step, metrics in resume_runs["full_steps"].items():
        read, computed = metrics["tokens/prefilled"], metrics["perf/prefill_tokens"]
        reused = metrics["perf/prefix_reused_tokens"]
        # Every episode of a round starts with the same system prompt: the sampler runs it
        # once and copies it, so it computes fewer prompt tokens than the episodes read; each
        # token read was computed or reused (sampled tokens fed back count too).
        assert 0 < computed < read <= computed + reused, (step, computed, reused, read)


def _row_batch(rows: int, real: list[int]) -> TrainBatch:
    """A ``[rows, 4]`` batch whose row ``i`` holds token ``i``; only rows in ``real`` train."""
    ids = np.repeat(np.arange(rows, dtype=np.int32)[:, None], 4, axis=1)
    mask = np.zeros((rows, 4), np.float32)
    mask[real] = 1.0
    zeros = np.zeros((rows, 4), np.float32)
    return TrainBatch(
        tokens=ids,
        targets=ids,
        positions=ids * 0,
        segment_ids=(mask > 0).astype(np.int32),
        loss_mask=mask,
        advantages=zeros,
        behaviour_logp=zeros,
        old_logp=zeros,
        policy_version=ids * 0,
        ref_logp=None,
    )


def test_trainer__minibatches_cover_every_row_once_per_pass_and_skip_padding():
    cfg = load_config(
        "quickstart", ["train.epochs=3", "train.minibatches=4", "train.num_micro_batches=2"]
    )
    owner = types.SimpleNamespace(cfg=cfg)
    batch = _row_batch(8, real=[0, 1, 2, 3, 4, 5])  # rows 6 and 7 are padding
    shares = [mb.tokens[:, 0].tolist() for mb in Trainer._minibatches(owner, batch, 5)]
    again = [mb.tokens[:, 0].tolist() for mb in Trainer._minibatches(owner, batch, 5)]
    other_step = [mb.tokens[:, 0].tolist() for mb in Trainer._minibatches(owner, batch, 6)]
    assert shares == again and shares != other_step  # seeded by the step: resumable
    assert all(len(share) == 2 for share in shares)
    # Each pass covers the real rows exactly once; a share of padding only is skipped.
    flat = [r for share in shares for r in share]
    assert sorted(r for r in flat if r < 6) == sorted(list(range(6)) * 3)
    assert all(any(r < 6 for r in share) for share in shares)
    assert 9 <= len(shares) <= 12  # 3 passes x 4 shares, less the padding-only ones
    default = types.SimpleNamespace(cfg=load_config("quickstart"))
    assert list(Trainer._minibatches(default, batch, 0)) == [batch]  # one update, as is


def test_trainer__epochs_and_minibatches_apply_that_many_updates(out_dir, base_model):
    overrides = tiny(
        out_dir,
        "ppo_epochs",
        base_model,
        "steps=2",
        "packing.rows_multiple=2",
        "packing.share_prefix=0",
        "packing.seq_len=768",
    )
    trainer, tracker = make_trainer(
        "quickstart_ppo", [*overrides, "train.epochs=2", "train.minibatches=2"]
    )
    seen: list[list[int]] = []
    step_fn = trainer.train_step

    def spy(state: Any, batch: Any) -> Any:
        seen.append([int(x) for x in np.asarray(batch.loss_mask).sum(axis=1)])
        return step_fn(state, batch)

    trainer.train_step = spy
    trainer.run()
    assert int(trainer.state.step) == len(seen) and trainer.version == 2
    # 2 rounds x 2 passes x 2 minibatches (4 one-row trajectories a round: no padding share).
    assert len(seen) == 8 and all(len(rows) == 2 and all(rows) for rows in seen)
    for metrics in tracker.steps().values():
        assert metrics["tokens/trained"] == 2 * metrics["tokens/real"]


def test_trainer__resume_reproduces_final_weights_and_optimizer(resume_runs, base_model):
    from mtrl_jax.models import load_pretrained

    full, resumed = resume_runs["full"], resume_runs["resumed"]
    assert full.step == resumed.step == 4 and full.version == resumed.version == 4
    for a, b in zip(leaves(full.state), leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    # The updates did change the weights, so the equality above is not vacuous.
    base = leaves(load_pretrained(base_model))
    trained = leaves(full.state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(base, trained, strict=True))
    after_full = untimed(resume_runs["full_out"]["after"])
    assert after_full == untimed(resume_runs["resumed_out"]["after"])
    assert resume_runs["resumed_out"]["before"] is None  # resumed: no warm start or pre-eval


def test_trainer__corrupt_newest_checkpoint_falls_back_to_the_previous(
    resume_runs, out_dir, base_model
):
    run_dir = out_dir / "corrupt"
    newest = run_dir / "checkpoints" / "step_00000002"
    assert (run_dir / "checkpoints" / "step_00000001" / "MANIFEST.json").is_file()
    data = max(
        (p for p in (newest / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the largest array file
    data.write_bytes(bytes(raw))
    overrides = tiny(out_dir, "corrupt", base_model, *resume_runs["extra"], "steps=2")
    with pytest.warns(CorruptCheckpointWarning, match="step 2"):
        trainer, tracker = make_trainer("quickstart", overrides)
    assert trainer.resumed and trainer.step == 1 and trainer.version == 1
    trainer.run()
    # Step 1 replayed from the step-1 checkpoint matches the uninterrupted run's step 1.
    assert sorted(tracker.steps()) == [1]
    assert_same_metrics(resume_runs["full_steps"][1], tracker.steps()[1], "replayed step 1")
    for a, b in zip(resume_runs["stopped_params"], leaves(trainer.state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_trainer__run_killed_part_way_resumes_exactly(
    resume_runs, out_dir, base_model, compilation_cache_dir
):
    """``mtrl train`` in a subprocess, SIGKILLed once its first checkpoint is committed."""
    overrides = tiny(out_dir, "killed", base_model, *resume_runs["extra"], "steps=4")
    env = dict(os.environ)
    env |= {
        "JAX_COMPILATION_CACHE_DIR": compilation_cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    argv = [sys.executable, "-m", "mtrl_jax.cli", "train", "quickstart", *overrides]
    first = out_dir / "killed" / "checkpoints" / "step_00000001" / "MANIFEST.json"
    proc = subprocess.Popen(
        [*argv, "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()}"
        assert first.is_file(), "no checkpoint within 120 s"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    trainer, tracker = make_trainer("quickstart", overrides)
    assert trainer.resumed and 1 <= trainer.step < 4
    resumed_from = trainer.step
    trainer.run()
    assert sorted(tracker.steps()) == list(range(resumed_from, 4))
    for step, metrics in tracker.steps().items():
        assert_same_metrics(resume_runs["full_steps"][step], metrics, f"step {step}")
    for a, b in zip(leaves(resume_runs["full"].state), leaves(trainer.state), strict=True):
        np.testing.assert_array_equal(a, b)


def _mlflow_record(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric's history in a run folder's local MLflow store: key -> [(step, value)]."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def test_trainer__resumed_run_logs_each_step_once_like_an_uninterrupted_run(
    resume_runs, out_dir, base_model
):
    # The interrupted attempt logged steps 0-1 and the final evaluation at step 2; its newest
    # checkpoint (step 2) is then corrupt, so the resume falls back to step 1 and runs step 1
    # and the evaluation again. Before: step 1's metrics twice in MLflow and its trajectory file
    # holding both attempts' episodes.
    extra = (*resume_runs["extra"], "steps=2", "tracking.enabled=true", "tracking.log_episodes=0")
    whole = tiny(out_dir, "logged_whole", base_model, *extra)
    Trainer(load_config("quickstart", whole), progress=False).run()
    overrides = tiny(out_dir, "logged_resumed", base_model, *extra)
    Trainer(load_config("quickstart", overrides), progress=False).run()
    run_dir = out_dir / "logged_resumed"
    newest = run_dir / "checkpoints" / "step_00000002" / "MANIFEST.json"
    newest.write_text("{not json")
    with pytest.warns(CorruptCheckpointWarning):
        resumed = Trainer(load_config("quickstart", overrides), progress=False)
    assert resumed.resumed and resumed.step == 1
    resumed.run()
    a, b = _mlflow_record(out_dir / "logged_whole"), _mlflow_record(run_dir)
    assert sorted(a) == sorted(b)
    for key in a:
        assert [s for s, _ in a[key]] == [s for s, _ in b[key]], key  # each step once
        if not key.startswith(TIMING_PREFIXES):
            assert a[key] == b[key], key
    assert [s for s, _ in b["staleness/max"]] == [0, 1]
    step_file = run_dir / "trajectories" / "train" / "step_000001.jsonl"
    assert len(step_file.read_text().splitlines()) == 4  # 2 tasks x 2 episodes, once


# --- reward-hacking watch ---------------------------------------------------------------------


def _history(rewards: list[float], evals: list[float]) -> list[dict[str, float]]:
    return [
        {"step": float(i), "train_reward": r, "eval_success": e}
        for i, (r, e) in enumerate(zip(rewards, evals, strict=True))
    ]


@pytest.mark.parametrize(
    ("rewards", "evals", "warns"),
    [
        ([0.1, 0.2, 0.4], [0.5, 0.5, 0.5], True),  # reward up, held-out flat
        ([0.1, 0.2, 0.4], [0.5, 0.6, 0.4], True),  # reward up, held-out down
        ([math.nan, 0.1, 0.2, 0.4], [0.0, 0.3, 0.3, 0.3], True),  # pre-RL eval has no reward
        ([0.1, 0.2, 0.4], [0.2, 0.3, 0.5], False),  # both rise
        ([0.1, 0.3, 0.3], [0.5, 0.5, 0.5], False),  # reward not strictly rising
        ([0.1, 0.4], [0.5, 0.5], False),  # shorter than eval.hack_window (3)
    ],
)
def test_trainer__watch_warns_when_reward_rises_without_eval(resume_runs, rewards, evals, warns):
    trainer = resume_runs["full"]
    trainer.tracker = tracker = RecordingTracker()
    trainer.history = _history(rewards, evals)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer._watch()
    hacking = [w for w in caught if issubclass(w.category, RewardHackingWarning)]
    assert len(hacking) == int(warns)
    logged = [m["watch/reward_without_eval"] for _, m in tracker.calls]
    assert logged == ([] if len(rewards) < 3 else [float(warns)])


# --- variants by name -------------------------------------------------------------------------

VARIANTS = {
    # config: (policy loss, advantage estimator, async mode)
    "quickstart_ppo": ("ppo", "grpo", "sync"),
    "quickstart_is": ("is", "grpo", "sync"),
    "quickstart_rloo": ("cispo", "rloo", "sync"),
    "quickstart_passk": ("cispo", "pass_at_k", "sync"),
    "quickstart_async": ("cispo", "grpo", "async"),
}


@pytest.fixture(scope="module")
def variant_runs(out_dir: Path, base_model: Path) -> Any:
    """Runs each quickstart variant once, on first use, recording the registry names it uses.

    Names are recorded only while a training round is collected or an update runs: the held-out
    evaluation plays its episodes with its own (default) settings.
    """

    class Runs(dict):
        def __missing__(self, config: str) -> dict[str, Any]:
            used: dict[str, list[str]] = {"loss": [], "advantage": []}
            training = threading.local()
            originals = {}
            for registry, kind in ((POLICY_LOSSES, "loss"), (ADVANTAGE_ESTIMATORS, "advantage")):
                originals[kind] = registry, registry.get

                def spy(name: str, _original=registry.get, _kind=kind) -> Any:
                    if getattr(training, "active", False):
                        used[_kind].append(name)
                    return _original(name)

                registry.get = spy  # an instance attribute shadows the method
            steps = "steps=3" if config == "quickstart_async" else "steps=1"
            try:
                trainer, tracker = make_trainer(config, tiny(out_dir, config, base_model, steps))
                for method in ("_collect", "_learn"):
                    setattr(trainer, method, _flagged(getattr(trainer, method), training))
                out = trainer.run()
            finally:
                for registry, _ in originals.values():
                    del registry.get
            self[config] = {"trainer": trainer, "out": out, "steps": tracker.steps(), "used": used}
            return self[config]

    return Runs()


def _flagged(method: Any, flag: threading.local) -> Any:
    """``method`` with ``flag.active`` set (in the calling thread) while it runs."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flag.active = True
        try:
            return method(*args, **kwargs)
        finally:
            flag.active = False

    return wrapper


@pytest.mark.parametrize("config", sorted(VARIANTS))
def test_trainer__variant_runs_with_the_named_loss_and_advantage(variant_runs, config):
    loss, estimator, mode = VARIANTS[config]
    run = variant_runs[config]
    cfg = run["trainer"].cfg
    assert (cfg.train.loss.policy_loss, cfg.rollout.advantage.estimator) == (loss, estimator)
    assert cfg.async_.mode == mode
    # What the train step and the rollout's scoring actually looked up, in every round.
    assert set(run["used"]["loss"]) == {loss}
    rounds = run["used"]["advantage"]  # async: the producer may have sampled one round ahead
    assert set(rounds) == {estimator}
    assert len(rounds) == cfg.steps if mode == "sync" else len(rounds) >= cfg.steps
    assert run["out"]["steps"] == cfg.steps == len(run["steps"])
    for step, metrics in run["steps"].items():
        for key in ("loss/total", "loss/policy", "optim/grad_norm", "advantage/mean"):
            assert math.isfinite(metrics[key]), (step, key)
    if config == "quickstart_passk":  # evaluation reports the configured pass@k
        assert sorted(run["out"]["after"]["pass_at_k"]) == ["1", "2"]


# --- async staleness ----------------------------------------------------------------------------


def test_trainer__async_pause_keeps_staleness_within_one(variant_runs):
    run = variant_runs["quickstart_async"]
    assert run["trainer"].cfg.async_.max_staleness == 1
    assert run["trainer"].cfg.async_.staleness_policy == "pause"
    for step, metrics in run["steps"].items():
        # The producer samples while the learner updates: no sampler call may fail (e.g. on a
        # weight buffer the update donated).
        assert metrics["rollout/infra_failures"] == 0, step
        assert metrics["staleness/max"] <= 1, step
        assert metrics["staleness/dropped"] == 0, step
        assert (
            metrics["staleness/hist_0"] + metrics["staleness/hist_1"]
            == metrics["packing/sequences"]
        )
    # The producer ran ahead of the learner; a checkpoint records the rounds trained on, so a
    # resume samples the queued rounds' tasks again instead of skipping them.
    trainer = run["trainer"]
    assert trainer.trained_position == trainer.step * trainer.cfg.env.tasks_per_step
    assert trainer.tasks.position >= trainer.trained_position


def _instrumented(trainer: Trainer, *, hold_first_update: bool) -> dict[str, list[int]]:
    """Records each round's size and the policy version when its sampling began.

    With ``hold_first_update`` the first update waits until the producer has sampled round 1,
    so that round is sampled entirely by version 0 and is one version stale when trained on.
    """
    seen: dict[str, list[int]] = {"produced": [], "version_at_start": []}
    round_one = threading.Event()
    collect, train_step = trainer._collect, trainer.train_step

    def recording_collect(step: int) -> Any:
        seen["version_at_start"].append(trainer.version)
        rnd = collect(step)
        seen["produced"].append(len(rnd.batch.trajectories))
        if step >= 1:
            round_one.set()
        return rnd

    def held_train_step(state: Any, batch: Any) -> Any:
        if hold_first_update and trainer.version == 0:
            assert round_one.wait(timeout=60), "the producer never sampled round 1"
        return train_step(state, batch)

    trainer._collect = recording_collect
    trainer.train_step = held_train_step
    return seen


def test_trainer__async_pause_with_zero_staleness_is_on_policy(out_dir, base_model):
    overrides = tiny(
        out_dir, "pause0", base_model, "steps=3", "async.max_staleness=0", "async.queue_size=2"
    )
    trainer, tracker = make_trainer("quickstart_async", overrides)
    seen = _instrumented(trainer, hold_first_update=False)
    trainer.run()
    steps = tracker.steps()
    assert sorted(steps) == [0, 1, 2] and trainer.version == 3
    for step, metrics in steps.items():
        assert metrics["staleness/max"] == 0 and metrics["staleness/dropped"] == 0, step
        assert metrics["rollout/infra_failures"] == 0, step
        assert metrics["staleness/hist_0"] == seen["produced"][step]
    # Round r started only once the learner had made r updates (the pause, not luck).
    for r, version in enumerate(seen["version_at_start"]):
        assert version >= r, (r, version)


def test_trainer__async_pause_survives_rounds_with_nothing_to_train_on(out_dir, base_model):
    # A round whose episodes were all excluded (e.g. every one infra_error) advances the step but
    # not the policy version. A producer waiting on versions then waited forever for round 2.
    overrides = tiny(
        out_dir,
        "pause0_empty",
        base_model,
        "steps=3",
        "async.max_staleness=0",
        "async.queue_size=2",
    )
    trainer, tracker = make_trainer("quickstart_async", overrides)
    seen = _instrumented(trainer, hold_first_update=False)
    collect = trainer._collect

    def emptied(step: int) -> Any:
        rnd = collect(step)
        if step == 1:
            rnd.batch.trajectories = []
        return rnd

    trainer._collect = emptied
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            trainer.run()
        except BaseException as e:  # surfaced below
            errors.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout=180), "async pause deadlocked after an empty round"
    assert not errors, errors
    steps = tracker.steps()
    assert sorted(steps) == [0, 1, 2] and trainer.version == 2
    assert steps[1]["optim/skipped_empty"] == 1
    for step, metrics in steps.items():  # the bound still holds
        assert metrics["staleness/max"] == 0 and metrics["staleness/dropped"] == 0, step
    # Round r started only once the learner had finished r rounds.
    assert seen["version_at_start"] == [0, 1, 1]


def test_trainer__filter_groups_refills_dropped_groups_with_new_tasks(out_dir, base_model):
    # The untrained policy mostly earns the same reward in a group: the filter drops such
    # groups and each refill plays as many new tasks as groups are missing, at most twice.
    extra = ("rollout.advantage.filter_groups=true", "rollout.advantage.refill_rounds=2")
    trainer, tracker = make_trainer("quickstart", tiny(out_dir, "refill", base_model, *extra))
    trainer.run()
    m = tracker.steps()[0]
    refill, kept, dropped = (
        m["advantage/refill_tasks"],
        m["advantage/groups"],
        m["advantage/filtered_groups"],
    )
    assert kept + dropped == 2 + refill  # every task played is one group, kept or dropped
    assert m["rollout/episodes"] == (2 + refill) * 2
    assert trainer.trained_position == 2 + refill  # refill tasks come from the stream
    assert refill <= 4  # two refills of at most 2 tasks each
    if kept < 2:  # short of a full batch: both refills ran, each with at least one task
        assert refill >= 2
    if refill == 0:
        assert kept >= 2


def test_trainer__async_drop_discards_and_counts_stale_trajectories(out_dir, base_model):
    overrides = tiny(
        out_dir,
        "drop0",
        base_model,
        "steps=3",
        "async.max_staleness=0",
        "async.staleness_policy=drop",
        "async.queue_size=2",
    )
    trainer, tracker = make_trainer("quickstart_async", overrides)
    seen = _instrumented(trainer, hold_first_update=True)
    trainer.run()
    steps = tracker.steps()
    assert sorted(steps) == [0, 1, 2]
    updates = 0
    for step, metrics in steps.items():
        dropped = metrics["staleness/dropped"]
        trained = metrics.get("packing/sequences", 0.0)  # absent when nothing was left
        assert dropped + trained == seen["produced"][step], step
        assert metrics["staleness/max"] == 0, step  # what was trained on was on-policy
        assert metrics["rollout/infra_failures"] == 0, step
        updates += trained > 0
    # Round 1 was sampled by version 0 while the first update was held: all of it is stale.
    assert steps[0]["staleness/dropped"] == 0
    assert steps[1]["staleness/dropped"] == seen["produced"][1] > 0
    assert steps[1]["optim/skipped_empty"] == 1
    assert trainer.version == updates


# --- evaluation-only environments ---------------------------------------------------------------


def _make_eval_only(**kwargs: Any) -> gym.Env:
    env = gym.make("mtrl/SopQuickstart-v0", **kwargs)
    env.unwrapped.eval_only = True  # what SopBenchEnv declares as a class attribute
    env.unwrapped.eval_only_reason = "test data licensed for evaluation only"
    return env


@pytest.fixture(scope="module")
def eval_only_id() -> Any:
    gym.register(EVAL_ONLY_ID, entry_point=_make_eval_only)
    yield EVAL_ONLY_ID
    del gym.registry[EVAL_ONLY_ID]


def test_trainer__refuses_an_evaluation_only_env_before_any_rollout(
    eval_only_id, out_dir, base_model
):
    overrides = tiny(out_dir, "eval_only", base_model, f"env.id={eval_only_id}")
    with pytest.raises(EvalOnlyError, match="evaluation only"):
        make_trainer("quickstart", overrides)
    assert not (out_dir / "eval_only" / "checkpoints").exists()


# --- the mtrl jobs ------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[Any, str, str]:
    """``cli.main(argv)`` with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = cli.main(argv)
    return result, out.getvalue(), err.getvalue()


def test_mtrl_train__prints_the_result_as_a_json_line(out_dir, base_model):
    overrides = tiny(out_dir, "cli_train", base_model, "train.loss.entropy_coef=0.01")
    result, out, _ = run_cli(["train", "quickstart", *overrides, "--no-progress"])
    last = json.loads(out.strip().splitlines()[-1])
    assert last == result
    assert set(last) == {"before", "after", "steps", "run_dir"} and last["steps"] == 1
    assert 0.0 <= last["before"] <= 1.0 and 0.0 <= last["after"] <= 1.0
    assert Path(last["run_dir"]) == out_dir / "cli_train"
    assert (out_dir / "cli_train" / "checkpoints" / "step_00000001" / "MANIFEST.json").is_file()


def test_mtrl_train__bad_override_exits_2_naming_the_key(out_dir, base_model, capsys):
    overrides = tiny(out_dir, "bad", base_model, "rollout.advantage.estimatr=grpo")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "quickstart", *overrides])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rollout.advantage.estimatr" in err
    assert "did you mean 'estimator'" in err


def test_mtrl_train__evaluation_only_env_exits_2(eval_only_id, out_dir, base_model, capsys):
    overrides = tiny(out_dir, "cli_eval_only", base_model, f"env.id={eval_only_id}")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "quickstart", *overrides])
    assert e.value.code == 2 and "evaluation-only" in capsys.readouterr().err


def test_mtrl_train__another_experiment_in_a_run_folder_is_refused_unless_resumed(
    resume_runs, out_dir, base_model, capsys
):
    """A copy of the 4-step run, pointed at by a command with other seeds and more steps."""
    run_dir = out_dir / "cli_resume"
    shutil.copytree(out_dir / "full", run_dir)
    extra = (*resume_runs["extra"], "steps=5", "seed=1", "model.seed=1")
    argv = ["train", "quickstart", *tiny(out_dir, "cli_resume", base_model, *extra)]
    argv.append("--no-progress")
    # Trainer users are refused too, before anything is built.
    with pytest.raises(ConfigMismatchError, match="seed 0 -> 1"):
        make_trainer("quickstart", argv[2:-1])
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtrl train: error: "), err
    assert f"{run_dir} already holds a run (checkpoint at step 4)" in err[0]
    assert "seed 0 -> 1, model.seed 0 -> 1;" in err[0]  # steps and name are safe to change
    assert all(way in err[0] for way in ("--resume", "name=<another name>", "--fresh"))
    assert Checkpointer(run_dir / "checkpoints").steps() == [3, 4]  # untouched

    result, _, err = run_cli([*argv, "--resume"])
    checkpoint = run_dir / "checkpoints" / "step_00000004"
    first = err.splitlines()[0]
    assert first.startswith(f"[mtrl] resuming run {run_dir} from step 4 (checkpoint {checkpoint})")
    assert "steps 4 -> 5" in first and "kept the stored config" in first
    assert result["steps"] == 5 and result["before"] is None
    stored = Checkpointer(run_dir / "checkpoints").read_meta(5)["config"]
    assert (stored["seed"], stored["model"]["seed"], stored["steps"]) == (0, 0, 5)


def test_mtrl_sft__writes_the_warm_started_model(out_dir, base_model):
    from mtrl_jax.models import load_pretrained

    overrides = tiny(
        out_dir, "sft", base_model, "sft.steps=2", "sft.batch_size=2", "sft.demo_tasks=2"
    )
    result, out, _ = run_cli(["sft", "quickstart", *overrides, "--no-progress"])
    assert json.loads(out.strip().splitlines()[-1]) == result
    folder = Path(result["model"])
    assert folder == out_dir / "sft" / "warm_start" and result["steps"] == 2
    assert math.isfinite(result["loss"])
    warm, base = leaves(load_pretrained(folder)), leaves(load_pretrained(base_model))
    assert any(not np.array_equal(a, b) for a, b in zip(warm, base, strict=True))


def test_mtrl_eval__plays_an_evaluation_only_env_and_writes_the_report(
    eval_only_id, out_dir, base_model, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    # MLflow puts the artifacts of an experiment it creates in a SQL store under ./mlruns of
    # the working directory: the test's own folder, not the checkout.
    monkeypatch.chdir(tmp_path)
    report, store = out_dir / "eval_report", f"sqlite:///{out_dir / 'mlflow.db'}"
    argv = ["eval", "--model", str(base_model), "--env", eval_only_id, "--max-tasks", "2"]
    argv += ["--mlflow-uri", store, "--experiment", "eval-test"]
    argv += ["--samples", "2", "--k", "1", "--k", "2"]  # no --temperature: samples at 1.0
    argv += ["--max-new-tokens", "16", "--num-slots", "4", "--out", str(report)]
    result, out, err = run_cli(argv)
    assert json.loads(out.strip().splitlines()[-1]) == result
    assert "pass@2" in out  # format_summary was printed
    assert result["temperature"] == 1.0 and "WARNING" not in err
    assert "temperature: 1 (default for several samples per task)" in out
    summary = json.loads((report / "summary.json").read_text())
    assert summary["sampling"]["temperature"] == 1.0
    assert summary["episodes"] == result["episodes"] == 4
    assert sorted(summary["pass_at_k"]) == ["1", "2"]
    assert (report / "report.md").read_text().startswith(f"# Evaluation on {eval_only_id}")
    client = MlflowClient(store)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["eval/success_rate"] == summary["success_rate"]
    assert run.data.metrics["eval/pass_at_2"] == summary["pass_at_k"]["2"]["value"]
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/summary.json", "report/report.md"} <= logged


def test_mtrl_eval__greedy_samples_for_pass_at_k_are_warned_about(
    eval_only_id, out_dir, base_model
):
    report = out_dir / "eval_greedy_report"
    argv = ["eval", "--model", str(base_model), "--env", eval_only_id, "--max-tasks", "1"]
    argv += ["--samples", "2", "--k", "2", "--temperature", "0"]
    argv += ["--max-new-tokens", "16", "--num-slots", "2", "--out", str(report)]
    result, out, err = run_cli(argv)
    warnings_ = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warnings_) == 1 and "identical" in warnings_[0] and "pass@k" in warnings_[0]
    assert result["temperature"] == 0.0 and "temperature: 0 (--temperature)" in out
    sampling = json.loads((report / "summary.json").read_text())["sampling"]
    assert sampling == {"temperature": 0.0, "temperature_source": "--temperature"}


@pytest.mark.skipif(not (SOP_BENCH_DATA / "customer_service").is_dir(), reason=SOP_BENCH_MISSING)
def test_mtrl_eval__sop_bench_domain_is_evaluated_with_the_licence_notice(base_model, out_dir):
    report = out_dir / "sop_bench_report"
    argv = [
        "eval",
        "--model",
        str(base_model),
        "--env",
        f"sop-bench:{SOP_BENCH_DATA / 'customer_service'}",
    ]
    argv += ["--max-tasks", "1", "--max-new-tokens", "16", "--num-slots", "2", "--out", str(report)]
    result, _, err = run_cli(argv)
    assert "CC BY-NC 4.0" in err and result["episodes"] == 1
    assert json.loads((report / "summary.json").read_text())["episodes"] == 1


def test_mtrl_eval__loads_a_run_folder_at_its_newest_checkpoint(resume_runs):
    full = resume_runs["full"]
    model, _, info = cli.load_model(full.run_dir)
    assert info["source"] == "checkpoint" and info["checkpoint_step"] == 4
    from flax import nnx

    for a, b in zip(leaves(nnx.state(model, nnx.Param)), leaves(full.state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mtrl_export__transformers_loads_it_with_the_same_logits(resume_runs, out_dir):
    import torch
    import transformers
    from flax import nnx

    full = resume_runs["full"]
    folder = out_dir / "exported"
    result, _, _ = run_cli(["export", str(full.run_dir), str(folder)])
    assert result == {"out": str(folder), "checkpoint_step": 4}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert len(set(modes.values())) == 1, modes  # the weights too (safetensors alone: 0600)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.encode("look up parcel PX-1042 and report its status")
    assert ids == full.tokenizer.encode("look up parcel PX-1042 and report its status")
    tokens = np.asarray([ids], np.int32)
    with torch.no_grad():
        expected = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    ours = nnx.merge(full.graphdef, full.state.params, full.state.rest)
    np.testing.assert_allclose(np.asarray(ours(tokens)), expected, atol=1e-4, rtol=1e-4)


def test_mtrl_export__not_a_run_folder_exits_2(base_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(base_model), str(tmp_path / "x")])
    assert e.value.code == 2 and "checkpoints/" in capsys.readouterr().err
