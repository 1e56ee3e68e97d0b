"""Overlong handling of a round's episodes before advantages: DAPO's soft penalty or filter.

An episode that runs into a length limit gets cut, and the reward of a cut attempt says little
about the attempt (DAPO calls it reward noise). Two remedies from DAPO (Yu et al. 2025, arXiv
2503.14476, section 3.4), chosen by :attr:`OverlongConfig.mode`:

- ``penalty`` (soft overlong punishment): ``r <- r + s * p(L)`` with ``p`` falling linearly from
  0 to -1 over the last ``buffer`` tokens before ``max_tokens`` (:func:`overlong_penalty`), so
  the policy learns to finish before the cut instead of being told so only by a cut.
- ``mask`` (overlong filtering): truncated episodes keep their place in the group baseline but
  leave the training batch, i.e. their tokens get no loss (:func:`truncated_episodes`).

**Where length is measured.** ``L`` is the episode's *sampled* tokens: the policy's tokens over
all turns (``loss_mask.sum()`` of the record, every training sample of a per-turn split
included). Prompt, chat-template and environment text are left out: the policy did not choose
them, and penalising them would punish calling a tool with a long answer. ``max_tokens`` is
``L_max`` and must be set to the limit that actually cuts the policy: for one-turn tasks
``rollout.max_new_tokens`` (exactly DAPO's response length), for multi-turn episodes the sampled
token budget ``sampler.max_episode_tokens``. That budget is per sampler session, so it bounds a
whole episode only in ``extended`` mode; a per-turn split starts a fresh session, and ``L`` may
then exceed it, which the penalty's -1 region covers.

**What counts as truncated** (``mask``): status ``truncated`` (the context filled up, or the
environment cut the episode at its turn, token or time limit: the Gymnasium ``truncated`` flag),
or, when ``max_tokens`` is set, ``L >= max_tokens`` (the sampler's budget ran out: the
environment then sees an empty or partial action, which it may score as a format error rather
than a truncation). One turn of a multi-turn episode cut by ``rollout.max_new_tokens`` is not
seen as such: records keep no stop reasons, and the episode may well have recovered.

Shaped rewards feed the advantages only; records keep the environment's reward, so
``rollout/return_mean`` and success rates stay comparable across modes. Metrics:
``rollout/overlong_penalty_mean`` (mean ``s * p(L)`` over included episodes),
``rollout/overlong_penalized`` (episodes with ``p < 0``), ``rollout/overlong_masked``.

Non-goals: per-turn penalties (one episode, one reward), cutting episodes (the sampler's and the
environment's job), refilling a batch that masking shrank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, NamedTuple, get_args

import numpy as np

OverlongMode = Literal["none", "penalty", "mask"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OverlongConfig:
    """Overlong reward shaping or filtering (YAML ``rollout.overlong``).

    Attributes:
        mode: ``none``; ``penalty`` (DAPO soft overlong punishment, added to the reward);
            ``mask`` (DAPO overlong filtering: truncated episodes get no loss).
        max_tokens: ``L_max`` in sampled tokens of one episode (see the module docstring for
            which limit to copy). Required by ``penalty``; with ``mask``, episodes reaching it
            count as truncated too.
        buffer: the soft-punishment interval ``B`` (``penalty``): the penalty starts after
            ``max_tokens - buffer`` sampled tokens and reaches -1 at ``max_tokens``. DAPO used
            4096 of 20480.
        penalty_scale: ``s``, multiplies the penalty (1 for rewards in [0, 1], as in DAPO).
    """

    mode: OverlongMode = "none"
    max_tokens: int | None = None
    buffer: int = 0
    penalty_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in get_args(OverlongMode):
            raise ValueError(f"mode must be one of {get_args(OverlongMode)}, got {self.mode!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or null, got {self.max_tokens}")
        if self.mode == "penalty":
            if self.max_tokens is None:
                raise ValueError("mode penalty needs max_tokens (L_max, sampled tokens)")
            if not 1 <= self.buffer <= self.max_tokens:
                raise ValueError(
                    f"mode penalty needs 1 <= buffer <= max_tokens ({self.max_tokens}), "
                    f"got buffer={self.buffer}"
                )
        elif self.buffer:
            raise ValueError(f"buffer is only used with mode penalty, got mode {self.mode!r}")
        if not self.penalty_scale >= 0.0:
            raise ValueError(f"penalty_scale must be >= 0, got {self.penalty_scale}")


def overlong_penalty(lengths: np.ndarray, max_tokens: int, buffer: int) -> np.ndarray:
    """DAPO's soft overlong punishment of each length, in ``[-1, 0]``.

    ``p(L) = 0`` for ``L <= L_max - B``, ``(L_max - B - L) / B`` for ``L_max - B < L <= L_max``
    and ``-1`` for ``L > L_max`` (Yu et al. 2025, arXiv 2503.14476, eq. 13).

    Example:
        >>> overlong_penalty(np.array([6, 8, 9, 10, 12]), max_tokens=10, buffer=4).tolist()
        [0.0, -0.5, -0.75, -1.0, -1.0]
    """
    ramp = (max_tokens - buffer - np.asarray(lengths, np.float64)) / buffer
    return np.clip(ramp, -1.0, 0.0).astype(np.float32)


def truncated_episodes(
    lengths: np.ndarray, statuses: Sequence[str], max_tokens: int | None
) -> np.ndarray:
    """Which episodes were cut: status ``truncated``, or ``L >= max_tokens`` when it is set.

    Example:
        >>> truncated_episodes(np.array([3, 10, 4]), ["ok", "ok", "truncated"], 10).tolist()
        [False, True, True]
    """
    cut = np.array([s == "truncated" for s in statuses], bool)
    if max_tokens is not None:
        cut |= np.asarray(lengths) >= max_tokens
    return cut


class ShapedRound(NamedTuple):
    """A round's rewards for the advantages, and which episodes train.

    Attributes:
        rewards: ``[N]`` float32 rewards after the penalty (the input where it is off).
        train_mask: ``[N]`` False for episodes ``mask`` mode keeps out of the loss.
        metrics: ``rollout/overlong_*`` scalars.
    """

    rewards: np.ndarray
    train_mask: np.ndarray
    metrics: dict[str, float]


def shape_overlong(
    rewards: Sequence[float] | np.ndarray,
    lengths: Sequence[int] | np.ndarray,
    statuses: Sequence[str],
    cfg: OverlongConfig,
) -> ShapedRound:
    """Applies ``cfg`` to the included episodes of a round (host side, numpy).

    Args:
        rewards: ``[N]`` the environment's rewards.
        lengths: ``[N]`` sampled tokens of each episode (``L``).
        statuses: ``[N]`` episode statuses.
        cfg: the mode and its limits.

    Returns:
        The shaped rewards, the train mask and the metrics (see :class:`ShapedRound`).
    """
    rewards = np.asarray(rewards, np.float32).reshape(-1)
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    penalty = np.zeros_like(rewards)
    train = np.ones(len(rewards), bool)
    if cfg.mode == "penalty":
        assert cfg.max_tokens is not None  # OverlongConfig guarantees it
        penalty = cfg.penalty_scale * overlong_penalty(lengths, cfg.max_tokens, cfg.buffer)
    elif cfg.mode == "mask":
        train = ~truncated_episodes(lengths, statuses, cfg.max_tokens)
    metrics = {
        "rollout/overlong_penalty_mean": float(penalty.mean()) if len(penalty) else 0.0,
        "rollout/overlong_penalized": float((penalty < 0).sum()),
        "rollout/overlong_masked": float((~train).sum()),
    }
    return ShapedRound((rewards + penalty).astype(np.float32), train, metrics)
