"""Checkpoints: bit-exact round trip, retention, atomicity, corruption fallback, mesh change."""

import gc
import json
import math
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtrl_jax import checkpoint
from mtrl_jax.checkpoint import (
    MANIFEST,
    Checkpointer,
    CheckpointError,
    CorruptCheckpointWarning,
    key_from_json,
    key_to_json,
)
from mtrl_jax.models import Decoder, DecoderConfig
from mtrl_jax.sharding import ShardingConfig, make_mesh, param_shardings, shard_train_state
from mtrl_jax.train_step import OptimizerConfig, TrainConfig, init_train_state
from tests.conftest import skip_if_not_enough_devices
from tests.mtrl_jax.test_decoder_training import HF


def randomised(state):
    """Every leaf replaced by seeded random values of its own shape and dtype.

    A fresh state has zero Adam moments and zero counters, which a broken save/restore could
    reproduce by accident; random values in every leaf make the round trip checks meaningful.
    """
    rng = np.random.default_rng(0)

    def one(x):
        if jnp.issubdtype(x.dtype, jnp.integer):
            return jnp.asarray(rng.integers(1, 1000, x.shape), x.dtype)
        return jnp.asarray(rng.standard_normal(x.shape), x.dtype)

    return jax.tree.map(one, state)


@pytest.fixture(scope="module")
def state():
    """A tiny decoder's train state, randomised (shared: building it is the slow part)."""
    model = Decoder(DecoderConfig.from_hf(HF), rngs=nnx.Rngs(0))
    return randomised(init_train_state(model, TrainConfig())[1])


