import dataclasses
from typing import get_args

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrl_jax.losses import (
    IS_CORRECTIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Aggregation,
    LossConfig,
    compute_loss,
    loss_denominators,
    token_weights,
)
from mtrl_jax.types import TrainBatch
from tests.mtrl_jax import numpy_reference as ref

B, T = 3, 12


def random_batch(seed, spread=0.4, with_ref=True):
    """A packed-looking batch: rows of 1-3 segments, env tokens (mask 0) and padding."""
    rng = np.random.default_rng(seed)
    segment_ids = np.array(
        [[1] * 5 + [2] * 4 + [3] * 3, [1] * 7 + [2] * 3 + [0] * 2, [1] * 9 + [0] * 3], np.int32
    )
    mask = ((rng.random((B, T)) < 0.7) & (segment_ids > 0)).astype(np.float32)
    mask[2, :9] = 0.0  # a segment with no loss token: counts for nothing
    logp = -rng.gamma(2.0, 0.7, (B, T)).astype(np.float32)
    old = (logp + rng.normal(0, spread, (B, T))).astype(np.float32)
    behaviour = (old + rng.normal(0, spread, (B, T))).astype(np.float32)
    adv_seq = rng.normal(size=(B, 4)).astype(np.float32)
    adv = np.take_along_axis(adv_seq, segment_ids, 1) * mask
    batch = dict(
        tokens=np.zeros((B, T), np.int32),
        targets=np.zeros((B, T), np.int32),
        positions=np.zeros((B, T), np.int32),
        segment_ids=segment_ids,
        loss_mask=mask,
        advantages=adv.astype(np.float32),
        behaviour_logp=behaviour * mask,
        old_logp=old * mask,
        policy_version=np.zeros((B, T), np.int32),
        ref_logp=(logp + rng.normal(0, spread, (B, T))).astype(np.float32) if with_ref else None,
    )
    entropy = rng.gamma(2.0, 0.5, (B, T)).astype(np.float32)
    return batch, logp, entropy


def as_batch(d):
    return TrainBatch(**{k: None if v is None else jnp.asarray(v) for k, v in d.items()})


def reference_cfg(cfg: LossConfig):
    return dict(
        policy_loss=cfg.policy_loss,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        dual_c=cfg.dual_clip_c,
        cispo_low=cfg.cispo_clip_low,
        cispo_high=cfg.cispo_clip_high,
        is_correction=cfg.is_correction,
        cap=cfg.is_cap,
        kl_coef=cfg.kl_coef,
        kl_estimator=cfg.kl_estimator,
        entropy_coef=cfg.entropy_coef,
        aggregation=cfg.aggregation,
        norm_tokens=cfg.norm_tokens,
    )


def loss_of(d, logp, entropy, cfg):
    batch = as_batch(d)
    denominators = loss_denominators(batch.loss_mask, batch.segment_ids)
    return compute_loss(jnp.asarray(logp), jnp.asarray(entropy), batch, cfg, denominators)


CASES = [
    LossConfig(policy_loss="ppo"),
    LossConfig(policy_loss="ppo", clip_low=0.1, clip_high=0.3, dual_clip_c=2.0),
    LossConfig(policy_loss="cispo"),
    LossConfig(policy_loss="cispo", cispo_clip_low=0.5, cispo_clip_high=0.1),
    LossConfig(policy_loss="is"),
    LossConfig(policy_loss="nll"),
]
AGGREGATIONS = [
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
NORM_TOKENS = 7  # C of seq-mean-token-sum-norm: a generation limit of 7 tokens (T = 12 slots)


def aggregation_kwargs(mode):
    """``aggregation=mode``, plus the constant the Dr. GRPO mode needs."""
    return dict(aggregation=mode, norm_tokens=NORM_TOKENS if mode.endswith("-norm") else None)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.policy_loss}-{c.dual_clip_c}")
