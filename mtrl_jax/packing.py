"""Sequence packing: trajectories into fixed ``[B, T]`` train batches, host side (numpy).

A trajectory of ``n`` tokens becomes ``n - 1`` (input, target) slots: slot ``j`` holds token
``j`` as input and token ``j + 1`` as target, with the target's loss mask, sampler log-prob,
advantage and policy version. Trajectories are shifted *before* packing, so no slot ever
predicts across a segment boundary and no slot is wasted on it.

``pack_trajectories`` places them by first-fit decreasing (longest first, each into the first
row with room), numbers them 1..n within each row (``segment_ids``, 0 = padding) and restarts
``positions`` at 0 for each. ``pad_trajectories`` gives the unpacked layout (one per row) with
the same contract, so the two give identical losses with a model that respects segment ids.

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
    """

    seq_len: int
    rows_multiple: int = 1
    row_buckets: tuple[int, ...] | None = None
    overlong: Literal["error", "truncate"] = "error"

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.rows_multiple < 1:
            raise ValueError("seq_len and rows_multiple must be >= 1")
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
        start: ``[N]`` first slot of each trajectory in its row.
        length: ``[N]`` slots it occupies (``n - 1``, after any truncation).
        segment: ``[N]`` its segment id in its row (1-based).
        metrics: ``packing/efficiency`` (occupied slots / ``B * T``), ``packing/rows``,
            ``packing/rows_used``, ``packing/sequences``, ``packing/truncated``.
    """

    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    segment: np.ndarray
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


def _build(
    trajectories: Sequence[Trajectory],
    row: np.ndarray,
    start: np.ndarray,
    length: np.ndarray,
    needed_rows: int,
    cfg: PackingConfig,
) -> tuple[TrainBatch, PackingInfo]:
    """Writes the trajectories into bucketed ``[B, T]`` arrays at the given places."""
    b, t = cfg.rows_for(needed_rows), cfg.seq_len
    ints = {k: np.zeros((b, t), np.int32) for k in ("tokens", "targets", "positions", "segs")}
    floats = {k: np.zeros((b, t), np.float32) for k in ("mask", "adv", "behaviour")}
    version = np.full((b, t), -1, np.int32)
    segment = np.zeros(len(trajectories), np.int64)
    count = np.zeros(b, np.int64)
    for i in np.lexsort((start, row)):  # left to right in each row, so ids increase along it
        traj, r, s, n = trajectories[i], row[i], start[i], length[i]
        count[r] += 1
        segment[i] = count[r]
        sl = slice(s, s + n)
        tokens = np.asarray(traj.tokens)[: n + 1]
        mask = np.asarray(traj.loss_mask, np.float32)[1 : n + 1]
        ints["tokens"][r, sl], ints["targets"][r, sl] = tokens[:-1], tokens[1:]
        ints["positions"][r, sl] = np.arange(n)
        ints["segs"][r, sl] = segment[i]
        floats["mask"][r, sl] = mask
        floats["behaviour"][r, sl] = np.asarray(traj.behaviour_logp, np.float32)[1 : n + 1] * mask
        adv = _per_token(traj.advantages, traj.num_tokens, np.float32)[1 : n + 1]
        floats["adv"][r, sl] = adv * mask
        version[r, sl] = _per_token(traj.policy_version, traj.num_tokens, np.int32)[1 : n + 1]
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
    )
    metrics = {
        "packing/efficiency": float(length.sum()) / (b * t),
        "packing/rows": float(b),
        "packing/rows_used": float(needed_rows),
        "packing/sequences": float(len(trajectories)),
        "packing/truncated": float(sum(tr.num_slots > cfg.seq_len for tr in trajectories)),
    }
    return batch, PackingInfo(row, start, length, segment, metrics)


def pack_trajectories(
    trajectories: Sequence[Trajectory], cfg: PackingConfig
) -> tuple[TrainBatch, PackingInfo]:
    """Packs trajectories into ``[B, T]`` rows by first-fit decreasing.

    Args:
        trajectories: the trajectories, each with ``n >= 2`` tokens.
        cfg: row length, row bucketing and the overlong policy.

    Returns:
        A ``TrainBatch`` of numpy arrays (``old_logp`` = ``behaviour_logp`` until recomputed) and
        a ``PackingInfo`` with each trajectory's place and the packing metrics.

    Raises:
        ValueError: a trajectory is longer than ``seq_len + 1`` tokens (with
            ``overlong="error"``), or the rows needed exceed the largest bucket.
    """
    length = _lengths(trajectories, cfg)
    row, start = first_fit_decreasing(length.tolist(), cfg.seq_len)
    needed = int(row.max()) + 1 if len(trajectories) else 0
    return _build(trajectories, row, start, length, needed, cfg)


def pad_trajectories(
    trajectories: Sequence[Trajectory], cfg: PackingConfig
) -> tuple[TrainBatch, PackingInfo]:
    """The unpacked layout: trajectory ``i`` alone in row ``i`` (segment 1), rows bucketed."""
    length = _lengths(trajectories, cfg)
    row = np.arange(len(trajectories), dtype=np.int64)
    return _build(trajectories, row, np.zeros_like(row), length, len(trajectories), cfg)


def unpack(values: np.ndarray, info: PackingInfo) -> list[np.ndarray]:
    """Per-slot ``[B, T]`` values (e.g. log-probs) back to one ``[n - 1]`` array per trajectory."""
    values = np.asarray(values)
    return [values[r, s : s + n] for r, s, n in zip(info.row, info.start, info.length, strict=True)]
