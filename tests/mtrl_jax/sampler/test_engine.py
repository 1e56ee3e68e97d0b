"""The sampling engine against references: full forward, transformers, fresh sessions.

Expected values come from a full (uncached) forward pass over prompt + sampled tokens: the
token sampled after position ``t`` must be ``argmax logits[t]`` (greedy) and its model
log-prob ``log_softmax(logits[t])[token]``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jax
import numpy as np
import pytest

from mtrl_jax.sampler import SamplerConfig, SampleResult, SamplingEngine
from tests.mtrl_jax.models.helpers import Checkpoint, run_forward
from tests.mtrl_jax.sampler.conftest import PairTokenizer, prompts


def _full_forward_logp(model: Any, rows: list[list[int]]) -> list[np.ndarray]:
    """log-softmax ``[T, V]`` of each row from one padded full forward."""
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    segments = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        segments[i, : len(row)] = 1
    logits = run_forward(model, tokens, segment_ids=segments).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    return [logp[i, : len(row)] for i, row in enumerate(rows)]


def _check_against_forward(model: Any, ps: list[list[int]], results: list[SampleResult]) -> None:
    rows = [p + r.tokens for p, r in zip(ps, results, strict=True)]
    for p, r, logp in zip(ps, results, _full_forward_logp(model, rows), strict=True):
        at = logp[len(p) - 1 : len(p) - 1 + len(r.tokens)]  # [n, V] predicting each sample
        np.testing.assert_allclose(
            r.model_logprobs, at[np.arange(len(r.tokens)), r.tokens], atol=1e-5
        )


def test_engine__greedy_equals_full_forward_argmax(model: Any, make_engine: Any) -> None:
    ps = prompts((5, 11, 20, 40))  # buckets 8, 32, 32 and a chunked 32 + 8
    results = make_engine(temperature=0.0).generate_batch(ps, max_new_tokens=12)
    rows = [p + r.tokens for p, r in zip(ps, results, strict=True)]
    for p, r, logp in zip(ps, results, _full_forward_logp(model, rows), strict=True):
        assert len(r.tokens) == 12 and r.stop_reason == "max_new_tokens"
        at = logp[len(p) - 1 : len(p) + 11]
        assert r.tokens == at.argmax(-1).tolist()
        assert r.logprobs == [0.0] * 12
    _check_against_forward(model, ps, results)


def test_engine__multi_step_decode_equals_single_step(make_engine: Any) -> None:
    ps = prompts((5, 11, 20, 7), seed=1)
    one = make_engine(temperature=0.0).generate_batch(ps, max_new_tokens=10)
    four = make_engine(temperature=0.0, steps=4).generate_batch(ps, max_new_tokens=10)
    assert [r.tokens for r in one] == [r.tokens for r in four]


def test_engine__live_slot_buckets_equal_whole_cache_attention(make_engine: Any) -> None:
    # Long enough to cross the 16 ... 64 slot buckets; sampled, so a wrong cut would show
    # in the draws and not only in argmaxes.
    ps = prompts((5, 30, 50), seed=4)
    whole = make_engine(seed=3, min_live_slots=0)
    assert whole.live_slot_buckets == (whole._cache.max_len,)
    cut = make_engine(seed=3)
    assert cut.live_slot_buckets == (16, 32, 48, 64, 80, 96, 97)
    a = whole.generate_batch(ps, max_new_tokens=14)
    b = cut.generate_batch(ps, max_new_tokens=14)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    for x, y in zip(a, b, strict=True):
        # Same terms, summed over fewer (exactly zero) masked ones: float32 rounding only.
        np.testing.assert_allclose(x.model_logprobs, y.model_logprobs, rtol=1e-6, atol=1e-6)


def test_engine__sampled_logprobs_match_full_forward(model: Any, make_engine: Any) -> None:
    ps = prompts((6, 13, 9), seed=2)
    plain = make_engine(temperature=1.0).generate_batch(ps, max_new_tokens=10)
    _check_against_forward(model, ps, plain)
    for r in plain:  # no temperature, no filter: q == p
        np.testing.assert_allclose(r.logprobs, r.model_logprobs, atol=1e-5)
    # Filtered: recompute q from the full-forward logits (temperature, top-k 5, top-p 0.9).
    filtered = make_engine(temperature=0.7, top_k=5, top_p=0.9).generate_batch(
        ps, max_new_tokens=10
    )
    _check_against_forward(model, ps, filtered)
    rows = [p + r.tokens for p, r in zip(ps, filtered, strict=True)]
    for p, r, logp in zip(ps, filtered, _full_forward_logp(model, rows), strict=True):
        for j, token in enumerate(r.tokens):
            scaled = logp[len(p) - 1 + j] / 0.7
            order = np.argsort(-scaled)[:5]
            probs = np.exp(scaled[order] - scaled[order].max())
            probs /= np.exp(scaled - scaled.max()).sum()
            keep = order[(np.cumsum(probs) - probs) < 0.9]
            assert token in keep
            q = scaled[keep] - np.log(np.exp(scaled[keep]).sum())
            np.testing.assert_allclose(r.logprobs[j], q[list(keep).index(token)], atol=1e-5)


def test_engine__greedy_equals_transformers_generate(
    checkpoint: Checkpoint, make_engine: Any
) -> None:
    import torch
    from transformers import GenerationConfig

    ps = prompts((9, 9, 9), seed=3)
    ours = make_engine(temperature=0.0).generate_batch(ps, max_new_tokens=16)
    gen = GenerationConfig(do_sample=False, max_new_tokens=16, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        ref = checkpoint.torch_model.generate(torch.tensor(ps), generation_config=gen)
    assert [r.tokens for r in ours] == ref[:, 9:].tolist()


def test_engine__stop_token_and_stop_string_cut_exactly(make_engine: Any) -> None:
    # Sampled, not greedy (random tiny models repeat themselves under argmax); engines made
    # with the same seed replay the same noise, so each run continues the reference exactly.
    (p,) = prompts((7,), seed=4)
    (ref,) = make_engine(seed=3).generate_batch([p], max_new_tokens=20)
    stop_id = ref.tokens[5]
    (stopped,) = make_engine(seed=3).generate_batch(
        [p], max_new_tokens=20, stop_token_ids=[stop_id]
    )
    assert stopped.tokens == ref.tokens[: ref.tokens.index(stop_id) + 1]
    assert stopped.stop_reason == "stop_token"
    # A stop string from the 2nd letter of token 3 to the 1st letter of token 5: token 5
    # completes it and is kept whole, nothing after it.
    text = PairTokenizer().decode(ref.tokens)
    stop = text[7:11]
    assert text.find(stop) == 7, "pick a stop string that does not occur earlier"
    (cut,) = make_engine(seed=3).generate_batch([p], max_new_tokens=20, stop_strings=[stop])
    assert cut.tokens == ref.tokens[:6] and cut.stop_reason == "stop_string"
    assert cut.model_logprobs == ref.model_logprobs[:6]


def test_engine__prefix_reuse_equals_fresh_prefill(make_engine: Any) -> None:
    engine = make_engine(temperature=0.0)
    p1, n2 = prompts((10, 5), seed=5)

    async def run() -> tuple[SampleResult, SampleResult, SampleResult]:
        t1 = await engine.generate("a", p1, max_new_tokens=6)
        t2 = await engine.generate("a", n2, max_new_tokens=8)
        fresh = await engine.generate("b", p1 + t1.tokens + n2, max_new_tokens=8)
        return t1, t2, fresh

    t1, t2, fresh = asyncio.run(run())
    assert engine.context("a") == p1 + t1.tokens + n2 + t2.tokens
    assert t2.tokens == fresh.tokens
    np.testing.assert_allclose(t2.model_logprobs, fresh.model_logprobs, atol=1e-5)
    slot = engine.session_slot("a")
    engine.end_session("a")
    engine.end_session("b")
    assert engine.session_slot("a") is None and slot is not None


def test_engine__short_request_finishes_and_frees_slot_while_long_runs(make_engine: Any) -> None:
    engine = make_engine(temperature=0.0)  # 3 slots, 4 sessions
    ps = prompts((4, 4, 4, 4), seed=6)
    slots: dict[str, int | None] = {}

    async def one(sid: str, prompt: list[int], n: int) -> SampleResult:
        result = await engine.generate(sid, prompt, max_new_tokens=n)
        slots[sid] = engine.session_slot(sid)
        engine.end_session(sid)
        return result

    async def run() -> None:
        long = asyncio.create_task(one("long", ps[0], 50))
        shorts = [asyncio.create_task(one(f"s{i}", ps[i], 3)) for i in (1, 2)]
        await asyncio.sleep(0)
        assert engine.session_slot("s3") is None
        waiting = asyncio.create_task(one("s3", ps[3], 3))
        await asyncio.gather(*shorts, waiting)
        assert not long.done()  # three short requests went through while it ran
        assert slots["s3"] in (slots["s1"], slots["s2"])
        assert len((await long).tokens) == 50

    asyncio.run(run())


def test_engine__calls_get_different_noise_and_replay_with_same_key(make_engine: Any) -> None:
    ps = prompts((6, 6), seed=7)
    engine = make_engine(seed=11, temperature=1.0)
    first = [r.tokens for r in engine.generate_batch(ps, max_new_tokens=12)]
    second = [r.tokens for r in engine.generate_batch(ps, max_new_tokens=12)]
    assert first[0] != second[0] and first[1] != second[1]
    replay = make_engine(seed=11, temperature=1.0)
    assert [r.tokens for r in replay.generate_batch(ps, max_new_tokens=12)] == first


def test_engine__limits_context_budget_and_policy_version(model: Any, make_engine: Any) -> None:
    engine = make_engine(temperature=0.0, max_episode_tokens=7)
    engine.set_params(model, version=5)
    (p,) = prompts((60,), seed=8)  # MAX_LEN 64: room for 4 samples
    (full,) = engine.generate_batch([p], max_new_tokens=10)
    assert len(full.tokens) == 4 and full.stop_reason == "context_full"
    assert full.policy_version == 5

    async def run() -> list[SampleResult]:
        out = [await engine.generate("e", [1, 2], max_new_tokens=5) for _ in range(3)]
        engine.end_session("e")
        return out

    turns = asyncio.run(run())  # budget 7 sampled tokens per episode: 5, 2, then none
    assert [len(t.tokens) for t in turns] == [5, 2, 0]
    assert [t.stop_reason for t in turns] == ["max_new_tokens"] * 3


def test_engine__rejects_caller_errors_before_touching_shared_state(model: Any) -> None:
    engine = SamplingEngine(
        model, num_slots=1, max_len=8, config=SamplerConfig(), key=jax.random.key(0)
    )
    with pytest.raises(ValueError, match="tokenizer"):
        engine.generate_batch([[1, 2]], stop_strings=["x"])
    with pytest.raises(ValueError, match="no context"):
        engine.generate_batch([[]])


def test_engine__ending_a_busy_session_frees_its_slot_when_the_call_finishes(
    make_engine: Any,
) -> None:
    engine = make_engine(temperature=0.0)  # 3 slots
    ps = prompts((4, 4, 4, 4, 4, 4), seed=7)

    async def run() -> list[SampleResult]:
        first = asyncio.create_task(engine.generate("gone", ps[0], max_new_tokens=40))
        for _ in range(6000):  # wait until it holds a slot and decodes
            if engine.session_slot("gone") is not None:
                break
            await asyncio.sleep(0.005)
        first.cancel()  # its caller gives up (an episode timeout) ...
        engine.end_session("gone")  # ... and ends the session while the call is in flight
        assert engine.session_slot("gone") is not None  # deferred until the call finishes

        async def one(sid: str, prompt: list[int]) -> SampleResult:
            result = await engine.generate(sid, prompt, max_new_tokens=3)
            return result  # sessions keep their slots: all three need distinct slots

        # Without the deferred release one of these would wait for a slot forever.
        return await asyncio.wait_for(
            asyncio.gather(*(one(f"s{i}", ps[i]) for i in (1, 2, 3))), timeout=60
        )

    results = asyncio.run(run())
    assert [len(r.tokens) for r in results] == [3, 3, 3]
    assert engine.session_slot("gone") is None
