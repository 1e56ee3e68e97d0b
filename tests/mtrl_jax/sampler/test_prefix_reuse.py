"""Batched prefill and prefix reuse across sessions draw exactly what fresh prefills draw.

The reference is the same engine with ``prefix_reuse=False`` (every new session prefilled from
scratch), and a full (uncached) forward pass over prompt + samples. Draws are keyed by request
id and token index, so equal inputs must give equal tokens; log-probs agree to float rounding
(prefix KV computed in other chunks than the reference's).
"""

from __future__ import annotations

import asyncio
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx

from mtrl_jax.sampler import SamplerConfig, SampleResult, SamplingEngine
from mtrl_jax.sampler.engine import _plan_shares
from tests.mtrl_jax.models.helpers import VOCAB
from tests.mtrl_jax.sampler.conftest import BUCKETS, MAX_LEN, prompts
from tests.mtrl_jax.sampler.test_engine import _check_against_forward


def _group_prompts(seed: int) -> list[list[int]]:
    """An RL-like batch for 3 slots: a 30-token system prompt, task A twice, task B once.

    Tasks are 20 tokens that start with different ids, so the prefix tree is: 30 shared by
    all three, then 49 (= 30 + 19; the last token is always prefilled) shared by the A pair.
    """
    system, task_a, task_b = prompts((30, 20, 20), seed=seed)
    task_b[0] = (task_a[0] + 1) % VOCAB
    return [system + task_a, system + task_a, system + task_b]


def _assert_same(ours: list[SampleResult], ref: list[SampleResult]) -> None:
    assert [r.tokens for r in ours] == [r.tokens for r in ref]
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=1e-5)
        np.testing.assert_allclose(a.model_logprobs, b.model_logprobs, rtol=0, atol=1e-5)


def _perturbed(model: Any) -> Any:
    """The model's state with every weight scaled by 1.1 (same shapes: no recompilation)."""
    _, state = nnx.split(model)
    return jax.tree.map(lambda x: x * 1.1, state)


def test_plan_shares__prefix_tree_levels() -> None:
    # Two tasks x two samples after a 20-token system prompt; task prompts are 18 tokens.
    # Level 0: all four share 20 tokens. Level 1: each task pair shares 20 + 17 (the last
    # token of a prompt is never shared). A third task of one sample shares nothing more.
    system = [5] * 20
    a, b, c = [1] * 18, [2] * 18, [3] * 18
    ps = [system + a, system + a, system + b, system + b, system + c]
    levels = _plan_shares([np.array(p[:-1]) for p in ps], min_len=16)
    assert [sorted((sorted(m), n) for m, n in level) for level in levels] == [
        [([0, 1, 2, 3, 4], 20)],
        [([0, 1], 37), ([2, 3], 37)],
    ]
    # Shared segments shorter than min_len are not worth a copy: 20 + 17 < 40.
    assert _plan_shares([np.array(p[:-1]) for p in ps], min_len=40) == []
    assert _plan_shares([np.array([1, 2, 3])], min_len=1) == []  # nobody to share with


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prefix_reuse__group_equals_fresh_prefill_and_full_forward(
    model: Any, make_engine: Any, temperature: float
) -> None:
    ps = _group_prompts(seed=1)
    reuse = make_engine(seed=4, temperature=temperature)
    fresh = make_engine(seed=4, temperature=temperature, prefix_reuse=False)
    # Round 1: all three sessions in one admit (3 slots): the tree is prefilled once per level.
    ours = reuse.generate_batch(ps, max_new_tokens=10)
    ref = fresh.generate_batch(ps, max_new_tokens=10)
    _assert_same(ours, ref)
    _check_against_forward(model, ps, ours)
    # 30 (system, once) + 19 (task A, once) + 1 + 1 (each A sample's last token) + 20 (task B).
    assert (reuse.stats.prefilled_tokens, reuse.stats.reused_tokens) == (71, 2 * 30 + 19)
    assert reuse.stats.copy_calls == 2  # one per level
    assert (fresh.stats.prefilled_tokens, fresh.stats.reused_tokens) == (150, 0)
    # Round 2, same prompts: each free slot still holds a whole prompt but its last token, so
    # the sessions take those slots and prefill one token each, with nothing to copy.
    ours = reuse.generate_batch(ps, max_new_tokens=10)
    ref = fresh.generate_batch(ps, max_new_tokens=10)
    _assert_same(ours, ref)
    assert (reuse.stats.prefilled_tokens, reuse.stats.reused_tokens) == (71 + 3, 79 + 3 * 49)
    assert reuse.stats.copy_calls == 2


