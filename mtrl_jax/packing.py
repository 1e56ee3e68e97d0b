"""Sequence packing: trajectories into fixed ``[B, T]`` train batches, host side (numpy).

A trajectory of ``n`` tokens becomes ``n - 1`` (input, target) slots: slot ``j`` holds token
``j`` as input and token ``j + 1`` as target, with the target's loss mask, sampler log-prob,
advantage and policy version. Trajectories are shifted *before* packing, so no slot ever
predicts across a segment boundary and no slot is wasted on it.

``pack_trajectories`` places them by first-fit decreasing (longest first, each into the first
row with room), numbers them 1..n within each row (``segment_ids``, 0 = padding) and restarts
``positions`` at 0 for each. ``pad_trajectories`` gives the unpacked layout (one per row) with
the same contract, so the two give identical losses with a model that respects segment ids.

**Shared prefixes** (``PackingConfig.share_prefix``). The episodes of a GRPO group start with
the same prompt, and every task of an environment with the same system prompt and tool list, so
most of a batch's slots can be the same prompt over and over. With ``share_prefix = m > 0``,
trajectories whose first ``m`` or more slots agree (same input and target tokens, all outside
the loss mask) are packed as a *tree* in one row: the common slots once, as a segment of their
own, then each trajectory's remaining slots as a segment whose ``parent_ids`` name the prefix
and whose positions continue it. Attention lets a slot see its own segment and its parent's
(``mtrl_jax.models.attention``), so every slot computes exactly what it computes unshared, and
the prefix's gradient collects every continuation's contribution, as it would unshared. Only
slots outside the loss mask are shared, so the loss, its normalisers and per-sequence
aggregation are unchanged. Trajectories are grouped greedily in lexicographic token order; a
tree never exceeds one row.

Recompiles are bounded by bucketing: ``T`` is fixed by the config, and the number of rows ``B``
is rounded up to a bucket (by default ``rows_multiple`` times a power of two), so a run sees at
most a handful of distinct batch shapes.

Non-goals: splitting a trajectory across rows (a trajectory longer than ``T`` is an error, or is
truncated on request), balancing rows across devices (sharding's job).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from mtrl_jax.types import TrainBatch, Trajectory


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackingConfig:
    """How trajectories become batch rows.

    Attributes:
        seq_len: ``T``, slots per row. A trajectory of ``n`` tokens needs ``n - 1`` slots.
        rows_multiple: ``B`` is always a multiple of this (micro-batches times data-parallel
            devices, so the batch splits evenly).
        row_buckets: the allowed values of ``B``, ascending; each a multiple of
            ``rows_multiple``. None: ``rows_multiple * 2**i``, unbounded.
        overlong: ``"error"`` raises on a trajectory longer than ``seq_len + 1`` tokens;
            ``"truncate"`` keeps its first ``seq_len + 1`` tokens (later turns are dropped, the
            trajectory keeps its advantage: a documented bias, reported as
            ``packing/truncated``).
        share_prefix: 0 packs every trajectory whole. ``m > 0`` stores a prompt of at least
            ``m`` slots that several trajectories start with once per row (see the module
            docstring); batches then carry ``parent_ids``. Rows must be long enough to hold a
            prompt and several continuations for it to save anything.
    """

    seq_len: int
    rows_multiple: int = 1
    row_buckets: tuple[int, ...] | None = None
    overlong: Literal["error", "truncate"] = "error"
    share_prefix: int = 0

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.rows_multiple < 1:
            raise ValueError("seq_len and rows_multiple must be >= 1")
        if self.share_prefix < 0:
            raise ValueError(f"share_prefix must be >= 0 (0: off), got {self.share_prefix}")
        if self.overlong not in ("error", "truncate"):
            raise ValueError(f"overlong must be 'error' or 'truncate', got {self.overlong!r}")
        if self.row_buckets is not None:
            buckets = self.row_buckets
            if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
                raise ValueError("row_buckets must be positive, strictly ascending")
            if any(b % self.rows_multiple for b in buckets):
                raise ValueError(f"every row bucket must be a multiple of {self.rows_multiple}")

    def rows_for(self, needed: int) -> int:
        """The bucketed number of rows for ``needed`` rows."""
        if self.row_buckets is None:
            rows = self.rows_multiple
            while rows < needed:
                rows *= 2
            return rows
        for rows in self.row_buckets:
            if rows >= needed:
                return rows
        raise ValueError(f"{needed} rows needed, the largest row bucket is {self.row_buckets[-1]}")


class PackingInfo(NamedTuple):
    """Where each trajectory went, and how full the batch is.

    Attributes:
        row: ``[N]`` row of each trajectory.
        start: ``[N]`` first slot of each trajectory's own segment in its row.
        length: ``[N]`` slots of its own segment (``n - 1`` after any truncation, less its
            shared prefix).
        segment: ``[N]`` its segment id in its row (1-based).
        prefix_start: ``[N]`` first slot of its shared prefix in the row, -1 without one.
        prefix_length: ``[N]`` slots of its shared prefix (0 without one): the trajectory's
            slots are ``prefix_length`` slots at ``prefix_start`` then ``length`` at ``start``.
        metrics: ``packing/efficiency`` (occupied slots / ``B * T``), ``packing/rows``,
            ``packing/rows_used``, ``packing/sequences``, ``packing/truncated``,
            ``packing/shared_slots`` (slots not computed again thanks to shared prefixes).
    """

    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    segment: np.ndarray
    prefix_start: np.ndarray
    prefix_length: np.ndarray
    metrics: dict[str, float]


def _lengths(trajectories: Sequence[Trajectory], cfg: PackingConfig) -> np.ndarray:
    """Slots per trajectory, after the overlong policy."""
    slots = np.array([t.num_slots for t in trajectories], np.int64)
    too_long = np.flatnonzero(slots > cfg.seq_len)
    if too_long.size and cfg.overlong == "error":
        i = int(too_long[0])
        raise ValueError(
            f"trajectory {i} has {slots[i] + 1} tokens, more than seq_len + 1 = {cfg.seq_len + 1}"
            " (raise seq_len, or set overlong='truncate')"
        )
    return np.minimum(slots, cfg.seq_len)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Bins items by first-fit decreasing; returns each item's ``(bin, offset)``.

    Items are taken longest first (ties by index, so the result is deterministic) and each goes
    into the first bin with room, which uses at most ``11/9 OPT + 1`` bins (Johnson 1973).

    Example:
        >>> bins, offsets = first_fit_decreasing([3, 5, 2, 4], capacity=7)
        >>> bins.tolist(), offsets.tolist()
        ([1, 0, 0, 1], [4, 0, 5, 0])
    """
    bins = np.zeros(len(lengths), np.int64)
    offsets = np.zeros(len(lengths), np.int64)
    free: list[int] = []  # room left in each open bin
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = int(lengths[i])
        target = next((b for b, room in enumerate(free) if room >= size), len(free))
        if target == len(free):
            free.append(capacity)
        bins[i], offsets[i] = target, capacity - free[target]
        free[target] -= size
    return bins, offsets


