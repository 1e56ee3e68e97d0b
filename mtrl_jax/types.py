# ruff: noqa: F722
# (F722: jaxtyping shape strings such as "B T" are not Python expressions; ruff parses them as
# forward references. They are documentation and, where jaxtyping is installed, checkable types.)
"""Data that crosses the learner's boundaries: the host-side trajectory and the train batch.

``Trajectory`` is what packing consumes: plain numpy, one per sampled episode, token-aligned
(index ``i`` describes token ``i``). ``TrainBatch`` is what the jitted train step consumes: a
pytree of ``[B, T]`` arrays aligned with *targets* (slot ``t`` predicts ``targets[b, t]`` from
``tokens[b, :t + 1]`` of the same segment), packed or one trajectory per row.

Also the shape-annotation aliases ``Float``, ``Int``, ``Bool``: jaxtyping's when it is installed,
otherwise stand-ins that read the same and resolve to ``jax.Array``.

Non-goals: the full rollout record (messages, eval, timings: the rollout module's), sharding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import struct

try:  # jaxtyping is optional: the annotations document shapes either way.
    from jaxtyping import Array, Bool, Float, Int
except ImportError:  # pragma: no cover - depends on the environment
    Array = jax.Array

    class _Shaped:
        """Stand-in for jaxtyping's ``Float[Array, "B T"]``: subscripting gives the array type."""

        def __class_getitem__(cls, params: Any) -> Any:
            return params[0] if isinstance(params, tuple) else params

    class Float(_Shaped):  # noqa: D101
        pass

    class Int(_Shaped):  # noqa: D101
        pass

    class Bool(_Shaped):  # noqa: D101
        pass


__all__ = ["Array", "Bool", "Float", "Int", "TrainBatch", "Trajectory"]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Trajectory:
    """One sampled trajectory as packing needs it (host side, numpy, token-aligned).

    ``n`` is the number of tokens: prompt, sampled turns and env text, as one sequence. Index
    ``i`` of every per-token array describes token ``i``; the learner trains on predicting token
    ``i`` from tokens ``< i`` wherever ``loss_mask[i] == 1``.

    Attributes:
        tokens: ``[n]`` token ids, exactly as the sampler saw them (never re-tokenised).
        loss_mask: ``[n]`` 1 where the policy sampled the token, 0 for prompt and env text.
            Token 0 has no context to predict it from, so it must be 0.
        behaviour_logp: ``[n]`` the sampler's log-prob of each sampled token (ignored where the
            mask is 0).
        advantages: one advantage for the whole trajectory, or ``[n]`` per token.
        policy_version: the policy version that sampled it, one int or ``[n]`` per token (turns
            of one trajectory may come from different versions under async rollout).
    """

    tokens: np.ndarray  # [n] int
    loss_mask: np.ndarray  # [n] {0, 1}
    behaviour_logp: np.ndarray  # [n] float32
    advantages: float | np.ndarray = 0.0  # scalar or [n]
    policy_version: int | np.ndarray = 0  # scalar or [n]

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if np.ndim(self.tokens) != 1 or n < 2:
            raise ValueError(
                f"tokens must be 1-D with at least 2 tokens, got shape {np.shape(self.tokens)}"
            )
        for name in ("loss_mask", "behaviour_logp"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(f"{name} has shape {np.shape(getattr(self, name))}, tokens ({n},)")
        for name in ("advantages", "policy_version"):
            if np.ndim(getattr(self, name)) not in (0, 1) or (
                np.ndim(getattr(self, name)) == 1 and np.shape(getattr(self, name)) != (n,)
            ):
                raise ValueError(f"{name} must be a scalar or have shape ({n},)")
        if self.loss_mask[0] != 0:
            raise ValueError("loss_mask[0] must be 0: nothing predicts the first token")

    @property
    def num_tokens(self) -> int:
        """Number of tokens ``n``."""
        return len(self.tokens)

    @property
    def num_slots(self) -> int:
        """Slots this trajectory fills in a batch row: ``n - 1`` (input, target) pairs."""
        return len(self.tokens) - 1


@struct.dataclass
class TrainBatch:
    """The train step's input: ``[B, T]`` arrays aligned with ``targets``.

    Slot ``t`` of row ``b`` asks for ``log pi(targets[b, t] | tokens[b, s..t])`` where ``s`` is
    where its segment starts. A row holds one trajectory (unpacked) or several (packed), told
    apart by ``segment_ids``; positions restart at 0 for every segment, so a model that respects
    segments gives identical log-probs either way.

    Attributes:
        tokens: ``[B, T]`` input ids.
        targets: ``[B, T]`` the next token of the same segment (0 in padding).
        positions: ``[B, T]`` position of ``tokens`` inside its segment.
        segment_ids: ``[B, T]`` 1..n per row for the trajectories packed into it, 0 = padding.
        loss_mask: ``[B, T]`` 1.0 where ``targets`` was sampled by the policy, else 0.0.
        advantages: ``[B, T]`` per-token advantages (0 outside the loss mask).
        behaviour_logp: ``[B, T]`` the sampler's log-prob of ``targets`` (0 outside the mask).
        old_logp: ``[B, T]`` the trainer's log-prob of ``targets`` under the old policy (the
            params before this round of updates). Packing fills it with ``behaviour_logp``;
            recompute it with ``train_step.make_logprob_fn`` to separate the two.
        policy_version: ``[B, T]`` version of the policy that sampled ``targets`` (-1 padding).
        ref_logp: ``[B, T]`` reference-policy log-probs for the KL term, or None without one.
        parent_ids: ``[B, T]`` the segment each slot also attends to, or None (each slot sees
            its own segment only). Packing with ``share_prefix`` stores a prompt that several
            trajectories start with once, as its own segment with no loss slots; the segments
            continuing it name it here and their positions continue the prefix's.
    """

    tokens: Int[Array, "B T"]
    targets: Int[Array, "B T"]
    positions: Int[Array, "B T"]
    segment_ids: Int[Array, "B T"]
    loss_mask: Float[Array, "B T"]
    advantages: Float[Array, "B T"]
    behaviour_logp: Float[Array, "B T"]
    old_logp: Float[Array, "B T"]
    policy_version: Int[Array, "B T"]
    ref_logp: Float[Array, "B T"] | None = None
    parent_ids: Int[Array, "B T"] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, T)``."""
        return tuple(self.tokens.shape)  # type: ignore[return-value]
