import math
from fractions import Fraction

import jax
import numpy as np
import pytest

from mtrl_jax.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    compute_group_advantages,
    drop_identical_groups,
    from_group_layout,
    pass_at_k,
    to_group_layout,
    token_advantages,
)
from tests.mtrl_jax import numpy_reference as ref

ESTIMATORS = ["grpo", "rloo", "pass_at_k", "best_minus_second"]


def random_groups(seed, groups=6, size=7, binary=False, p_valid=0.8):
    """Rewards with ties (few distinct levels) and random exclusions, one group left empty."""
    rng = np.random.default_rng(seed)
    if binary:
        rewards = (rng.random((groups, size)) < 0.4).astype(np.float32)
    else:
        rewards = rng.choice([0.0, 0.25, 0.5, 1.0, 0.3], size=(groups, size)).astype(np.float32)
        rewards[0] = rng.normal(size=size)  # continuous, no ties
    mask = (rng.random((groups, size)) < p_valid).astype(np.float32)
    mask[1] = 0.0  # a fully excluded group
    mask[2, :3] = 1.0
    rewards[2, :3] = 0.5  # a group of identical valid rewards
    rewards[mask == 0] = 123.0  # padding must never leak into anything
    return rewards, mask


def check_against(reference, adv, rewards, mask, tol):
    adv = np.asarray(adv)
    for g in range(rewards.shape[0]):
        idx = np.flatnonzero(mask[g])
        expected = reference([float(r) for r in rewards[g, idx]])
        np.testing.assert_allclose(adv[g, idx], expected, rtol=tol, atol=tol)
        assert np.all(adv[g, mask[g] == 0] == 0.0)


@pytest.mark.parametrize("scale_by_std", [True, False])
@pytest.mark.parametrize("ddof", [0, 1])
def test_grpo__matches_numpy_reference(scale_by_std, ddof):
    rewards, mask = random_groups(0)
    cfg = AdvantageConfig(estimator="grpo", scale_by_std=scale_by_std, std_ddof=ddof)
    adv, _ = compute_group_advantages(rewards, mask, cfg)
    check_against(lambda r: ref.grpo(r, scale_by_std, ddof), adv, rewards, mask, 1e-5)