def test_prefix_reuse__more_sessions_than_slots_prefill_the_prefix_once(make_engine: Any) -> None:
    # 6 sessions on 3 slots, every prompt = a shared 24-token prefix + 6 own tokens: the first
    # three share the prefix in their admit; later ones find it in the freed slots.
    (shared,) = prompts((24,), seed=2)
    tails = [[i, *t] for i, t in enumerate(prompts((5,) * 6, seed=3))]  # distinct first ids
    ps = [shared + t for t in tails]
    reuse = make_engine(seed=5, temperature=1.0)
    ours = reuse.generate_batch(ps, max_new_tokens=8)
    ref = make_engine(seed=5, temperature=1.0, prefix_reuse=False).generate_batch(
        ps, max_new_tokens=8
    )
    _assert_same(ours, ref)
    assert reuse.stats.prefilled_tokens + reuse.stats.reused_tokens == 6 * 30
    assert reuse.stats.prefilled_tokens == 24 + 6 * 6  # the prefix exactly once


def test_prefix_reuse__set_params_never_reuses_stale_kv(model: Any, make_engine: Any) -> None:
    ps = _group_prompts(seed=6)
    new_state = _perturbed(model)

    def second_round(engine: SamplingEngine) -> list[SampleResult]:
        engine.generate_batch(ps, max_new_tokens=6)  # fills every slot with these prompts
        # Same version number on purpose: reuse is keyed by the swap, not by the number.
        engine.set_params(new_state, version=0)
        return engine.generate_batch(ps, max_new_tokens=6)

    reuse = make_engine(seed=7, temperature=1.0)
    ours = second_round(reuse)
    ref = make_engine(seed=7, temperature=1.0, prefix_reuse=False)
    _assert_same(ours, second_round(ref))
    # The second round shared the tree afresh (prefilled under the new weights): 71 again.
    assert reuse.stats.prefilled_tokens == 2 * 71
    # Sensitivity: the same engine made to believe its stale rows are current (what a missing
    # epoch check would do) reuses them and draws measurably different log-probs.
    stale = make_engine(seed=7, temperature=1.0)
    stale.generate_batch(ps, max_new_tokens=6)
    stale.set_params(new_state, version=0)
    stale._held_epoch[:] = stale._epoch
    wrong = stale.generate_batch(ps, max_new_tokens=6)
    gap = max(
        np.abs(np.subtract(a.model_logprobs[:1], b.model_logprobs[:1])).max()
        for a, b in zip(wrong, ours, strict=True)
    )
    assert gap > 1e-3


def test_prefix_reuse__new_session_copies_a_running_sessions_context(make_engine: Any) -> None:
    # Session "a" runs two turns; between them "b" starts with a's whole context plus new
    # tokens, so b copies a's (busy) row. Neither may disturb the other.
    p1, n2, n3 = prompts((20, 4, 5), seed=8)

    async def run(engine: SamplingEngine) -> list[SampleResult]:
        t1 = await engine.generate("a", p1, max_new_tokens=6, request_id=1)
        b = engine.generate("b", p1 + t1.tokens + n3, max_new_tokens=8, request_id=2)
        t2 = engine.generate("a", n2, max_new_tokens=8, request_id=3)
        return [t1, *await asyncio.gather(b, t2)]

    reuse = make_engine(seed=9, temperature=1.0)
    ours = asyncio.run(run(reuse))
    ref = make_engine(seed=9, temperature=1.0, prefix_reuse=False)
    _assert_same(ours, asyncio.run(run(ref)))
    assert reuse.session_slot("a") != reuse.session_slot("b")
    assert reuse.stats.reused_tokens == 20 + 6 - 1  # a's row held all but its last sample
    assert reuse.context("b") == p1 + ours[0].tokens + n3 + ours[1].tokens


