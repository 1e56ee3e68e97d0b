"""Unit tests of the model-free pieces: sampling filters, keys, stop rules, config checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrl_jax.sampler import SamplerConfig, TurnStopper, row_keys, sample_tokens
from tests.mtrl_jax.sampler.conftest import PairTokenizer


def _sample(logits: np.ndarray, seed: int, **kw: object) -> tuple[np.ndarray, ...]:
    keys = row_keys(jax.random.key(seed), jnp.arange(logits.shape[0]), jnp.zeros(logits.shape[0]))
    out = sample_tokens(jnp.asarray(logits), keys, greedy=False, filtered=True, **kw)
    return tuple(np.asarray(x) for x in out)


def test_sample_tokens__top_k_top_p_restrict_support_and_renormalise() -> None:
    # probs 0.5, 0.25, 0.125, 0.125 (tokens 0..3): top_p=0.7 keeps {0, 1} (mass before token 1
    # is 0.5 < 0.7, before token 2 is 0.75), so q = (2/3, 1/3).
    logits = np.log(np.array([[0.5, 0.25, 0.125, 0.125]] * 64, np.float32))
    tokens, logp, model_logp = _sample(logits, 0, temperature=1.0, top_k=0, top_p=0.7)
    assert set(tokens.tolist()) == {0, 1}
    expected = np.where(tokens == 0, np.log(2 / 3), np.log(1 / 3))
    np.testing.assert_allclose(logp, expected, atol=1e-5)
    np.testing.assert_allclose(model_logp, logits[0][tokens], atol=1e-5)  # already normalised
    tokens, logp, _ = _sample(logits, 1, temperature=1.0, top_k=1, top_p=1.0)
    assert set(tokens.tolist()) == {0}
    np.testing.assert_allclose(logp, 0.0, atol=1e-6)


def test_sample_tokens__greedy_is_argmax_with_zero_sampling_logprob() -> None:
    logits = jnp.asarray([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    keys = row_keys(jax.random.key(0), jnp.arange(2), jnp.zeros(2, jnp.int32))
    tokens, logp, model_logp = sample_tokens(
        logits, keys, temperature=0.0, top_k=0, top_p=1.0, greedy=True, filtered=False
    )
    assert tokens.tolist() == [1, 0]
    np.testing.assert_array_equal(logp, [0.0, 0.0])
    expected = jax.nn.log_softmax(logits)[jnp.arange(2), tokens]
    np.testing.assert_allclose(model_logp, expected, atol=1e-6)


def test_row_keys__differ_by_request_and_token_index() -> None:
    keys = row_keys(jax.random.key(0), jnp.array([0, 0, 1]), jnp.array([0, 1, 0]))
    data = np.asarray(jax.random.key_data(keys))
    assert len({tuple(row) for row in data}) == 3


def test_turn_stopper__stop_string_keeps_the_completing_token_whole() -> None:
    tok = PairTokenizer()  # id 0 -> "aA", 1 -> "bA", 27 -> "bB"
    stopper = TurnStopper((), ("AbA",), limit=9, limit_reason="max_new_tokens", tokenizer=tok)
    # "aA" then "bA": "AbA" ends exactly at the end of token 1.
    assert stopper.push(0) is None
    assert stopper.push(1) == "stop_string"
    stopper = TurnStopper((), ("Ab",), limit=9, limit_reason="max_new_tokens", tokenizer=tok)
    assert stopper.push(0) is None
    assert stopper.push(27) == "stop_string"  # "aAbB": completed inside token 27, kept whole
    assert stopper.tokens == [0, 27]


def test_turn_stopper__stop_token_wins_over_limit() -> None:
    stopper = TurnStopper((5,), (), limit=2, limit_reason="context_full")
    assert stopper.push(1) is None
    assert stopper.push(5) == "stop_token"
    stopper = TurnStopper((5,), (), limit=2, limit_reason="context_full")
    assert [stopper.push(1), stopper.push(2)] == [None, "context_full"]
    with pytest.raises(ValueError, match="tokenizer"):
        TurnStopper((), ("x",), limit=1, limit_reason="max_new_tokens")


def test_sampler_config__rejects_bad_values_and_picks_buckets() -> None:
    cfg = SamplerConfig(prefill_buckets=(4, 16))
    assert [cfg.bucket_for(n) for n in (1, 4, 5, 16)] == [4, 4, 16, 16]
    for bad in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -1}, {"prefill_buckets": (8, 4)}):
        with pytest.raises(ValueError):
            SamplerConfig(**bad)  # type: ignore[arg-type]
