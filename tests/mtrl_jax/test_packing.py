import numpy as np
import pytest

from mtrl_jax.packing import (
    PackingConfig,
    first_fit_decreasing,
    pack_trajectories,
    pad_trajectories,
    unpack,
)
from mtrl_jax.types import Trajectory


def make_trajectory(rng, n, per_token=False, version=0):
    tokens = rng.integers(1, 50, n)
    mask = (rng.random(n) < 0.6).astype(np.float32)
    mask[0] = 0.0
    advantages = rng.normal(size=n).astype(np.float32) if per_token else float(rng.normal())
    return Trajectory(
        tokens=tokens,
        loss_mask=mask,
        behaviour_logp=-rng.random(n).astype(np.float32),
        advantages=advantages,
        policy_version=version,
    )


def trajectories(seed, count=13, max_len=17):
    rng = np.random.default_rng(seed)
    return [
        make_trajectory(rng, int(rng.integers(2, max_len + 1)), per_token=i % 2 == 0, version=i)
        for i in range(count)
    ]


def test_first_fit_decreasing__matches_a_reference_loop():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 10, 40).tolist()
    bins, offsets = first_fit_decreasing(lengths, 12)
    # Reference: bins as lists of (item, length), filled longest first (stable), first fit.
    ref_bins = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b in ref_bins:
            if sum(length for _, length in b) + lengths[i] <= 12:
                b.append((i, lengths[i]))
                break
        else:
            ref_bins.append([(i, lengths[i])])
    for b, items in enumerate(ref_bins):
        offset = 0
        for i, length in items:
            assert (bins[i], offsets[i]) == (b, offset)
            offset += length
    lower_bound = -(-sum(lengths) // 12)
    assert len(ref_bins) <= 11 / 9 * lower_bound + 1


def test_pack_trajectories__layout_contract():
    trajs = trajectories(1)
    cfg = PackingConfig(seq_len=24)
    batch, info = pack_trajectories(trajs, cfg)
    b, t = batch.tokens.shape
    assert t == 24 and b == cfg.rows_for(int(info.row.max()) + 1)
    for i, traj in enumerate(trajs):
        r, s, n = info.row[i], info.start[i], info.length[i]
        sl = slice(s, s + n)
        assert n == traj.num_tokens - 1
        np.testing.assert_array_equal(batch.tokens[r, sl], traj.tokens[:-1])
        np.testing.assert_array_equal(batch.targets[r, sl], traj.tokens[1:])
        np.testing.assert_array_equal(batch.positions[r, sl], np.arange(n))
        assert np.all(batch.segment_ids[r, sl] == info.segment[i])
        mask = traj.loss_mask[1:]
        np.testing.assert_array_equal(batch.loss_mask[r, sl], mask)
        np.testing.assert_array_equal(batch.behaviour_logp[r, sl], traj.behaviour_logp[1:] * mask)
        np.testing.assert_array_equal(batch.old_logp[r, sl], batch.behaviour_logp[r, sl])
        adv = np.broadcast_to(np.asarray(traj.advantages, np.float32), (traj.num_tokens,))
        np.testing.assert_array_equal(batch.advantages[r, sl], adv[1:] * mask)
        assert np.all(batch.policy_version[r, sl] == i)
    # Segment ids run 1..n along each row; padding is 0 with nothing to train on.
    for r in range(b):
        ids = [x for x in batch.segment_ids[r] if x]
        assert ids == sorted(ids) and sorted(set(ids)) == list(range(1, len(set(ids)) + 1))
    pad = batch.segment_ids == 0
    assert np.all(batch.loss_mask[pad] == 0) and np.all(batch.advantages[pad] == 0)
    assert np.all(batch.policy_version[pad] == -1)
    # Trajectories never overlap: every slot is covered at most once.
    cover = np.zeros((b, t), int)
    for r, s, n in zip(info.row, info.start, info.length, strict=True):
        cover[r, s : s + n] += 1
    assert cover.max() == 1 and np.array_equal(cover > 0, ~pad)


def test_pack_trajectories__efficiency_and_metrics():
    trajs = trajectories(2, count=20)
    batch, info = pack_trajectories(trajs, PackingConfig(seq_len=32))
    real = sum(t.num_slots for t in trajs)
    assert info.metrics["packing/efficiency"] == pytest.approx(real / batch.tokens.size)
    assert info.metrics["packing/efficiency"] == pytest.approx((batch.segment_ids > 0).mean())
    assert info.metrics["packing/sequences"] == 20
    _, padded_info = pad_trajectories(trajs, PackingConfig(seq_len=32))
    assert info.metrics["packing/efficiency"] > 2 * padded_info.metrics["packing/efficiency"]


def test_pack__unpack_round_trip():
    trajs = trajectories(3)
    batch, info = pack_trajectories(trajs, PackingConfig(seq_len=20))
    for traj, targets in zip(trajs, unpack(batch.targets, info), strict=True):
        np.testing.assert_array_equal(targets, traj.tokens[1:])


def test_pad_trajectories__one_per_row_segment_one():
    trajs = trajectories(4, count=5)
    batch, info = pad_trajectories(trajs, PackingConfig(seq_len=20, rows_multiple=4))
    assert batch.tokens.shape == (8, 20)
    np.testing.assert_array_equal(info.row, np.arange(5))
    for i, traj in enumerate(trajs):
        assert np.all(batch.segment_ids[i, : traj.num_slots] == 1)
        assert np.all(batch.segment_ids[i, traj.num_slots :] == 0)
        np.testing.assert_array_equal(batch.targets[i, : traj.num_slots], traj.tokens[1:])
    assert np.all(batch.segment_ids[5:] == 0)


def test_packing__row_buckets_bound_the_shapes():
    cfg = PackingConfig(seq_len=16, rows_multiple=2)
    shapes = {
        pack_trajectories(trajectories(s, count=c), cfg)[0].tokens.shape
        for s in range(4)
        for c in (1, 5, 9, 17, 30)
    }
    assert {b for b, _ in shapes} <= {2, 4, 8, 16, 32}
    assert all(b % 2 == 0 for b, _ in shapes)
    fixed = PackingConfig(seq_len=16, row_buckets=(4, 12))
    assert pack_trajectories(trajectories(0, count=9), fixed)[0].tokens.shape[0] in (4, 12)
    with pytest.raises(ValueError, match="largest row bucket"):
        pack_trajectories(trajectories(0, count=200), fixed)


def test_packing__overlong_is_an_error_or_truncated_on_request():
    rng = np.random.default_rng(5)
    long = make_trajectory(rng, 30, per_token=True)
    with pytest.raises(ValueError, match="more than seq_len"):
        pack_trajectories([long], PackingConfig(seq_len=20))
    assert pack_trajectories([long], PackingConfig(seq_len=29))[0].tokens.shape == (1, 29)
    batch, info = pack_trajectories([long], PackingConfig(seq_len=20, overlong="truncate"))
    assert info.length[0] == 20 and info.metrics["packing/truncated"] == 1
    np.testing.assert_array_equal(batch.targets[0], long.tokens[1:21])
    np.testing.assert_array_equal(batch.advantages[0], long.advantages[1:21] * long.loss_mask[1:21])


def test_trajectory__validation():
    ok = dict(tokens=np.arange(4), loss_mask=np.array([0, 1, 1, 0]), behaviour_logp=np.zeros(4))
    Trajectory(**ok)
    with pytest.raises(ValueError, match="loss_mask\\[0\\]"):
        Trajectory(**{**ok, "loss_mask": np.array([1, 1, 1, 0])})
    with pytest.raises(ValueError, match="behaviour_logp"):
        Trajectory(**{**ok, "behaviour_logp": np.zeros(3)})
    with pytest.raises(ValueError, match="advantages"):
        Trajectory(**ok, advantages=np.zeros(3))
    with pytest.raises(ValueError, match="at least 2"):
        Trajectory(tokens=np.arange(1), loss_mask=np.zeros(1), behaviour_logp=np.zeros(1))


def test_packing_config__validates():
    with pytest.raises(ValueError):
        PackingConfig(seq_len=0)
    with pytest.raises(ValueError):
        PackingConfig(seq_len=8, rows_multiple=4, row_buckets=(4, 6))
    with pytest.raises(ValueError):
        PackingConfig(seq_len=8, row_buckets=(8, 4))
    with pytest.raises(ValueError):
        PackingConfig(seq_len=8, overlong="split")


def prompt_trajectories(seed, prompts=(9, 6), per_prompt=4):
    """Groups of trajectories starting with the same unmasked prompt, then their own tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for g, p in enumerate(prompts):
        prompt = rng.integers(1, 50, p)
        for i in range(per_prompt):
            rest = make_trajectory(rng, int(rng.integers(2, 8)), per_token=i % 2 == 0, version=g)
            mask = np.concatenate([np.zeros(p, np.float32), rest.loss_mask])
            mask[p] = 1.0  # the first own token is sampled: the prompt ends at p tokens
            out.append(
                Trajectory(
                    tokens=np.concatenate([prompt, rest.tokens]),
                    loss_mask=mask,
                    behaviour_logp=np.concatenate([np.zeros(p, np.float32), rest.behaviour_logp]),
                    advantages=rest.advantages
                    if np.isscalar(rest.advantages)
                    else np.concatenate([np.zeros(p, np.float32), rest.advantages]),
                    policy_version=g,
                )
            )
    return out


def test_pack_trajectories__shared_prefix_stores_a_prompt_once_per_row():
    trajs = prompt_trajectories(0) + trajectories(2, count=3)
    cfg = PackingConfig(seq_len=40, share_prefix=4)
    batch, info = pack_trajectories(trajs, cfg)
    plain, plain_info = pack_trajectories(trajs, PackingConfig(seq_len=40))
    assert plain.parent_ids is None and batch.parent_ids is not None
    # Every trajectory's slots come back whole, with the same per-slot values as unshared.
    for field in ("tokens", "targets", "positions", "loss_mask", "advantages", "behaviour_logp"):
        shared_vals = unpack(getattr(batch, field), info)
        plain_vals = unpack(getattr(plain, field), plain_info)
        for traj, a, b in zip(trajs, shared_vals, plain_vals, strict=True):
            assert len(a) == traj.num_slots
            np.testing.assert_array_equal(a, b)
    # Eight prompt trajectories share: prompt p has p - 1 shareable slots (p tokens, and the
    # target of slot p - 1 is the first sampled token).
    shared = info.prefix_length > 0
    assert shared[:8].all() and not shared[8:].any()
    assert set(info.prefix_length[:4]) == {8} and set(info.prefix_length[4:8]) == {5}
    for i in range(len(trajs)):
        r, s, n = info.row[i], info.start[i], info.length[i]
        own = batch.segment_ids[r, s : s + n]
        assert np.all(own == info.segment[i])
        if info.prefix_length[i]:
            p, k = info.prefix_start[i], info.prefix_length[i]
            prefix_seg = batch.segment_ids[r, p]
            assert prefix_seg != info.segment[i] and p + k <= s
            assert np.all(batch.segment_ids[r, p : p + k] == prefix_seg)
            assert np.all(batch.parent_ids[r, s : s + n] == prefix_seg)
            assert np.all(batch.loss_mask[r, p : p + k] == 0)
            np.testing.assert_array_equal(batch.positions[r, s : s + n], np.arange(k, k + n))
        else:
            assert np.all(batch.parent_ids[r, s : s + n] == info.segment[i])
    # Segment ids still increase along each row; padding is 0 in both id arrays.
    for r in range(batch.tokens.shape[0]):
        ids = [x for x in batch.segment_ids[r] if x]
        assert ids == sorted(ids) and set(ids) == set(range(1, len(set(ids)) + 1))
    pad = batch.segment_ids == 0
    assert np.all(batch.parent_ids[pad] == 0)
    assert batch.tokens.size * info.metrics["packing/efficiency"] == (~pad).sum()
    assert (~pad).sum() + info.metrics["packing/shared_slots"] == sum(t.num_slots for t in trajs)


def test_pack_trajectories__shared_prefix_respects_minimum_and_row_length():
    trajs = prompt_trajectories(1, prompts=(9,), per_prompt=4)
    _, info = pack_trajectories(trajs, PackingConfig(seq_len=40, share_prefix=9))
    assert not info.prefix_length.any()  # 8 shareable slots < 9
    # A row of 20 holds the 8-slot prompt and only the continuations that fit beside it.
    batch, info = pack_trajectories(trajs, PackingConfig(seq_len=20, share_prefix=2))
    for r in range(batch.tokens.shape[0]):
        members = np.flatnonzero(info.row == r)
        prefixes = {info.prefix_start[m] for m in members if info.prefix_length[m]}
        used = sum(info.length[m] for m in members) + 8 * len(prefixes)
        assert used <= 20
    for traj, targets in zip(trajs, unpack(batch.targets, info), strict=True):
        np.testing.assert_array_equal(targets, traj.tokens[1:])


def test_pack_trajectories__shares_no_loss_slot():
    # Identical sampled tokens after the prompt stay in each trajectory's own segment.
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 50, 12)
    mask = np.zeros(12, np.float32)
    mask[6:] = 1.0
    same = [
        Trajectory(
            tokens=tokens,
            loss_mask=mask,
            behaviour_logp=np.zeros(12, np.float32),
            advantages=a,
            policy_version=0,
        )
        for a in (1.0, -1.0)
    ]
    batch, info = pack_trajectories(same, PackingConfig(seq_len=40, share_prefix=2))
    assert list(info.prefix_length) == [5, 5] and list(info.length) == [6, 6]
    assert batch.loss_mask.sum() == 12
    np.testing.assert_array_equal(sorted(batch.advantages[batch.loss_mask > 0]), [-1] * 6 + [1] * 6)
