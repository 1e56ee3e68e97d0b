"""The trainer on a device mesh (``mesh`` config): sharded runs, disjoint sampler devices.

Runs use the tiny overrides of ``test_trainer`` on the 8 fake CPU devices of
``tests/conftest.py``. A colocated FSDP x TP run must reproduce the single-device run (same
sampled tokens, metrics and weights within float32 rounding); a disjoint run must keep the train
state on the training devices, the sampler's weights and KV cache on the sampler's, and hand
every update's weights over; checkpoints written on one mesh must resume on another.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from mtrl_jax import cli
from mtrl_jax.config import ConfigError, load_config
from mtrl_jax.sharding import (
    ShardingConfig,
    make_mesh,
    make_run_meshes,
    make_sharded_logprob_fn,
    shard_batch,
    shard_train_state,
)
from mtrl_jax.train_step import make_logprob_fn
from mtrl_jax.trainer import TIMING_PREFIXES, Trainer
from tests.conftest import skip_if_not_enough_devices
from tests.mtrl_jax import test_trainer
from tests.mtrl_jax.test_sharding import CFG, batches, fresh_state
from tests.mtrl_jax.test_trainer import RecordingTracker, leaves, tiny

# test_trainer's module fixtures, reused: the persistent compilation cache, the tiny base model
# and a runs folder (each built once for this module).
compilation_cache_dir = test_trainer.compilation_cache_dir
base_model = test_trainer.base_model
out_dir = test_trainer.out_dir

pytestmark = pytest.mark.multidevice

# Every run below: an entropy bonus keeps the gradient non-zero although the untrained policy
# earns no reward, so each update moves the weights (and comparisons of them are not vacuous).
ENTROPY = "train.loss.entropy_coef=0.01"
# Train devices 0-5 as data=3 x fsdp=2 (rows split 6 ways, so rows come in multiples of 6);
# sampler devices 6-7 as tensor=2: a different layout, so each hand-over is a real reshard.
DISJOINT = (
    "mesh.train={data: 3, fsdp: 2}",
    "mesh.sampler=disjoint",
    "mesh.sampler_mesh={tensor: 2}",
    "packing.rows_multiple=6",
)


class TokenTracker(RecordingTracker):
    """Also keeps each step's sampled episodes as token lists."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[int, list[list[int]]] = {}

    def log_trajectories(self, records: Any, step: int, *, tag: str = "train") -> None:  # noqa: D102
        self.tokens[step] = [np.asarray(r.tokens).tolist() for r in records]


def make_trainer(overrides: list[str], config: str = "quickstart") -> tuple[Trainer, TokenTracker]:
    tracker = TokenTracker()
    return Trainer(load_config(config, overrides), tracker=tracker, progress=False), tracker


def device_set(tree: Any) -> set[jax.Device]:
    """Every device holding a piece of any array of ``tree``."""
    return set().union(*(x.sharding.device_set for x in jax.tree.leaves(tree)))


def sampler_weights(trainer: Trainer) -> Any:
    """The rollout sampler's weights (its ``nnx.State``; the engine has no public getter)."""
    return trainer.sampler._state


def trained_weights(trainer: Trainer) -> Any:
    """The train state's weights in the sampler's structure (the model's full ``nnx.State``)."""
    return nnx.state(nnx.merge(trainer.graphdef, trainer.state.params, trainer.state.rest))


def assert_close_metrics(a: dict[str, float], b: dict[str, float], where: str) -> None:
    """Every untimed metric equal within float32 rounding of a different reduction order."""
    keep = sorted(k for k in a if not k.startswith(TIMING_PREFIXES))
    assert keep == sorted(k for k in b if not k.startswith(TIMING_PREFIXES)), where
    for k in keep:
        same = math.isclose(a[k], b[k], rel_tol=1e-5) or (math.isnan(a[k]) and math.isnan(b[k]))
        assert same, f"{where}: {k} differs: {a[k]!r} vs {b[k]!r}"


# --- colocated FSDP x TP equals one device ------------------------------------------------------


