"""Compile-once checks: prefill once per (bucket, row bucket), decode once per live-slot bucket."""

from __future__ import annotations

import asyncio
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx

from mtrl_jax.sampler import (
    SamplerConfig,
    SamplingEngine,
    copy_rows,
    decode_steps,
    prefill_chunk,
    row_bucket,
)
from tests.mtrl_jax.sampler.conftest import prompts


def _counts() -> tuple[int, int, int]:
    return prefill_chunk._cache_size(), copy_rows._cache_size(), decode_steps._cache_size()


def test_engine__compiled_programs_bounded_by_buckets(model: Any) -> None:
    # Shapes used by no other test (2 slots, max_len 56, buckets 4/16), so every program this
    # engine needs is compiled here and counted exactly.
    engine = SamplingEngine(
        model,
        num_slots=2,
        max_len=56,
        config=SamplerConfig(temperature=0.0, prefill_buckets=(4, 16), min_live_slots=16),
        key=jax.random.key(0),
        prefill_rows=2,
    )
    assert {row_bucket(n, 2) for n in (1, 2)} == {1, 2}
    assert engine.live_slot_buckets == (16, 32, 48, 64, 73)  # the cache: 56 + 16 + 1 slots
    before = _counts()
    lengths = tuple(range(1, 41, 3))  # 1..40: both buckets, chunked prefill past 16
    engine.generate_batch(prompts(lengths), max_new_tokens=5)
    # Rows of 1 and 2 (slots refilled one at a time, and two at a time) in both buckets;
    # decoding up to slot 44 in the 16, 32 and 48 live-slot buckets.
    assert np.subtract(_counts(), before).tolist() == [4, 0, 3]
    # Sessions sharing a 20-token prefix: copies of one row (the group) and ...
    (shared,) = prompts((20,), seed=1)
    tails = prompts((3, 3, 3, 3), seed=2)
    engine.generate_batch([shared + t for t in tails], max_new_tokens=3)
    # ... new weights of the same shapes, multi-turn sessions and the same workloads again
    # reuse the same programs: 2 bucketed prefill sizes x 2 row buckets, copies of 1 or 2 rows.
    mid = _counts()
    assert 1 <= mid[1] - before[1] <= 2
    _, state = nnx.split(model)
    engine.set_params(jax.tree.map(lambda x: x * 1.01, state), version=1)

    async def turns() -> None:
        for n in (3, 7, 18):
            result = await engine.generate("s", prompts((n,), seed=n)[0], max_new_tokens=4)
            assert result.policy_version == 1

    asyncio.run(turns())
    engine.generate_batch(prompts(lengths), max_new_tokens=5)
    engine.generate_batch([shared + t for t in tails], max_new_tokens=3)
    assert _counts() == mid


def test_live_slot_buckets__multiples_end_at_the_cache_and_stay_bounded() -> None:
    from mtrl_jax.sampler.decode import MAX_LIVE_BUCKETS, live_slot_buckets

    assert live_slot_buckets(600, 128) == (128, 256, 384, 512, 600)
    assert live_slot_buckets(512, 128) == (128, 256, 384, 512)  # no bucket repeated
    assert live_slot_buckets(100, 128) == (100,)
    assert live_slot_buckets(600, 0) == (600,)
    for cache_len in (1, 97, 1224, 8192, 32768 + 7):
        buckets = live_slot_buckets(cache_len, 128)
        assert buckets[-1] == cache_len and list(buckets) == sorted(set(buckets))
        assert len(buckets) <= MAX_LIVE_BUCKETS + 1
        assert all(b % 128 == 0 for b in buckets[:-1])
        spacing = buckets[0]
        assert all(b - a <= spacing for a, b in zip(buckets, buckets[1:], strict=False))
    with pytest.raises(ValueError, match="smallest >= 0"):
        live_slot_buckets(100, -1)
    with pytest.raises(ValueError, match="min_live_slots must be >= 0"):
        SamplerConfig(min_live_slots=-8)
