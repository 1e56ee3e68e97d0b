"""Sharding: a sharded train step equals the single-device one; layouts, rules, memory budget."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mtrl_jax import sharding
from mtrl_jax.losses import LossConfig
from mtrl_jax.models import Decoder, DecoderConfig
from mtrl_jax.packing import PackingConfig, pack_trajectories
from mtrl_jax.sharding import (
    DEFAULT_RULES,
    ShardingConfig,
    batch_sharding,
    estimate_memory,
    logical_to_spec,
    make_mesh,
    make_sharded_train_step,
    param_shardings,
    shard_batch,
    shard_train_state,
)
from mtrl_jax.train_step import OptimizerConfig, TrainConfig, init_train_state, make_train_step
from tests.conftest import skip_if_not_enough_devices
from tests.mtrl_jax.test_decoder_training import HF, trajectories

# A learning rate large enough that 3 AdamW steps move the params well beyond the tolerance.
CFG = TrainConfig(
    loss=LossConfig(policy_loss="cispo", is_correction="token", aggregation="seq-mean-token-mean"),
    optimizer=OptimizerConfig(learning_rate=1e-3),
    chunk_size=16,
)
STEPS = 3


def fresh_state():
    model = Decoder(DecoderConfig.from_hf(HF), rngs=nnx.Rngs(0))
    return init_train_state(model, CFG)


def batches():
    # rows_multiple=8: rows divisible by data*fsdp on every mesh below (padding rows are inert).
    pcfg = PackingConfig(seq_len=32, rows_multiple=8)
    out = []
    for seed in range(STEPS):
        packed, _ = pack_trajectories(trajectories(seed, count=12), pcfg)
        out.append(jax.tree.map(jnp.asarray, packed))
    return out


@pytest.fixture(scope="module")
def reference():
    """Params and metrics after STEPS single-device steps."""
    graphdef, state = fresh_state()
    step = make_train_step(graphdef, CFG)
    metrics = []
    for batch in batches():
        state, m = step(state, batch)
        metrics.append(jax.tree.map(np.asarray, m))
    return jax.tree.map(np.asarray, state.params), metrics


def spec_of(state, *path):
    leaf = state.params
    for key in path:
        leaf = leaf[key]
    return leaf.get_value().sharding.spec


@pytest.mark.multidevice
@pytest.mark.parametrize(
    ("mesh_cfg", "expected"),
    [
        (
            ShardingConfig(fsdp=8),
            {  # embed (32) over fsdp; vocab/heads/mlp replicated since tensor=1
                ("embed_tokens", "embedding"): P(None, "fsdp"),
                ("layers", "mlp", "down_proj", "kernel"): P(None, None, "fsdp"),
                ("layers", "self_attn", "q_proj", "kernel"): P(None, "fsdp", None, None),
            },
        ),
        (
            ShardingConfig(data=4, tensor=2),
            {
                ("embed_tokens", "embedding"): P("tensor", None),
                ("layers", "mlp", "gate_proj", "kernel"): P(None, None, "tensor"),
                ("layers", "self_attn", "k_proj", "kernel"): P(None, None, "tensor", None),
                ("layers", "self_attn", "o_proj", "kernel"): P(None, "tensor", None, None),
            },
        ),
        (
            ShardingConfig(fsdp=2, tensor=4),
            {
                ("embed_tokens", "embedding"): P("tensor", "fsdp"),
                ("layers", "mlp", "up_proj", "kernel"): P(None, "fsdp", "tensor"),
                ("layers", "self_attn", "q_proj", "kernel"): P(None, "fsdp", "tensor", None),
                # 2 KV heads do not divide over tensor=4: replicated on that dim.
                ("layers", "self_attn", "v_proj", "kernel"): P(None, "fsdp", None, None),
                ("norm", "scale"): P("fsdp"),
            },
        ),
    ],
    ids=["fsdp8", "data4-tp2", "fsdp2-tp4"],
)
def test_sharded_train_step__equals_single_device_and_shards_params(reference, mesh_cfg, expected):
    skip_if_not_enough_devices(8)
    ref_params, ref_metrics = reference
    mesh = make_mesh(mesh_cfg)
    graphdef, state = fresh_state()
    state = shard_train_state(state, mesh)
    step = make_sharded_train_step(graphdef, CFG, mesh)
    for i, batch in enumerate(batches()):
        state, metrics = step(state, shard_batch(batch, mesh))
        for name in ("loss/total", "optim/grad_norm"):
            np.testing.assert_allclose(metrics[name], ref_metrics[i][name], rtol=1e-5, atol=1e-7)

    assert int(state.step) == STEPS
    for path, spec in expected.items():
        assert spec_of(state, *path) == spec, path
    mu = state.opt_state[1][0].mu  # clip -> (adam, mask, schedule): moments mirror params
    assert mu["embed_tokens"]["embedding"].get_value().sharding.spec == spec_of(
        state, "embed_tokens", "embedding"
    )
    assert state.step.sharding.spec == P()
    moved = jax.tree.map(np.asarray, state.params)
    for got, want in zip(jax.tree.leaves(moved), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sharded_train_step__params_actually_move():
    """Guards the equality test against a vacuous pass: 3 steps change params by >> atol."""
    graphdef, state = fresh_state()
    before = jax.tree.map(np.asarray, state.params)
    step = make_train_step(graphdef, CFG)
    for batch in batches():
        state, _ = step(state, batch)
    change = max(
        float(np.max(np.abs(np.asarray(a) - b)))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before), strict=True)
    )
    assert change > 1e-3


@pytest.mark.multidevice
def test_make_mesh__axes_and_device_count_error():
    skip_if_not_enough_devices(8)
    mesh = make_mesh(ShardingConfig(data=2, fsdp=2, tensor=2))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="needs data\\*fsdp\\*tensor = 4 devices, got 8"):
        make_mesh(ShardingConfig(fsdp=4))
    one = make_mesh(ShardingConfig(), devices=jax.devices()[:1])
    assert one.devices.shape == (1, 1, 1)


def test_sharding_config__rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="'tensor' must be a positive int"):
        ShardingConfig(tensor=0)


@pytest.mark.multidevice
def test_batch_sharding__rows_over_data_and_fsdp():
    skip_if_not_enough_devices(8)
    mesh = make_mesh(ShardingConfig(data=2, fsdp=2, tensor=2))
    assert batch_sharding(mesh).spec == P(("data", "fsdp"))
    batch = batches()[0]
    placed = shard_batch(batch, mesh)
    assert placed.tokens.sharding.spec == P(("data", "fsdp"))
    shard_rows = {s.data.shape[0] for s in placed.tokens.addressable_shards}
    assert shard_rows == {batch.tokens.shape[0] // 4}
    odd = jax.tree.map(lambda x: x[:6], batch)
    with pytest.raises(ValueError, match="not divisible by data\\*fsdp = 4"):
        shard_batch(odd, mesh)


@pytest.mark.multidevice
def test_rules__missing_axis_unknown_mesh_axis_and_custom_rules():
    skip_if_not_enough_devices(8)
    mesh = make_mesh(ShardingConfig(fsdp=4, tensor=2))
    _, state = fresh_state()
    no_mlp = {k: v for k, v in DEFAULT_RULES.items() if k != "mlp"}
    with pytest.raises(ValueError, match="logical axis 'mlp' has no sharding rule"):
        param_shardings(state.params, mesh, no_mlp)
    with pytest.raises(ValueError, match="rule 'embed' -> 'model'"):
        param_shardings(state.params, mesh, {**DEFAULT_RULES, "embed": "model"})
    # Custom: shard the stacked layer axis over fsdp instead of embed.
    custom = {**DEFAULT_RULES, "embed": None, "layers": "fsdp"}
    with pytest.raises(ValueError, match="has no sharding rule"):
        logical_to_spec(("nope",), (4,), mesh, custom)
    shardings = param_shardings(state.params, mesh, custom)
    # 2 layers do not divide over fsdp=4: replicated on that dim.
    assert shardings["layers"]["mlp"]["up_proj"]["kernel"].get_value().spec == P(
        None, None, "tensor"
    )
    assert logical_to_spec(("layers", "embed"), (8, 32), mesh, custom) == P("fsdp", None)
    # A mesh axis is used once per array: the second dim asking for it is replicated.
    assert logical_to_spec(("heads", "mlp"), (4, 4), mesh, DEFAULT_RULES) == P("tensor", None)


def test_estimate_memory__llama3_8b_arithmetic():
    cfg = DecoderConfig(
        architecture="LlamaForCausalLM",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        dtype="bfloat16",
        param_dtype="float32",
    )
    # Per layer: q 4096*4096 + k,v 2*4096*1024 + o 4096*4096 + mlp 3*4096*14336 + 2 norms 2*4096.
    per_layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336 + 2 * 4096
    assert per_layer == 218_112_000
    n = 32 * per_layer + 2 * 128256 * 4096 + 4096  # + untied embed/lm_head + final norm
    assert n == sharding.count_params(cfg) == 8_030_261_248

    one = estimate_memory(cfg, {}, batch_tokens=8192)
    assert one["params"] == one["grads"] == n * 4
    assert one["optimizer"] == n * 8  # AdamW: two float32 moments
    # Full remat: block inputs L*t*D plus one layer's working set
    # 6D + (2N+2K)H + 3F = 24576 + 10240 + 43008 = 77824 values per token, all bf16 (2 bytes).
    assert one["activations"] == 8192 * (32 * 4096 + 77824) * 2
    assert one["kv_cache"] == 0
    assert one["total"] == n * 16 + one["activations"]
    assert 131e9 < one["total"] < 132e9  # beyond one 80 GB GPU

    fsdp = estimate_memory(cfg, {"fsdp": 8}, batch_tokens=8192)
    assert fsdp["params"] == n * 4 // 8 and fsdp["optimizer"] == n * 8 // 8
    assert fsdp["activations"] == 1024 * (32 * 4096 + 77824) * 2  # tokens split over 8
    assert 16e9 < fsdp["total"] < 17e9

    tp = estimate_memory(cfg, {"data": 4, "tensor": 2}, batch_tokens=8192, remat="none")
    assert tp["params"] == n * 4 // 2
    assert tp["activations"] == 2048 * 32 * (6 * 4096 + (10240 + 43008) // 2) * 2

    kv = estimate_memory(cfg, {"tensor": 8}, batch_tokens=0, kv_cache_tokens=32768)
    assert kv["kv_cache"] == 32768 * 32 * 2 * 8 * 128 * 2 // 8  # K and V, heads over tensor

    with pytest.raises(ValueError, match="unknown mesh axes"):
        estimate_memory(cfg, {"model": 2}, batch_tokens=1)
    with pytest.raises(ValueError, match="remat must be one of"):
        estimate_memory(cfg, {}, batch_tokens=1, remat="dots_saveable")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        estimate_memory(cfg, {}, batch_tokens=1, optimizer="lion")


def test_estimate_memory__docstring_example_holds():
    finder = doctest.DocTestFinder()
    (test,) = finder.find(sharding.estimate_memory, "estimate_memory", globs=vars(sharding))
    result = doctest.DocTestRunner().run(test)
    assert result.failed == 0 and result.attempted == 3