def test_rloo__matches_numpy_reference():
    rewards, mask = random_groups(1)
    adv, _ = compute_group_advantages(rewards, mask, AdvantageConfig(estimator="rloo"))
    check_against(ref.rloo, adv, rewards, mask, 1e-5)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("scale_by_std", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_pass_at_k__matches_brute_force_enumeration(k, scale_by_std, binary):
    rewards, mask = random_groups(k, size=8, binary=binary)
    cfg = AdvantageConfig(estimator="pass_at_k", k=k, scale_by_std=scale_by_std)
    adv, _ = compute_group_advantages(rewards, mask, cfg)
    check_against(
        lambda r: ref.pass_at_k_by_enumeration(r, k, scale_by_std), adv, rewards, mask, 1e-4
    )


@pytest.mark.parametrize("k", [2, 4])
def test_pass_at_k__binary_rewards_match_paper_closed_form(k):
    rng = np.random.default_rng(7)
    rewards = (rng.random((12, 8)) < 0.5).astype(np.float32)
    rewards[0], rewards[1] = 0.0, 1.0
    rewards[2] = [1, 0, 0, 0, 0, 0, 0, 0]  # one success: A_pos is large, A_neg small
    adv, _ = compute_group_advantages(rewards, None, AdvantageConfig(estimator="pass_at_k", k=k))
    for g in range(rewards.shape[0]):
        expected = ref.pass_at_k_paper_binary(rewards[g].tolist(), k)
        np.testing.assert_allclose(np.asarray(adv)[g], expected, rtol=1e-4, atol=1e-4)


def test_pass_at_k__precise_when_almost_every_subset_passes():
    # n=32, k=8, 8 failures: R = 1 - 1/C(32, 8) ~ 1 - 9.5e-8, sigma ~ 3e-4. Naive float32
    # arithmetic loses all digits of (1 - R); the max-shifted form keeps them.
    rewards = np.array([[0.0] * 8 + [1.0] * 24], np.float32)
    adv, _ = compute_group_advantages(rewards, None, AdvantageConfig(estimator="pass_at_k", k=8))
    expected = ref.pass_at_k_paper_binary(rewards[0].tolist(), 8)
    np.testing.assert_allclose(np.asarray(adv)[0], expected, rtol=1e-4)


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_pass_at_k__k1_is_grpo(scale_by_std):
    rewards, mask = random_groups(3)
    passk, _ = compute_group_advantages(
        rewards, mask, AdvantageConfig(estimator="pass_at_k", k=1, scale_by_std=scale_by_std)
    )
    grpo, _ = compute_group_advantages(
        rewards, mask, AdvantageConfig(estimator="grpo", scale_by_std=scale_by_std)
    )
    np.testing.assert_allclose(passk, grpo, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale_by_std", [None, True, False])
@pytest.mark.parametrize("ddof", [0, 1])
def test_best_minus_second__matches_brute_force_enumeration(scale_by_std, ddof):
    rewards, mask = random_groups(4)
    rewards[3, :4], mask[3, :4] = [1.0, 1.0, 0.5, 0.0], 1.0  # a tie for the best: all zero
    cfg = AdvantageConfig(estimator="best_minus_second", scale_by_std=scale_by_std, std_ddof=ddof)
    adv, metrics = compute_group_advantages(rewards, mask, cfg)
    scaled = scale_by_std is True  # None: the paper's unscaled form
    check_against(
        lambda r: ref.best_minus_second_by_enumeration(r, scaled, ddof),
        adv,
        rewards,
        mask,
        1e-5,
    )
    assert int(metrics["advantage/zero_groups"]) >= 2  # the identical group and the tie


def test_best_minus_second__default_is_the_unscaled_gap():
    # Group [0.2, 0.9, 0.5]: best 0.9, second 0.5, so the best sample gets 0.4 and the others 0,
    # not 0.4 / std = 0.4 / 0.2867 = 1.395 (the scaled form, still selectable).
    rewards = np.array([[0.2, 0.9, 0.5]], np.float32)
    adv, _ = compute_group_advantages(rewards, None, AdvantageConfig(estimator="best_minus_second"))
    np.testing.assert_allclose(adv, [[0.0, 0.4, 0.0]], atol=1e-6)
    scaled_cfg = AdvantageConfig(estimator="best_minus_second", scale_by_std=True)
    scaled, _ = compute_group_advantages(rewards, None, scaled_cfg)
    np.testing.assert_allclose(scaled, [[0.0, 0.4 / (np.std([0.2, 0.9, 0.5]) + 1e-6), 0.0]], 1e-5)


def test_advantage_config__scale_by_std_none_is_each_papers_form():
    assert AdvantageConfig(estimator="grpo").scales_by_std
    assert AdvantageConfig(estimator="pass_at_k").scales_by_std
    assert not AdvantageConfig(estimator="best_minus_second").scales_by_std
    assert not AdvantageConfig(estimator="grpo", scale_by_std=False).scales_by_std
    assert AdvantageConfig(estimator="best_minus_second", scale_by_std=True).scales_by_std
    rewards, mask = random_groups(8)
    default, _ = compute_group_advantages(rewards, mask, AdvantageConfig())
    check_against(lambda r: ref.grpo(r, True), default, rewards, mask, 1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drop_identical_groups__matches_numpy_reference(seed):
    rewards, mask = random_groups(seed, groups=9, size=4, binary=seed == 1)
    rewards[2, mask[2] > 0] = 0.5  # all valid rewards equal: dropped
    mask[3] = 0.0
    mask[3, 2] = 1.0  # one valid sample: no spread, dropped
    layout = to_group_layout(
        [g for g in range(9) for _ in range(4)], rewards.reshape(-1), mask.reshape(-1) > 0
    )
    kept, dropped = drop_identical_groups(layout)
    expected_drop = [ref.is_identical_group(rewards[g, mask[g] > 0].tolist()) for g in range(9)]
    assert dropped == sum(expected_drop) >= 2  # group 2 (all 0.5) and group 3 (one sample)
    for g in range(9):
        np.testing.assert_array_equal(kept.mask[g], 0.0 if expected_drop[g] else mask[g])
    np.testing.assert_array_equal(kept.rewards, layout.rewards)  # only the mask changes
    assert kept.group_keys == layout.group_keys


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_drop_identical_groups__kept_groups_keep_their_advantages(estimator):
    # Every estimator works group by group: dropping other groups changes no kept advantage.
    rewards, mask = random_groups(10)
    layout = to_group_layout(
        [g for g in range(6) for _ in range(7)], rewards.reshape(-1), mask.reshape(-1) > 0
    )
    kept, dropped = drop_identical_groups(layout)
    cfg = AdvantageConfig(estimator=estimator, k=3)
    full, _ = compute_group_advantages(layout.rewards, layout.mask, cfg)
    filtered, metrics = compute_group_advantages(kept.rewards, kept.mask, cfg)
    np.testing.assert_allclose(filtered, np.asarray(full) * kept.mask, atol=1e-6)
    assert int(metrics["advantage/identical_groups"]) == 0
    nonempty = int((layout.mask.sum(1) > 0).sum())
    assert int(metrics["advantage/groups"]) == nonempty - dropped


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators__identical_rewards_give_zero_and_are_counted(estimator):
    rewards = np.array([[0.3] * 5, [1.0] * 5, [0.0, 1.0, 0.5, 0.0, 0.2], [0.7] * 5], np.float32)
    mask = np.ones_like(rewards)
    mask[3, 2:] = 0.0
    rewards[3, 2:] = -5.0  # excluded samples do not break the tie
    cfg = AdvantageConfig(estimator=estimator, k=2)
    adv, metrics = compute_group_advantages(rewards, mask, cfg)
    assert np.all(np.asarray(adv)[[0, 1, 3]] == 0.0)
    assert np.any(np.asarray(adv)[2] != 0.0)
    assert int(metrics["advantage/identical_groups"]) == 3
    assert int(metrics["advantage/groups"]) == 4
    assert int(metrics["advantage/samples"]) == 17


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators__permuting_a_group_permutes_its_advantages(estimator):
    rewards, mask = random_groups(5)
    cfg = AdvantageConfig(estimator=estimator, k=3)
    adv, _ = compute_group_advantages(rewards, mask, cfg)
    rng = np.random.default_rng(0)
    perm = np.stack([rng.permutation(rewards.shape[1]) for _ in range(rewards.shape[0])])
    permuted = np.take_along_axis(rewards, perm, 1)
    adv_p, _ = compute_group_advantages(permuted, np.take_along_axis(mask, perm, 1), cfg)
    np.testing.assert_allclose(adv_p, np.take_along_axis(np.asarray(adv), perm, 1), atol=1e-5)
    # ... and reordering the groups reorders the rows.
    adv_g, _ = compute_group_advantages(rewards[::-1], mask[::-1], cfg)
    np.testing.assert_allclose(adv_g, np.asarray(adv)[::-1], atol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators__excluded_samples_change_nothing_else(estimator):
    # A group of 4 valid samples inside G=7 with 3 excluded equals the same group alone at G=4.
    rewards = np.array([[0.2, 9.0, 1.0, 0.5, -9.0, 0.0, 9.0]], np.float32)
    mask = np.array([[1, 0, 1, 1, 0, 1, 0]], np.float32)
    cfg = AdvantageConfig(estimator=estimator, k=2)
    adv, _ = compute_group_advantages(rewards, mask, cfg)
    alone, _ = compute_group_advantages(rewards[:, mask[0] == 1], None, cfg)
    np.testing.assert_allclose(np.asarray(adv)[:, mask[0] == 1], alone, atol=1e-6)
    assert np.all(np.asarray(adv)[:, mask[0] == 0] == 0.0)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators__jit_equals_eager(estimator):
    rewards, mask = random_groups(6)
    cfg = AdvantageConfig(estimator=estimator, k=3)
    eager, _ = compute_group_advantages(rewards, mask, cfg)
    jitted, _ = jax.jit(lambda r, m: compute_group_advantages(r, m, cfg))(rewards, mask)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)


def test_token_advantages__only_sampled_tokens():
    loss_mask = np.array([[0, 1, 1, 0], [0, 0, 1, 1]], np.float32)
    out = token_advantages(np.array([2.0, -1.0]), loss_mask)
    np.testing.assert_array_equal(out, [[0, 2, 2, 0], [0, 0, -1, -1]])


def test_group_layout__round_trip_with_exclusions():
    group_ids = ["t1", "t0", "t1", "t2", "t0", "t1"]
    rewards = [1.0, 0.0, 0.5, 0.2, 1.0, 0.0]
    valid = [True, True, False, True, True, True]
    layout = to_group_layout(group_ids, rewards, valid, group_size=4)
    assert layout.rewards.shape == (3, 4)
    assert layout.group_keys == ("t1", "t0", "t2")
    np.testing.assert_array_equal(layout.mask.sum(1), [2, 2, 1])
    adv, _ = compute_group_advantages(layout.rewards, layout.mask, AdvantageConfig())
    flat = from_group_layout(adv, layout)
    assert flat[2] == 0.0  # the excluded trajectory
    assert flat[0] > 0 > flat[5] and flat[4] > 0 > flat[1] and flat[3] == 0.0
    back = from_group_layout(layout.rewards, layout)[[0, 1, 3]]
    np.testing.assert_array_equal(back, np.array([1, 0, 0.2], np.float32))
    with pytest.raises(ValueError, match="group_size"):
        to_group_layout(group_ids, rewards, group_size=2)


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_pass_at_k_estimator__matches_subset_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = ref.unbiased_pass_at_k_by_enumeration(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_estimator__stable_for_large_n():
    # C(1000, 100) overflows a float; the product form does not. Compared with exact rationals.
    for n, c, k in [(1000, 3, 100), (1000, 900, 10), (500, 1, 1), (2000, 17, 250)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_advantage_config__validates():
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        AdvantageConfig(estimator="grpo_typo")
    with pytest.raises(ValueError):
        AdvantageConfig(k=0)
    with pytest.raises(ValueError):
        AdvantageConfig(std_ddof=2)
    assert set(ESTIMATORS) == set(ADVANTAGE_ESTIMATORS.names())