def test_batched_prefill__equals_one_request_at_a_time(make_engine: Any) -> None:
    ps = prompts((5, 11, 40), seed=10)  # buckets 8, 32, and 32 + 8 (chunked)
    together_engine = make_engine(seed=2, temperature=1.0)
    together = together_engine.generate_batch(ps, max_new_tokens=6)
    alone_engine = make_engine(seed=2, temperature=1.0)

    async def alone() -> list[SampleResult]:
        out = []
        for i, p in enumerate(ps):  # same request ids as generate_batch's counter: 0, 1, 2
            out.append(await alone_engine.generate(f"s{i}", p, max_new_tokens=6, request_id=i))
            alone_engine.end_session(f"s{i}")
        return out

    _assert_same(together, asyncio.run(alone()))
    # One call per chunk round and bucket: (5 -> 8; 11, 40 -> 32), then 40's tail -> 8.
    assert together_engine.stats.prefill_calls == 3
    assert alone_engine.stats.prefill_calls == 4
    # At most one row per call (the CPU default): the same draws, one call per row and chunk.
    one_row = make_engine(seed=2, temperature=1.0, prefill_rows=1)
    _assert_same(one_row.generate_batch(ps, max_new_tokens=6), together)
    assert one_row.stats.prefill_calls == 4


def test_batched_prefill__padding_rows_write_nowhere(model: Any) -> None:
    # 4 slots: 3 rows are padded to 4, and the padding row reads (clamped) slot 3, which holds
    # a live session. Its next turn must equal a fresh prefill of the same context.
    engine = SamplingEngine(
        model,
        num_slots=4,
        max_len=MAX_LEN,
        config=SamplerConfig(temperature=0.0, prefill_buckets=BUCKETS),
        key=jax.random.key(0),
        prefix_reuse=False,
        prefill_rows=4,
    )
    ps = prompts((4, 4, 4, 6, 5, 6, 7, 3), seed=11)

    async def run() -> tuple[SampleResult, SampleResult]:
        await asyncio.gather(*(engine.generate(f"x{i}", ps[i], max_new_tokens=2) for i in range(3)))
        first = await engine.generate("keep", ps[3], max_new_tokens=5)
        assert engine.session_slot("keep") == 3
        for i in range(3):
            engine.end_session(f"x{i}")
        calls = engine.stats.prefill_calls
        ys = [engine.generate(f"y{i}", ps[4 + i], max_new_tokens=2) for i in range(3)]
        await asyncio.gather(*ys)
        assert engine.stats.prefill_calls == calls + 1  # 3 rows (+ 1 padding row) in one call
        second = await engine.generate("keep", ps[7], max_new_tokens=6, request_id=100)
        engine.end_session("y0")
        fresh = await engine.generate(
            "z", [*ps[3], *first.tokens, *ps[7]], max_new_tokens=6, request_id=100
        )
        return second, fresh

    second, fresh = asyncio.run(run())
    _assert_same([second], [fresh])


def test_batched_prefill__a_failed_call_fails_every_admitted_caller(make_engine: Any) -> None:
    engine = make_engine(temperature=0.0)
    ps = prompts((5, 6, 7), seed=12)

    def lost(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("device lost")

    engine._prefill_call = lost  # the three requests are admitted together, then the call fails

    async def run() -> list[Any]:
        calls = [engine.generate(f"s{i}", p, max_new_tokens=3) for i, p in enumerate(ps)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)

    assert [str(r) for r in asyncio.run(run())] == ["device lost"] * 3  # none left hanging


def test_admit__a_prompt_longer_than_the_context_finishes_without_a_slot(make_engine: Any) -> None:
    # A prompt past max_len is answered "context_full" before any slot or prefix lookup (the
    # lookup compared it with rows narrower than the prompt, raised, and left the caller hanging).
    engine = make_engine(temperature=0.0)
    (short,) = prompts((6,), seed=13)
    too_long = [1] * (MAX_LEN + 50)

    async def run() -> list[Any]:
        calls = [engine.generate("long", too_long), engine.generate("short", short)]
        return await asyncio.wait_for(asyncio.gather(*calls), 30)

    long_result, short_result = asyncio.run(run())
    assert long_result.stop_reason == "context_full" and long_result.tokens == []
    assert engine.session_slot("long") is None and short_result.tokens


def test_admit__an_error_before_prefill_fails_the_caller(make_engine: Any) -> None:
    engine = make_engine(temperature=0.0)

    def broken(prompt: Any) -> int:
        raise RuntimeError("slot bookkeeping failed")

    engine._take_free_slot = broken

    async def run() -> list[Any]:
        calls = [engine.generate(f"s{i}", p) for i, p in enumerate(prompts((5, 6), seed=14))]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)

    assert [str(r) for r in asyncio.run(run())] == ["slot bookkeeping failed"] * 2
