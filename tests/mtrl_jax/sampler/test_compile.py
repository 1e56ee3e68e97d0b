"""Compile-once checks: prefill compiles once per bucket, decoding once per engine shape."""

from __future__ import annotations

import asyncio
from typing import Any

import jax
from flax import nnx

from mtrl_jax.sampler import SamplerConfig, SamplingEngine, decode_steps, prefill_chunk
from tests.mtrl_jax.sampler.conftest import prompts


def test_engine__compiled_programs_bounded_by_buckets(model: Any) -> None:
    # Shapes used by no other test (2 slots, max_len 56, buckets 4/16), so every program this
    # engine needs is compiled here and counted exactly.
    engine = SamplingEngine(
        model,
        num_slots=2,
        max_len=56,
        config=SamplerConfig(temperature=0.0, prefill_buckets=(4, 16)),
        key=jax.random.key(0),
    )
    before = prefill_chunk._cache_size(), decode_steps._cache_size()
    lengths = tuple(range(1, 41, 3))  # 1..40: both buckets, chunked prefill past 16
    engine.generate_batch(prompts(lengths), max_new_tokens=5)
    # New weights of the same shapes, and multi-turn sessions, reuse the same programs.
    _, state = nnx.split(model)
    engine.set_params(jax.tree.map(lambda x: x * 1.01, state), version=1)

    async def turns() -> None:
        for n in (3, 7, 18):
            result = await engine.generate("s", prompts((n,), seed=n)[0], max_new_tokens=4)
            assert result.policy_version == 1

    asyncio.run(turns())
    after = prefill_chunk._cache_size(), decode_steps._cache_size()
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)