def _per_token(value: float | np.ndarray, n: int, dtype: type) -> np.ndarray:
    """A per-trajectory scalar broadcast to ``[n]``, or a per-token array as is."""
    return np.broadcast_to(np.asarray(value, dtype), (n,))


class _Group(NamedTuple):
    """Trajectories packed together: ``shared`` common slots stored once, then each one's rest."""

    members: list[int]
    shared: int


def _leading_unmasked(traj: Trajectory, slots: int) -> int:
    """How many of the first ``slots`` slots have a target outside the loss mask."""
    mask = np.asarray(traj.loss_mask)[1 : slots + 1]
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else slots


def _common_tokens(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def _prefix_groups(
    trajectories: Sequence[Trajectory], length: np.ndarray, cfg: PackingConfig
) -> list[_Group]:
    """Greedy shared-prefix groups over the trajectories in lexicographic token order.

    A trajectory joins the open group while the group's common unmasked prefix stays at least
    ``cfg.share_prefix`` slots, every member keeps at least one slot of its own, and the tree
    (prefix once plus every member's rest) fits in one row; otherwise it opens the next group.
    """
    tokens = [np.asarray(t.tokens)[: n + 1] for t, n in zip(trajectories, length, strict=True)]
    # Shareable slots of each alone: unmasked targets, and one slot left for its own segment.
    cap = [
        min(_leading_unmasked(t, int(n)), int(n) - 1)
        for t, n in zip(trajectories, length, strict=True)
    ]
    order = sorted(range(len(tokens)), key=lambda i: (tokens[i].tolist(), i))
    groups: list[_Group] = []
    members: list[int] = []
    shared = 0
    for i in order:
        if members:
            # Slot j is shared when tokens j and j + 1 agree: at most common - 1 slots.
            common = _common_tokens(tokens[members[-1]], tokens[i])
            joined = min(shared, common - 1, cap[i])
            size = joined + sum(int(length[m]) - joined for m in [*members, i])
            if joined >= cfg.share_prefix and size <= cfg.seq_len:
                members.append(i)
                shared = joined
                continue
            groups.append(_Group(members, shared if len(members) > 1 else 0))
        members, shared = [i], cap[i]
    if members:
        groups.append(_Group(members, shared if len(members) > 1 else 0))
    return groups


def _place(
    groups: Sequence[_Group], length: np.ndarray, cfg: PackingConfig
) -> tuple[PackingInfo, int]:
    """Rows and slots of every group (first-fit decreasing over whole groups)."""
    sizes = [g.shared + sum(int(length[m]) - g.shared for m in g.members) for g in groups]
    bins, offsets = first_fit_decreasing(sizes, cfg.seq_len)
    n = len(length)
    row, start, own = (np.zeros(n, np.int64) for _ in range(3))
    prefix_start, prefix_length = np.full(n, -1, np.int64), np.zeros(n, np.int64)
    for g, b, offset in zip(groups, bins, offsets, strict=True):
        at = int(offset) + g.shared
        for m in g.members:
            row[m], start[m], own[m] = b, at, length[m] - g.shared
            if g.shared:
                prefix_start[m], prefix_length[m] = offset, g.shared
            at += own[m]
    needed = int(bins.max()) + 1 if len(groups) else 0
    info = PackingInfo(row, start, own, np.zeros(n, np.int64), prefix_start, prefix_length, {})
    return info, needed


def _build(
    trajectories: Sequence[Trajectory],
    place: PackingInfo,
    needed_rows: int,
    cfg: PackingConfig,
) -> tuple[TrainBatch, PackingInfo]:
    """Writes the trajectories (and their shared prefixes) into bucketed ``[B, T]`` arrays."""
    b, t = cfg.rows_for(needed_rows), cfg.seq_len
    ints = {k: np.zeros((b, t), np.int32) for k in ("tokens", "targets", "positions", "segs")}
    parents = np.zeros((b, t), np.int32)
    floats = {k: np.zeros((b, t), np.float32) for k in ("mask", "adv", "behaviour")}
    version = np.full((b, t), -1, np.int32)
    # Pieces (row, start, trajectory, first slot, slots, is a prefix): each trajectory's own
    # segment, and each shared prefix once (written from its first member).
    pieces = []
    prefixes_written: set[tuple[int, int]] = set()
    for i in range(len(trajectories)):
        own_first = int(place.prefix_length[i])
        pieces.append((place.row[i], place.start[i], i, own_first, place.length[i], False))
        if own_first and (place.row[i], place.prefix_start[i]) not in prefixes_written:
            prefixes_written.add((place.row[i], place.prefix_start[i]))
            pieces.append((place.row[i], place.prefix_start[i], i, 0, own_first, True))
    segment = np.zeros(len(trajectories), np.int64)
    prefix_segment: dict[tuple[int, int], int] = {}
    count = np.zeros(b, np.int64)
    for r, s, i, first, n, is_prefix in sorted(pieces, key=lambda p: (p[0], p[1])):
        traj = trajectories[i]
        count[r] += 1
        if is_prefix:
            prefix_segment[(r, s)] = count[r]
        else:
            segment[i] = count[r]
        sl, src = slice(s, s + n), slice(first + 1, first + n + 1)  # src: the targets' indices
        tokens = np.asarray(traj.tokens)
        mask = np.asarray(traj.loss_mask, np.float32)[src]
        ints["tokens"][r, sl], ints["targets"][r, sl] = tokens[first : first + n], tokens[src]
        ints["positions"][r, sl] = np.arange(first, first + n)
        ints["segs"][r, sl] = count[r]
        parents[r, sl] = (
            count[r] if is_prefix or not first else prefix_segment[(r, place.prefix_start[i])]
        )
        floats["mask"][r, sl] = mask
        floats["behaviour"][r, sl] = np.asarray(traj.behaviour_logp, np.float32)[src] * mask
        adv = _per_token(traj.advantages, traj.num_tokens, np.float32)[src]
        floats["adv"][r, sl] = adv * mask
        version[r, sl] = _per_token(traj.policy_version, traj.num_tokens, np.int32)[src]
    batch = TrainBatch(
        tokens=ints["tokens"],
        targets=ints["targets"],
        positions=ints["positions"],
        segment_ids=ints["segs"],
        loss_mask=floats["mask"],
        advantages=floats["adv"],
        behaviour_logp=floats["behaviour"],
        old_logp=floats["behaviour"].copy(),
        policy_version=version,
        parent_ids=parents if cfg.share_prefix else None,
    )
    stored_prefixes = sum(n for *_, n, is_prefix in pieces if is_prefix)
    metrics = {
        "packing/efficiency": float(place.length.sum() + stored_prefixes) / (b * t),
        "packing/rows": float(b),
        "packing/rows_used": float(needed_rows),
        "packing/sequences": float(len(trajectories)),
        "packing/truncated": float(sum(tr.num_slots > cfg.seq_len for tr in trajectories)),
        "packing/shared_slots": float(place.prefix_length.sum() - stored_prefixes),
    }
    return batch, place._replace(segment=segment, metrics=metrics)


def pack_trajectories(
    trajectories: Sequence[Trajectory], cfg: PackingConfig
) -> tuple[TrainBatch, PackingInfo]:
    """Packs trajectories into ``[B, T]`` rows by first-fit decreasing.

    Args:
        trajectories: the trajectories, each with ``n >= 2`` tokens.
        cfg: row length, row bucketing, the overlong policy and prefix sharing.

    Returns:
        A ``TrainBatch`` of numpy arrays (``old_logp`` = ``behaviour_logp`` until recomputed;
        ``parent_ids`` set iff ``cfg.share_prefix``) and a ``PackingInfo`` with each
        trajectory's place and the packing metrics.

    Raises:
        ValueError: a trajectory is longer than ``seq_len + 1`` tokens (with
            ``overlong="error"``), or the rows needed exceed the largest bucket.
    """
    length = _lengths(trajectories, cfg)
    if cfg.share_prefix:
        groups = _prefix_groups(trajectories, length, cfg)
    else:
        groups = [_Group([i], 0) for i in range(len(trajectories))]
    place, needed = _place(groups, length, cfg)
    return _build(trajectories, place, needed, cfg)


def pad_trajectories(
    trajectories: Sequence[Trajectory], cfg: PackingConfig
) -> tuple[TrainBatch, PackingInfo]:
    """The unpacked layout: trajectory ``i`` alone in row ``i`` (segment 1), rows bucketed.

    Never shares prefixes (``parent_ids`` is None), whatever ``cfg.share_prefix`` says.
    """
    cfg = dataclasses.replace(cfg, share_prefix=0)
    length = _lengths(trajectories, cfg)
    n = len(trajectories)
    row = np.arange(n, dtype=np.int64)
    zeros = np.zeros(n, np.int64)
    place = PackingInfo(row, zeros, length, zeros, np.full(n, -1, np.int64), zeros.copy(), {})
    return _build(trajectories, place, n, cfg)


def unpack(values: np.ndarray, info: PackingInfo) -> list[np.ndarray]:
    """Per-slot ``[B, T]`` values (e.g. log-probs) back to one ``[n - 1]`` array per trajectory.

    A shared prefix's slots are repeated for every trajectory that starts with it.
    """
    values = np.asarray(values)
    out = []
    for i, (r, s, n) in enumerate(zip(info.row, info.start, info.length, strict=True)):
        own = values[r, s : s + n]
        p, k = info.prefix_start[i], info.prefix_length[i]
        out.append(np.concatenate([values[r, p : p + k], own]) if k else own)
    return out
