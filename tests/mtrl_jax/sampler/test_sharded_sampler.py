"""A sampling engine placed on a mesh draws exactly what the single-device engine draws.

The reference is the same engine left on one device; the sharded engine runs the same jitted
programs, partitioned by XLA from the input layouts :func:`shard_sampler` sets.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mtrl_jax.models.attention import KVCache
from mtrl_jax.sampler import SamplerConfig, SamplingEngine
from mtrl_jax.sharding import (
    DEFAULT_RULES,
    ShardingConfig,
    kv_cache_sharding,
    make_mesh,
    shard_sampler,
)
from tests.conftest import skip_if_not_enough_devices
from tests.mtrl_jax.sampler.conftest import BUCKETS, MAX_LEN, prompts

# 4 slots: divisible by data*fsdp on both meshes below. 6 prompts > 4 slots, so slots are
# refilled mid-batch (prefill into a row of a sharded cache while other rows decode).
SLOTS = 4
LENGTHS = (5, 11, 20, 40, 3, 9)


def engine(model: Any, *, seed: int = 0, steps: int = 1, **config: Any) -> SamplingEngine:
    return SamplingEngine(
        model,
        num_slots=SLOTS,
        max_len=MAX_LEN,
        config=SamplerConfig(prefill_buckets=BUCKETS, **config),
        key=jax.random.key(seed),
        decode_steps_per_call=steps,
    )


def run_both(model: Any, mesh_cfg: ShardingConfig, **kwargs: Any) -> tuple[Any, Any, Any]:
    ps = prompts(LENGTHS, seed=3)
    plain = engine(model, **kwargs).generate_batch(ps, max_new_tokens=12)
    sharded_engine = engine(model, **kwargs)
    shard_sampler(sharded_engine, make_mesh(mesh_cfg))
    sharded = sharded_engine.generate_batch(ps, max_new_tokens=12)
    return plain, sharded, sharded_engine


def assert_layout(x: jax.Array, *spec: Any) -> None:
    """``x`` is laid out as ``P(*spec)`` (XLA drops trailing ``None``s from output specs)."""
    want = NamedSharding(x.sharding.mesh, P(*spec))
    assert x.sharding.is_equivalent_to(want, x.ndim), (x.sharding.spec, want.spec)


def assert_same(plain: Any, sharded: Any) -> None:
    assert len(plain) == len(sharded) == len(LENGTHS)
    for a, b in zip(plain, sharded, strict=True):
        assert b.tokens == a.tokens
        assert b.stop_reason == a.stop_reason
        np.testing.assert_allclose(b.logprobs, a.logprobs, rtol=0, atol=1e-5)
        np.testing.assert_allclose(b.model_logprobs, a.model_logprobs, rtol=0, atol=1e-5)


@pytest.mark.multidevice
def test_shard_sampler__greedy_tokens_equal_unsharded_on_dp_fsdp_tp(model: Any) -> None:
    skip_if_not_enough_devices(8)
    plain, sharded, eng = run_both(model, ShardingConfig(data=2, fsdp=2, tensor=2), temperature=0.0)
    assert_same(plain, sharded)
    # The layout survives the donated prefill/decode calls (no silent fall back to one device).
    assert_layout(eng._cache.k, None, ("data", "fsdp"), None, "tensor", None)
    assert_layout(eng._cache.index, ("data", "fsdp"))
    q = eng._state["layers"]["self_attn"]["q_proj"]["kernel"].get_value()
    assert_layout(q, None, "fsdp", "tensor", None)
    assert {s.data.shape for s in q.addressable_shards} == {(2, 32, 2, 24)}


@pytest.mark.multidevice
def test_shard_sampler__temperature_tokens_and_logprobs_equal_unsharded(model: Any) -> None:
    skip_if_not_enough_devices(8)
    plain, sharded, eng = run_both(
        model, ShardingConfig(fsdp=4, tensor=2), temperature=0.8, top_p=0.95, steps=3
    )
    assert_same(plain, sharded)
    # Not vacuous: sampled, not argmax, and the filter changed q away from the model's p.
    assert any(lp != 0.0 for r in sharded for lp in r.logprobs)
    assert not np.allclose(sharded[0].logprobs, sharded[0].model_logprobs, atol=1e-3)
    assert_layout(eng._cache.k, None, "fsdp", None, "tensor", None)


@pytest.mark.multidevice
def test_kv_cache_sharding__slots_on_batch_axes_heads_by_rule() -> None:
    skip_if_not_enough_devices(8)

    def specs(slots: int, kv_heads: int, mesh_cfg: ShardingConfig, rules: Any = None) -> Any:
        shape = (2, slots, 16, kv_heads, 8)
        cache = KVCache(
            k=jax.ShapeDtypeStruct(shape, np.float32),
            v=jax.ShapeDtypeStruct(shape, np.float32),
            segment_ids=jax.ShapeDtypeStruct((slots, 16), np.int32),
            index=jax.ShapeDtypeStruct((slots,), np.int32),
        )
        out = kv_cache_sharding(cache, make_mesh(mesh_cfg), rules)
        assert out.v.spec == out.k.spec
        assert out.segment_ids.spec == P(out.k.spec[1], None)
        assert out.index.spec == P(out.k.spec[1])
        return out.k.spec

    dp_fsdp_tp = ShardingConfig(data=2, fsdp=2, tensor=2)
    assert specs(8, 2, dp_fsdp_tp) == P(None, ("data", "fsdp"), None, "tensor", None)
    # 6 slots: not divisible by 4, but by data=2 (first of two equal-size axes).
    assert specs(6, 2, dp_fsdp_tp) == P(None, "data", None, "tensor", None)
    # 3 slots, and 1 KV head on tensor=2: both replicated.
    assert specs(3, 1, dp_fsdp_tp) == P(None, None, None, None, None)
    # The larger batch axis wins when only one of them divides.
    assert specs(4, 4, ShardingConfig(data=2, fsdp=4)) == P(None, "fsdp", None, None, None)
    # A rule putting layers on fsdp leaves only data for the slots.
    custom = {**DEFAULT_RULES, "layers": "fsdp"}
    assert specs(8, 2, dp_fsdp_tp, custom) == P("fsdp", "data", None, "tensor", None)