def abstract(tree):
    """``tree`` as shape/dtype structs without shardings (restore then uses one device)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def assert_bit_identical(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def meta_for(step):
    return {
        "policy_version": step,
        "task_iterator": {"epoch": 1, "position": 7 * step},
        "key": key_to_json(jax.random.key(step)),
        "rollout_seed": 1234,
        "history": [{"loss/total": 0.25}, {"loss/total": float("nan")}],
        "config": {"lr": 1e-3, "name": "tiny", "mesh": None, "remat": True},
    }


def same_json(a, b):
    # NaN != NaN, so compare the canonical texts ("NaN" on both sides).
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def biggest_file(step_dir):
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_checkpointer__round_trip_is_bit_identical(state, tmp_path):
    threads = set(threading.enumerate())
    ckpt = Checkpointer(tmp_path)
    path = ckpt.save(5, state, meta_for(5))
    assert path == tmp_path / "step_00000005" and (path / MANIFEST).is_file()

    restored, meta = ckpt.restore(5, abstract(state))
    assert_bit_identical(restored, state)
    assert int(restored.step) == int(state.step) and int(restored.skipped) == int(state.skipped)
    assert same_json(meta, meta_for(5)) and math.isnan(meta["history"][1]["loss/total"])
    key = key_from_json(meta["key"])
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(5)))
    assert jax.random.uniform(key) == jax.random.uniform(jax.random.key(5))

    restored, meta, step = ckpt.restore_latest(abstract(state))
    assert step == 5 and same_json(meta, meta_for(5))
    assert_bit_identical(restored, state)
    # Blocking: no Orbax thread is left running. Idle executor workers of an event loop Orbax
    # used exit once that executor is collected, which on a loaded machine can lag: collect and
    # wait a bounded time before judging.
    deadline = time.monotonic() + 10.0
    while not set(threading.enumerate()) <= threads and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert set(threading.enumerate()) <= threads


def test_checkpointer__keeps_newest_n_in_step_order(state, tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    assert ckpt.steps() == [] and ckpt.latest_step() is None
    assert ckpt.restore_latest(abstract(state)) is None
    for step in (30, 10):
        ckpt.save(step, state, {"s": step})
    assert ckpt.steps() == [10, 30] and ckpt.latest_step() == 30
    ckpt.save(70, state, {"s": 70})
    assert ckpt.steps() == [30, 70]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000030", "step_00000070"]


def test_checkpointer__save_is_atomic_and_clears_crashed_staging(state, tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, state, {"s": 1})

    def crash(path):
        raise OSError("disk full (simulated)")

    # Orbax has written the arrays, the manifest is not written yet: nothing at step_2.
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "_file_digest", crash)
        with pytest.raises(OSError, match="simulated"):
            ckpt.save(2, state, {"s": 2})
    assert not ckpt.step_dir(2).exists() and (tmp_path / "step_00000002.staging").is_dir()
    assert ckpt.steps() == [1]
    _, meta, step = ckpt.restore_latest(abstract(state))
    assert step == 1 and meta == {"s": 1}

    ckpt.save(2, state, {"s": 2})  # the next save of the step clears the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001", "step_00000002"]


def test_checkpointer__partial_or_corrupt_is_refused_and_previous_used(state, tmp_path):
    ckpt = Checkpointer(tmp_path, keep=5)
    for step in (1, 2, 3):
        ckpt.save(step, state, {"s": step})
    target = abstract(state)

    (ckpt.step_dir(3) / MANIFEST).unlink()  # a save that never committed
    assert ckpt.steps() == [1, 2]
    with pytest.raises(CheckpointError, match=r"step_00000003: no MANIFEST.json commit marker"):
        ckpt.restore(3, target)

    data = biggest_file(ckpt.step_dir(2))
    assert "ocdbt" in str(data)  # an array data file (Orbax reads a flipped byte back silently)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte, same size
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"step_00000002: file state/ocdbt.* fails its SHA"):
        ckpt.restore(2, target)

    with pytest.warns(CorruptCheckpointWarning) as record:
        restored, meta, step = ckpt.restore_latest(target)
    assert step == 1 and meta == {"s": 1}
    assert_bit_identical(restored, state)
    messages = [str(w.message) for w in record]
    assert "step 3" in messages[0] and "commit marker" in messages[0]
    assert "step 2" in messages[1] and "SHA-256" in messages[1]

    data = biggest_file(ckpt.step_dir(1))
    data.write_bytes(data.read_bytes()[:-10])  # truncated
    with pytest.raises(CheckpointError, match=r"step_00000001: file .* bytes.*truncated"):
        ckpt.restore(1, target)
    with (
        pytest.warns(CorruptCheckpointWarning),
        pytest.raises(CheckpointError, match="no usable checkpoint"),
    ):
        ckpt.restore_latest(target)


def test_checkpointer__sizes_only_mode_still_catches_truncation(state, tmp_path):
    ckpt = Checkpointer(tmp_path, checksums=False)
    ckpt.save(1, state, {})
    manifest = json.loads((ckpt.step_dir(1) / MANIFEST).read_text())
    assert all(rec["sha256"] is None for rec in manifest["files"].values())
    data = biggest_file(ckpt.step_dir(1))
    data.write_bytes(data.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.restore(1, abstract(state))

    # Same size, unreadable content: Orbax's own failure comes back as a CheckpointError.
    ckpt.save(2, state, {})
    tree_metadata = ckpt.step_dir(2) / "state" / "_METADATA"
    tree_metadata.write_bytes(b"x" * tree_metadata.stat().st_size)
    with pytest.raises(CheckpointError, match="step_00000002: Orbax could not read it"):
        ckpt.restore(2, abstract(state))


def test_checkpointer__mismatched_target_is_refused_naming_the_leaf(state, tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, state, {})
    target = abstract(state)

    def edit(name, new):
        def one(path, x):
            return new(x) if jax.tree_util.keystr(path) == name else x

        return jax.tree_util.tree_map_with_path(one, target)

    up = ".params['layers']['mlp']['up_proj']['kernel'].value"
    wider = edit(up, lambda x: jax.ShapeDtypeStruct((2, 32, 64), x.dtype))
    with pytest.raises(
        CheckpointError,
        match=r"step_00000001: leaf .*up_proj.* is float32\[2, 32, 48\] in the checkpoint but "
        r"float32\[2, 32, 64\] in the target",
    ):
        ckpt.restore(1, wider)
    embedding = ".params['embed_tokens']['embedding'].value"
    bf16 = edit(embedding, lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16))
    with pytest.raises(CheckpointError, match=r"embedding.* is float32\[64, 32\] .* bfloat16"):
        ckpt.restore(1, bf16)

    # No clipping in the optimizer chain: a different optax state structure.
    model = Decoder(DecoderConfig.from_hf(HF), rngs=nnx.Rngs(0))
    other = init_train_state(model, TrainConfig(optimizer=OptimizerConfig(max_grad_norm=None)))[1]
    with pytest.raises(CheckpointError, match="state structure differs from the target"):
        ckpt.restore(1, abstract(other))

    with pytest.raises(FileNotFoundError, match=r"step_00000009.*complete steps: \[1\]"):
        ckpt.restore(9, target)


@pytest.mark.multidevice
def test_checkpointer__restores_onto_a_different_mesh(state, tmp_path):
    skip_if_not_enough_devices(8)
    saved_mesh = make_mesh(ShardingConfig(fsdp=2, tensor=4))
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, shard_train_state(state, saved_mesh), {"mesh": "fsdp2-tp4"})

    new_mesh = make_mesh(ShardingConfig(fsdp=8))
    shardings = param_shardings(state, new_mesh)
    restored, meta = ckpt.restore(1, abstract(state), shardings=shardings)
    assert meta == {"mesh": "fsdp2-tp4"}
    assert_bit_identical(restored, state)
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding == want
    # Guard against a vacuous pass: the layout did change (vocab was over tensor=4).
    embedding = restored.params["embed_tokens"]["embedding"].get_value()
    assert embedding.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert param_shardings(state, saved_mesh).params["embed_tokens"]["embedding"].get_value().spec
    assert (
        param_shardings(state, saved_mesh).params["embed_tokens"]["embedding"].get_value().spec
        != embedding.sharding.spec
    )

    single, _ = ckpt.restore(1, abstract(state))  # no shardings anywhere: the first device
    assert_bit_identical(single, state)
    for leaf in jax.tree.leaves(single):
        assert leaf.sharding.device_set == {jax.devices()[0]}


def test_checkpointer__existing_step_and_bad_meta_are_clear_errors(state, tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, state, {"v": 1})
    with pytest.raises(FileExistsError, match=r"step_00000001 already exists; pass overwrite"):
        ckpt.save(1, state, {"v": 2})
    changed = state.replace(step=state.step + 1)
    ckpt.save(1, changed, {"v": 2}, overwrite=True)
    restored, meta = ckpt.restore(1, abstract(state))
    assert meta == {"v": 2} and int(restored.step) == int(state.step) + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]

    bad = [
        ({"key": (1, 2)}, r"meta\['key'\] is tuple"),
        ({"x": [np.float32(1.0)]}, r"meta\['x'\]\[0\] is float32"),
        ({"a": {3: "b"}}, r"meta\['a'\]: key 3 is int"),
        ({"arr": jnp.zeros(2)}, r"meta\['arr'\] is .*Array"),
    ]
    for meta, match in bad:
        with pytest.raises(TypeError, match=match):
            ckpt.save(2, state, meta)
    with pytest.raises(TypeError, match="meta must be a dict"):
        ckpt.save(2, state, [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        ckpt.save(-1, state, {})
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        Checkpointer(tmp_path, keep=0)
    assert ckpt.steps() == [1]  # nothing was written by the refused saves


def test_key_to_json__round_trip_and_rejects_raw_keys():
    keys = jax.random.split(jax.random.key(3), 4)
    back = key_from_json(json.loads(json.dumps(key_to_json(keys))))
    assert back.shape == (4,) and back.dtype == keys.dtype
    np.testing.assert_array_equal(jax.random.key_data(back), jax.random.key_data(keys))
    with pytest.raises(TypeError, match="expected a typed PRNG key"):
        key_to_json(jax.random.PRNGKey(0))


def test_checkpointer__latest_meta_reads_meta_only_and_skips_unreadable(state, tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=5)
    assert ckpt.latest_meta() is None
    for step in (1, 2):
        ckpt.save(step, state, meta_for(step))
    step, meta = ckpt.latest_meta()
    assert step == 2 and same_json(meta, meta_for(2))
    for file in (ckpt.step_dir(2) / "meta").rglob("*"):
        if file.is_file():
            file.write_text("{not json")
    with pytest.raises(CheckpointError, match="step_00000002: unreadable meta"):
        ckpt.read_meta(2)
    step, meta = ckpt.latest_meta()  # the newest readable one
    assert step == 1 and same_json(meta, meta_for(1))
    for file in (ckpt.step_dir(1) / "meta").rglob("*"):
        if file.is_file():
            file.write_text("{not json")
    with pytest.raises(CheckpointError, match="no checkpoint with readable meta"):
        ckpt.latest_meta()