def test_policy_losses__match_numpy_reference(cfg, aggregation):
    cfg = dataclasses.replace(cfg, **aggregation_kwargs(aggregation))
    d, logp, entropy = random_batch(1)
    loss, sums, _ = loss_of(d, logp, entropy, cfg)
    expected = ref.total_loss(d, logp, entropy, reference_cfg(cfg))
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sums["loss/policy"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize(
    "correction,cap", [("token", 1.5), ("token", None), ("sequence", 2.0), ("sequence", 0.5)]
)
@pytest.mark.parametrize("policy_loss", ["ppo", "cispo", "is"])
def test_is_corrections__match_numpy_reference(policy_loss, correction, cap, aggregation):
    cfg = LossConfig(
        policy_loss=policy_loss,
        is_correction=correction,
        is_cap=cap,
        **aggregation_kwargs(aggregation),
    )
    d, logp, entropy = random_batch(2)
    loss, sums, maxes = loss_of(d, logp, entropy, cfg)
    expected = ref.total_loss(d, logp, entropy, reference_cfg(cfg))
    np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-6)
    w = ref.tis_weights(
        d["old_logp"], d["behaviour_logp"], d["loss_mask"], d["segment_ids"], correction, cap
    )
    mask = d["loss_mask"]
    np.testing.assert_allclose(sums["is/weight_mean"], (w * mask).sum() / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(maxes["is/weight_max"], (w * mask).max(), rtol=1e-5)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_and_entropy_terms__match_numpy_reference(estimator, aggregation):
    cfg = LossConfig(
        kl_coef=0.3, kl_estimator=estimator, entropy_coef=0.05, **aggregation_kwargs(aggregation)
    )
    d, logp, entropy = random_batch(3)
    loss, sums, _ = loss_of(d, logp, entropy, cfg)
    expected = ref.total_loss(d, logp, entropy, reference_cfg(cfg))
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    parts = sums["loss/policy"] + sums["loss/kl"] + sums["loss/entropy"]
    np.testing.assert_allclose(parts, loss, rtol=1e-6)


def test_kl_estimators__match_numpy_reference_per_token():
    rng = np.random.default_rng(4)
    logp = -rng.gamma(2.0, 1.0, (2, 50)).astype(np.float32)
    ref_logp = (logp + rng.normal(0, 0.3, (2, 50))).astype(np.float32)
    for name in ("k1", "k2", "k3"):
        out = np.asarray(KL_ESTIMATORS.get(name)(jnp.asarray(logp), jnp.asarray(ref_logp)))
        for i, j in np.ndindex(logp.shape):
            expected = ref.kl_token(float(logp[i, j]), float(ref_logp[i, j]), name)
            assert out[i, j] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_aggregation__weights_match_numpy_reference():
    d, _, _ = random_batch(5)
    values = np.random.default_rng(5).normal(size=(B, T)).astype(np.float32)
    mask, seg = jnp.asarray(d["loss_mask"]), jnp.asarray(d["segment_ids"])
    denominators = loss_denominators(mask, seg)
    assert float(denominators.num_seqs) == 5  # 6 segments, one without loss tokens
    for mode in AGGREGATIONS:
        out = (token_weights(mask, seg, mode, denominators, NORM_TOKENS) * values).sum()
        expected = ref.aggregate(values, d["loss_mask"], d["segment_ids"], mode, NORM_TOKENS)
        np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_aggregation__dr_grpo_weight_is_the_same_for_every_token():
    # Segments of 1, 3 and 6 loss tokens: seq-mean-token-mean weighs a token of the short one
    # 6x a token of the long one; the constant normaliser weighs all alike, 1 / (C * N_seqs).
    mask = np.array([[0, 1, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 0]], np.float32)
    seg = np.array([[1, 1, 2, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]], np.int32)
    denominators = loss_denominators(jnp.asarray(mask), jnp.asarray(seg))
    w = np.asarray(token_weights(mask, seg, "seq-mean-token-sum-norm", denominators, 16))
    np.testing.assert_allclose(w[mask > 0], 1 / (16 * 3), rtol=1e-6)
    assert np.all(w[mask == 0] == 0.0)
    per_seq = np.asarray(token_weights(mask, seg, "seq-mean-token-mean", denominators))
    assert per_seq[0, 1] == pytest.approx(6 * per_seq[1, 1])
    with pytest.raises(ValueError, match="norm_tokens"):
        token_weights(mask, seg, "seq-mean-token-sum-norm", denominators)


def grad_wrt_logp(cfg, logp, old, adv, mask):
    def f(lp):
        loss, _ = POLICY_LOSSES.get(cfg.policy_loss)(lp, old, adv, mask, cfg)
        return (loss * mask).sum()

    return np.asarray(jax.grad(f)(jnp.asarray(logp)))


def ratio_grid():
    """Log-ratios spanning every clip region, for both advantage signs."""
    log_ratio = np.log(np.array([0.3, 0.7, 0.85, 1.0, 1.15, 1.4, 2.5, 4.0], np.float32))
    log_ratio = np.concatenate([log_ratio, log_ratio])[None]
    adv = np.array([[1.0] * 8 + [-1.0] * 8], np.float32)
    old = np.full_like(log_ratio, -1.2)
    return old + log_ratio, old, adv, np.ones_like(adv)


def test_ppo__zero_gradient_exactly_where_the_clip_applies():
    cfg = LossConfig(policy_loss="ppo", clip_low=0.2, clip_high=0.28, dual_clip_c=3.0)
    logp, old, adv, mask = ratio_grid()
    grad = grad_wrt_logp(cfg, logp, old, adv, mask)[0]
    ratio = np.exp(logp - old)[0]
    for r, a, g in zip(ratio, adv[0], grad, strict=True):
        # A > 0: only the upper bound applies; A < 0: the lower bound and the dual clip.
        clipped = r > 1.28 if a > 0 else (r < 0.8 or r > 3.0)
        if clipped:
            assert g == 0.0, (r, a)
        else:  # d(-A r)/d logp = -A r
            assert g == pytest.approx(-a * r, rel=1e-5), (r, a)


def test_ppo__without_dual_clip_large_ratios_keep_their_negative_advantage_gradient():
    cfg = LossConfig(policy_loss="ppo", clip_low=0.2, clip_high=0.2)
    logp, old, adv, mask = ratio_grid()
    grad = grad_wrt_logp(cfg, logp, old, adv, mask)[0]
    assert grad[-1] == pytest.approx(4.0, rel=1e-5)  # A = -1, r = 4: gradient -A r


def test_cispo__gradient_flows_through_logprob_only_and_never_vanishes():
    cfg = LossConfig(policy_loss="cispo", cispo_clip_low=0.2, cispo_clip_high=0.28)
    logp, old, adv, mask = ratio_grid()
    grad = grad_wrt_logp(cfg, logp, old, adv, mask)[0]
    ratio = np.exp(logp - old)[0]
    weight = np.clip(ratio, 0.8, 1.28)
    # d/d logp of -sg(w) A logp is -w A: no term from differentiating the weight itself.
    np.testing.assert_allclose(grad, -weight * adv[0], rtol=1e-6)
    assert np.all(grad != 0.0)
    clipped = (ratio < 0.8) | (ratio > 1.28)
    assert clipped.sum() >= 6  # the grid really does hit both bounds


def test_is_loss__gradient_is_importance_weighted_policy_gradient():
    cfg = LossConfig(policy_loss="is")
    logp, old, adv, mask = ratio_grid()
    grad = grad_wrt_logp(cfg, logp, old, adv, mask)[0]
    np.testing.assert_allclose(grad, -adv[0] * np.exp(logp - old)[0], rtol=1e-5)


def test_corrections__carry_no_gradient_and_masked_tokens_get_none():
    d, logp, entropy = random_batch(6)
    cfg = LossConfig(policy_loss="cispo", is_correction="sequence", kl_coef=0.1, entropy_coef=0.1)

    def f(lp, ent):
        return loss_of(d, lp, ent, cfg)[0]

    g_logp, g_ent = jax.grad(f, argnums=(0, 1))(jnp.asarray(logp), jnp.asarray(entropy))
    outside = d["loss_mask"] == 0
    assert np.all(np.asarray(g_logp)[outside] == 0.0)
    assert np.all(np.asarray(g_ent)[outside] == 0.0)
    assert np.all(np.isfinite(g_logp))


def test_compute_loss__micro_batches_sum_to_the_full_batch():
    d, logp, entropy = random_batch(7)
    for mode in AGGREGATIONS:
        cfg = LossConfig(
            policy_loss="ppo", is_correction="token", kl_coef=0.2, **aggregation_kwargs(mode)
        )
        full, full_sums, _ = loss_of(d, logp, entropy, cfg)
        batch = as_batch(d)
        denominators = loss_denominators(batch.loss_mask, batch.segment_ids)
        parts, part_sums = 0.0, 0.0
        for rows in ([0], [1, 2]):
            mb = jax.tree.map(lambda x, rows=rows: x[np.array(rows)], batch)
            loss, sums, _ = compute_loss(
                jnp.asarray(logp[rows]), jnp.asarray(entropy[rows]), mb, cfg, denominators
            )
            parts, part_sums = parts + loss, part_sums + sums["policy/clipfrac"]
        np.testing.assert_allclose(parts, full, rtol=1e-5)
        np.testing.assert_allclose(part_sums, full_sums["policy/clipfrac"], rtol=1e-5)


def test_compute_loss__padding_with_extreme_values_stays_finite():
    d, logp, entropy = random_batch(8)
    outside = d["loss_mask"] == 0
    d["old_logp"] = np.where(outside, 500.0, d["old_logp"]).astype(np.float32)
    d["behaviour_logp"] = np.where(outside, -500.0, d["behaviour_logp"]).astype(np.float32)
    d["ref_logp"] = np.where(outside, 500.0, d["ref_logp"]).astype(np.float32)
    cfg = LossConfig(policy_loss="is", is_correction="sequence", kl_coef=0.1)
    loss, sums, maxes = loss_of(d, logp, entropy, cfg)
    assert np.isfinite(loss)
    assert all(np.isfinite(v) for v in [*sums.values(), *maxes.values()])


def test_metrics__clipfrac_and_ratio_stats():
    logp, old, adv, mask = ratio_grid()
    d = dict(
        tokens=np.zeros_like(adv, np.int32),
        targets=np.zeros_like(adv, np.int32),
        positions=np.zeros_like(adv, np.int32),
        segment_ids=np.ones_like(adv, np.int32),
        loss_mask=mask,
        advantages=adv,
        behaviour_logp=old,
        old_logp=old,
        policy_version=np.zeros_like(adv, np.int32),
    )
    cfg = LossConfig(policy_loss="ppo", clip_low=0.2, clip_high=0.28, dual_clip_c=3.0)
    _, sums, maxes = loss_of(d, logp, np.zeros_like(logp), cfg)
    # A > 0: r in {1.4, 2.5, 4.0} clipped high; A < 0: r in {0.3, 0.7} clipped low; 4.0 dual.
    assert float(sums["policy/clipfrac_high"]) == pytest.approx(3 / 16)
    assert float(sums["policy/clipfrac_low"]) == pytest.approx(2 / 16)
    assert float(sums["policy/clipfrac"]) == pytest.approx(5 / 16)
    assert float(sums["policy/dual_clipfrac"]) == pytest.approx(1 / 16)
    assert float(maxes["policy/ratio_max"]) == pytest.approx(4.0, rel=1e-5)
    ratio = np.exp(logp - old)
    assert float(sums["policy/ratio_mean"]) == pytest.approx(ratio.mean(), rel=1e-5)
    assert float(sums["policy/approx_kl"]) == pytest.approx(
        (ratio - 1 - np.log(ratio)).mean(), rel=1e-5
    )
    assert float(sums["is/weight_mean"]) == 1.0 and float(sums["is/ratio_mean"]) == 1.0


def test_loss_config__validates_names_and_ranges():
    for bad in (
        dict(policy_loss="ppo2"),
        dict(is_correction="seq"),
        dict(kl_estimator="k4"),
        dict(aggregation="mean"),
        dict(clip_low=1.0),
        dict(dual_clip_c=1.0),
        dict(is_correction="sequence", is_cap=None),
        dict(kl_coef=-1.0),
        dict(aggregation="seq-mean-token-sum-norm"),  # needs its constant
        dict(aggregation="seq-mean-token-sum-norm", norm_tokens=0),
        dict(aggregation="token-mean", norm_tokens=512),  # a constant nothing reads
    ):
        with pytest.raises(ValueError):
            LossConfig(**bad)
    assert POLICY_LOSSES.names() == ("cispo", "is", "nll", "ppo")
    assert IS_CORRECTIONS.names() == ("none", "sequence", "token")
    assert set(AGGREGATIONS) == set(get_args(Aggregation))  # every mode is tested above


def test_compute_loss__missing_inputs_for_a_configured_term_are_errors():
    d, logp, entropy = random_batch(9, with_ref=False)
    with pytest.raises(ValueError, match="ref_logp"):
        loss_of(d, logp, entropy, LossConfig(kl_coef=0.1))
    batch = as_batch(d)
    denominators = loss_denominators(batch.loss_mask, batch.segment_ids)
    with pytest.raises(ValueError, match="entropy"):
        compute_loss(jnp.asarray(logp), None, batch, LossConfig(entropy_coef=0.1), denominators)