def test_trainer_on_mesh__fsdp_tensor_colocated_matches_single_device(out_dir, base_model):
    skip_if_not_enough_devices(8)
    # No KL term: in the first step it is the KL of the policy to its own weights, whose
    # gradient is rounding noise that differs with the reduction order (the KL is tested in
    # test_trainer and, placed on a mesh, in the disjoint tests below).
    common = ("steps=2", ENTROPY, "packing.rows_multiple=4", "train.loss.kl_coef=0")
    single, single_tracker = make_trainer(tiny(out_dir, "mesh_ref", base_model, *common))
    single.run()
    sharded, sharded_tracker = make_trainer(
        tiny(out_dir, "mesh_fsdp_tp", base_model, *common, "mesh.train={fsdp: 4, tensor: 2}")
    )
    sharded.run()

    # Not vacuous: the state, the sampler's weights and its KV cache span all 8 devices, and
    # the embedding is split (vocab over tensor, embed over fsdp).
    assert single.train_mesh is None and device_set(single.state) == {jax.devices()[0]}
    assert device_set(sharded.state) == device_set(sampler_weights(sharded)) == set(jax.devices())
    assert device_set(sharded.sampler._cache) == set(jax.devices())
    embedding = jax.tree.leaves(sharded.state.params)[0]
    assert embedding.sharding.shard_shape(embedding.shape) != embedding.shape

    # The sampler keys its noise per request and token, not per device: the same episodes.
    assert single_tracker.tokens == sharded_tracker.tokens and len(single_tracker.tokens) == 2
    a, b = single_tracker.steps(), sharded_tracker.steps()
    assert sorted(a) == sorted(b) == [0, 1]
    for step in a:
        assert_close_metrics(a[step], b[step], f"step {step}")
    # Weights agree to float32 rounding: the largest difference seen is 1 ulp at |w| ~ 1
    # (1.2e-7); atol covers weights near 0, whose relative error means nothing. Two AdamW
    # steps (warmup: lr 0 then 2e-4) move weights by ~2e-4, far more than the tolerance.
    base = leaves(nnx.state(load_base(base_model), nnx.Param))
    for x, y in zip(leaves(single.state.params), leaves(sharded.state.params), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
    moved = zip(leaves(single.state.params), base, strict=True)
    assert max(np.abs(x - w).max() for x, w in moved) > 1e-4
    for x, y in zip(leaves(single.state.opt_state), leaves(sharded.state.opt_state), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def load_base(path: Path) -> Any:
    from mtrl_jax.models import load_pretrained

    return load_pretrained(path)


# --- disjoint sampler devices -------------------------------------------------------------------


def watch_updates(trainer: Trainer) -> list[dict[str, Any]]:
    """After every update: where the train state and the sampler's weights live, and equality."""
    seen: list[dict[str, Any]] = []
    learn = trainer._learn

    def learn_and_look(*args: Any, **kwargs: Any) -> None:
        learn(*args, **kwargs)
        trained, sampled = trained_weights(trainer), sampler_weights(trainer)
        same = all(
            np.array_equal(x, y) for x, y in zip(leaves(trained), leaves(sampled), strict=True)
        )
        seen.append(
            {
                "version": trainer.version,
                "train_devices": device_set(trainer.state),
                "sampler_devices": device_set(sampled),
                "same_weights": same,
            }
        )

    trainer._learn = learn_and_look
    return seen


@pytest.fixture(scope="module")
def disjoint_run(out_dir: Path, base_model: Path) -> dict[str, Any]:
    """A 2-step sync run training on devices 0-5 and sampling on devices 6-7."""
    skip_if_not_enough_devices(8)
    trainer, tracker = make_trainer(
        tiny(out_dir, "disjoint", base_model, "steps=2", ENTROPY, *DISJOINT)
    )
    seen = watch_updates(trainer)
    out = trainer.run()
    return {"trainer": trainer, "tracker": tracker, "seen": seen, "out": out}


def test_trainer_on_disjoint_devices__state_and_sampler_stay_on_their_groups(disjoint_run):
    trainer, seen = disjoint_run["trainer"], disjoint_run["seen"]
    train_devices, sampler_devices = set(jax.devices()[:6]), set(jax.devices()[6:])
    assert disjoint_run["out"]["steps"] == 2 and [s["version"] for s in seen] == [1, 2]
    for s in seen:
        assert s["train_devices"] == train_devices, s["version"]
        assert s["sampler_devices"] == sampler_devices, s["version"]
        # The sampler got exactly this update's weights (a copy, bit for bit).
        assert s["same_weights"], s["version"]
    # The train state is really split over data=3 x fsdp=2; the sampler's weights over tensor=2.
    embedding = jax.tree.leaves(trainer.state.params)[0]
    assert embedding.sharding.spec[1] == "fsdp"
    assert jax.tree.leaves(sampler_weights(trainer))[0].sharding.mesh.shape["tensor"] == 2
    assert device_set(trainer.sampler._cache) == sampler_devices
    # The held-out evaluation samples on the sampler's devices too.
    assert device_set(trainer.evaluator.engine._state) == sampler_devices
    assert device_set(trainer.evaluator.engine._cache) == sampler_devices
    for step, metrics in disjoint_run["tracker"].steps().items():
        assert metrics["rollout/infra_failures"] == 0 and math.isfinite(metrics["loss/total"]), step


def test_trainer_on_mesh__checkpoint_resumes_onto_another_mesh(disjoint_run, out_dir, base_model):
    """The disjoint run's final checkpoint (data=3 x fsdp=2) restored onto fsdp=4 x tensor=2."""
    saved = disjoint_run["trainer"]
    overrides = tiny(out_dir, "disjoint", base_model, "steps=2", ENTROPY)
    overrides += ["mesh.train={fsdp: 4, tensor: 2}", "packing.rows_multiple=4"]
    resumed, _ = make_trainer(overrides)
    assert resumed.resumed and resumed.step == 2 and resumed.version == 2
    assert device_set(resumed.state) == set(jax.devices())
    embedding = jax.tree.leaves(resumed.state.params)[0]
    assert embedding.sharding.spec == PartitionSpec("tensor", "fsdp")
    for x, y in zip(leaves(saved.state), leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(x, y)
    # The restored weights reached the sampler, laid out on the new (colocated) mesh.
    for x, y in zip(
        leaves(trained_weights(resumed)), leaves(sampler_weights(resumed)), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    assert device_set(sampler_weights(resumed)) == set(jax.devices())


def test_trainer_on_disjoint_devices__async_overlaps_and_bounds_staleness(out_dir, base_model):
    skip_if_not_enough_devices(8)
    overrides = tiny(out_dir, "disjoint_async", base_model, "steps=3", ENTROPY, *DISJOINT)
    overrides += ["async.max_staleness=1", "async.staleness_policy=pause", "async.queue_size=2"]
    trainer, tracker = make_trainer(overrides, "quickstart_async")
    seen = watch_updates(trainer)
    # The first update waits until the producer has started sampling round 1, so the two
    # can overlap; (start, end) times of every round's sampling and every update show whether
    # they did (a lock or a device shared between them would serialise them).
    round_one = threading.Event()
    sampling: list[tuple[float, float]] = []
    updates: list[tuple[float, float]] = []
    collect, train_step = trainer._collect, trainer.train_step

    def timed_collect(step: int) -> Any:
        start = time.perf_counter()
        if step == 1:
            round_one.set()
        try:
            return collect(step)
        finally:
            sampling.append((start, time.perf_counter()))

    def held_train_step(state: Any, batch: Any) -> Any:
        if trainer.version == 0:
            assert round_one.wait(timeout=60), "the producer never started round 1"
        start = time.perf_counter()
        out = jax.block_until_ready(train_step(state, batch))
        updates.append((start, time.perf_counter()))
        return out

    trainer._collect, trainer.train_step = timed_collect, held_train_step
    trainer.run()

    steps = tracker.steps()
    assert sorted(steps) == [0, 1, 2] and trainer.version == 3
    overlap = sum(
        max(0.0, min(u_end, s_end) - max(u_start, s_start))
        for u_start, u_end in updates
        for s_start, s_end in sampling
    )
    assert overlap > 0, (updates, sampling)
    for step, metrics in steps.items():
        assert metrics["rollout/infra_failures"] == 0, step
        assert metrics["staleness/max"] <= 1 and metrics["staleness/dropped"] == 0, step
    # Round 1 was sampled (at least in part) by version 0 and trained on by version 1: stale
    # data went through the sharded recomputation of the old log-probs.
    assert steps[1]["staleness/hist_1"] > 0
    for s in seen:
        assert s["train_devices"] == set(jax.devices()[:6]), s["version"]
        assert s["sampler_devices"] == set(jax.devices()[6:]), s["version"]
        assert s["same_weights"], s["version"]


def test_make_sharded_logprob_fn__equals_single_device_and_keeps_rows_sharded():
    skip_if_not_enough_devices(8)
    graphdef, state = fresh_state()
    batch = batches()[0]
    expected = np.asarray(
        make_logprob_fn(graphdef, CFG.chunk_size)(state.params, state.rest, batch)
    )
    mesh = make_mesh(ShardingConfig(data=2, fsdp=2, tensor=2))
    placed = shard_train_state(state, mesh)
    fn = make_sharded_logprob_fn(graphdef, CFG.chunk_size, placed, mesh)
    logp = fn(placed.params, placed.rest, shard_batch(batch, mesh))
    assert logp.sharding.spec[0] == ("data", "fsdp")
    assert np.abs(expected).max() > 1.0  # real log-probs, not the masked zeros
    np.testing.assert_allclose(np.asarray(logp), expected, rtol=1e-5, atol=1e-6)


# --- bad meshes ---------------------------------------------------------------------------------


def test_make_run_meshes__splits_devices_in_order_and_counts_them():
    skip_if_not_enough_devices(8)
    devices = jax.devices()
    train, sampler = make_run_meshes(ShardingConfig(fsdp=3, tensor=2), ShardingConfig(data=2))
    assert list(train.devices.flat) == devices[:6] and list(sampler.devices.flat) == devices[6:]
    same, again = make_run_meshes(ShardingConfig(fsdp=4), None, devices[:4])
    assert same is again
    with pytest.raises(ValueError, match=r"= 6 \+ sampler .* = 1 devices in all, but there are 8"):
        make_run_meshes(ShardingConfig(fsdp=6), ShardingConfig())


@pytest.mark.parametrize(
    ("mesh", "message"),
    [
        (
            ["mesh.train.fsdp=4", "packing.rows_multiple=4"],
            "mesh: mesh needs train {'data': 1, 'fsdp': 4, 'tensor': 1} = 4 devices in all, "
            "but there are 8",
        ),
        (
            ["mesh.train.fsdp=8", "packing.rows_multiple=8", "mesh.sampler=disjoint"],
            "mesh: mesh needs train {'data': 1, 'fsdp': 8, 'tensor': 1} = 8 + sampler "
            "{'data': 1, 'fsdp': 1, 'tensor': 1} = 1 devices in all, but there are 8",
        ),
    ],
)
def test_trainer_on_mesh__device_count_mismatch_is_a_one_line_config_error(
    out_dir, base_model, mesh, message, capsys
):
    skip_if_not_enough_devices(8)
    if jax.device_count() != 8:
        pytest.skip("the messages count 8 devices")
    overrides = tiny(out_dir, "bad_mesh", base_model, *mesh)
    with pytest.raises(ConfigError) as info:
        make_trainer(overrides)
    assert str(info.value) == message
    assert not (out_dir / "bad_mesh").exists()  # refused before the run wrote anything
    # `mtrl train` reports it on one stderr line with exit status 2.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "quickstart", *overrides, "--no-progress"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"mtrl train: error: {message}\n"
