import numpy as np
import pytest

from mtrl_jax.rollout.shaping import (
    OverlongConfig,
    overlong_penalty,
    shape_overlong,
    truncated_episodes,
)
from tests.mtrl_jax import numpy_reference as ref

STATUSES = ["ok", "truncated", "format_error", "ok"]


@pytest.mark.parametrize("max_tokens,buffer", [(20, 5), (20, 20), (20, 1), (7, 3)])
def test_overlong_penalty__matches_numpy_reference(max_tokens, buffer):
    lengths = np.arange(0, 3 * max_tokens)
    out = overlong_penalty(lengths, max_tokens, buffer)
    expected = [ref.overlong_penalty(int(n), max_tokens, buffer) for n in lengths]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert out.dtype == np.float32 and out.max() == 0.0 and out.min() == -1.0


def test_overlong_penalty__worked_example():
    # L_max = 100, B = 20: free up to 80, then -1/20 per token, -1 at the limit and beyond.
    out = overlong_penalty(np.array([80, 81, 90, 100, 101, 500]), 100, 20)
    np.testing.assert_allclose(out, [0.0, -0.05, -0.5, -1.0, -1.0, -1.0], rtol=1e-6)


@pytest.mark.parametrize("max_tokens", [None, 10])
def test_truncated_episodes__matches_numpy_reference(max_tokens):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 20, 40)
    statuses = [STATUSES[i] for i in rng.integers(0, len(STATUSES), 40)]
    out = truncated_episodes(lengths, statuses, max_tokens)
    expected = [
        ref.overlong_truncated(int(n), s, max_tokens)
        for n, s in zip(lengths, statuses, strict=True)
    ]
    np.testing.assert_array_equal(out, expected)
    assert 0 < out.sum() < 40


def random_round(seed, n=32):
    rng = np.random.default_rng(seed)
    rewards = rng.choice([0.0, 0.5, 1.0], n).astype(np.float32)
    lengths = rng.integers(0, 40, n)
    statuses = [STATUSES[i] for i in rng.integers(0, len(STATUSES), n)]
    return rewards, lengths, statuses


def test_shape_overlong__none_changes_nothing():
    rewards, lengths, statuses = random_round(1)
    out = shape_overlong(rewards, lengths, statuses, OverlongConfig())
    np.testing.assert_array_equal(out.rewards, rewards)
    assert out.train_mask.all()
    assert out.metrics == {
        "rollout/overlong_penalty_mean": 0.0,
        "rollout/overlong_penalized": 0.0,
        "rollout/overlong_masked": 0.0,
    }


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_shape_overlong__penalty_matches_numpy_reference(scale):
    rewards, lengths, statuses = random_round(2)
    cfg = OverlongConfig(mode="penalty", max_tokens=30, buffer=10, penalty_scale=scale)
    out = shape_overlong(rewards, lengths, statuses, cfg)
    penalty = np.array([scale * ref.overlong_penalty(int(n), 30, 10) for n in lengths])
    np.testing.assert_allclose(out.rewards, rewards + penalty, rtol=1e-6, atol=1e-7)
    assert out.train_mask.all()  # the penalty masks nothing, truncated episodes included
    assert out.metrics["rollout/overlong_penalized"] == (lengths > 20).sum() > 0
    assert out.metrics["rollout/overlong_penalty_mean"] == pytest.approx(penalty.mean(), rel=1e-6)


@pytest.mark.parametrize("max_tokens", [None, 25])
def test_shape_overlong__mask_matches_numpy_reference(max_tokens):
    rewards, lengths, statuses = random_round(3)
    out = shape_overlong(
        rewards, lengths, statuses, OverlongConfig(mode="mask", max_tokens=max_tokens)
    )
    cut = [
        ref.overlong_truncated(int(n), s, max_tokens)
        for n, s in zip(lengths, statuses, strict=True)
    ]
    np.testing.assert_array_equal(out.train_mask, ~np.array(cut))
    np.testing.assert_array_equal(out.rewards, rewards)  # masking leaves the baseline alone
    assert out.metrics["rollout/overlong_masked"] == sum(cut) > 0


def test_overlong_config__validates():
    for bad in (
        dict(mode="soft"),
        dict(mode="penalty"),  # needs max_tokens
        dict(mode="penalty", max_tokens=100),  # needs a buffer
        dict(mode="penalty", max_tokens=100, buffer=101),
        dict(mode="mask", buffer=10),  # a buffer nothing reads
        dict(mode="mask", max_tokens=0),
        dict(mode="penalty", max_tokens=100, buffer=10, penalty_scale=-1.0),
    ):
        with pytest.raises(ValueError):
            OverlongConfig(**bad)
    OverlongConfig(mode="penalty", max_tokens=100, buffer=100)
    OverlongConfig(mode="mask")
