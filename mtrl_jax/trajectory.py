"""The rollout's trajectory record: plain data, JSONL on disk, and the learner's view of it.

A :class:`TrajectoryRecord` is everything one episode produced, token-aligned where it is per
token: the conversation (``messages``), the token ids exactly as the sampler saw them, the loss
mask (1 where the policy sampled the token), the sampler's log-probs, the policy version per
token, where each assistant turn and each training sample starts, and the episode's reward,
evaluation, status, tool calls and timings. Arrays are numpy; everything else is JSON.

A record holds one or more *training samples* (``sample_starts``): one when every turn's prompt
extended the previous context (``mode == "extended"``), several when the chat template rewrote
history and the rollout had to start a new sequence (``mode == "per_turn"``). The tokens of all
samples are concatenated; :meth:`TrajectoryRecord.to_learner` splits them again.

Loss weighting of split trajectories (``sample_weighting``): with ``"inverse_count"`` (default)
each of the ``K`` samples of a record carries advantage ``A / K``. Policy-gradient losses are
linear in the advantage, so this scales the record's contribution by ``1 / K``: under the
``seq-mean-*`` aggregations a per-turn trajectory then weighs as much as one extended sequence
instead of ``K`` of them, so long trajectories do not dominate the batch. Under ``token-mean``
aggregation every sampled token already appears exactly once in either mode; use ``"uniform"``
(advantage ``A`` on every sample) there to keep the two modes equivalent.

Evaluation-only data (``eval_only``, see :func:`mtrl_gym.ensure_trainable`) never becomes
training data: :class:`TrajectoryWriter` refuses such records unless the caller marks the file as
evaluation output, and :meth:`TrajectoryRecord.to_learner` always refuses them.

Non-goals: compression, sharded storage, schema migration (the ``version`` field is checked).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mtrl_gym import EvalOnlyError
from mtrl_jax.types import Trajectory

RECORD_VERSION = 1
SampleWeighting = Literal["inverse_count", "uniform"]
# dtype of each per-token array; the JSON form stores them as lists and restores these.
_ARRAYS: dict[str, type] = {
    "tokens": np.int32,
    "loss_mask": np.int8,
    "logprobs": np.float32,
    "sampling_logprobs": np.float32,
    "policy_version": np.int32,
}


@dataclasses.dataclass(kw_only=True, eq=False)
class TrajectoryRecord:
    """One episode as the rollout produced it.

    Attributes:
        task_id: The environment's task id (``info["task_id"]``).
        group_id: Episodes of the same task sampled together share it (advantage baseline).
        sample_index: Position of the episode in its group.
        messages: The conversation: reset messages, then each assistant message (the decode of
            its sampled tokens) followed by the environment's new messages.
        tokens: ``[n]`` token ids of all training samples, concatenated.
        loss_mask: ``[n]`` 1 where the policy sampled the token, 0 for template and env text.
        logprobs: ``[n]`` the sampler's log-prob of each sampled token under the *model's*
            distribution (before temperature / top-p), the behaviour log-prob (0 where mask 0).
        sampling_logprobs: ``[n]`` log-prob under the distribution actually sampled from.
        policy_version: ``[n]`` policy version that sampled each token; -1 where mask 0.
        turn_spans: ``(start, end)`` of each assistant turn's sampled tokens in ``tokens``.
        sample_starts: Start of each training sample in ``tokens`` (the first is 0).
        reward: Episode reward (0.0 for infrastructure failures, which are excluded anyway).
        eval: The environment's external evaluation, or None.
        status: ``ok``, ``format_error``, ``truncated``, ``infra_error`` or ``timeout``.
        final_answer: The parsed final answer (JSON), or None.
        tool_calls: Every tool call of the episode with its result or error.
        timings: Seconds: ``episode_s``, ``sample_s`` (waiting for the sampler), ``env_s``.
        mode: ``"extended"`` (one sequence) or ``"per_turn"`` (split; see the module docstring).
        eval_only: The episode came from an evaluation-only environment.
        advantage: Group advantage, set by the rollout; None before, or when excluded.
    """

    task_id: str | None
    group_id: str
    sample_index: int = 0
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tokens: np.ndarray  # [n] int32
    loss_mask: np.ndarray  # [n] int8
    logprobs: np.ndarray  # [n] float32
    sampling_logprobs: np.ndarray  # [n] float32
    policy_version: np.ndarray  # [n] int32
    turn_spans: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    sample_starts: list[int] = dataclasses.field(default_factory=lambda: [0])
    reward: float = 0.0
    eval: dict[str, Any] | None = None
    status: str = "ok"
    final_answer: Any = None
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    mode: Literal["extended", "per_turn"] = "extended"
    eval_only: bool = False
    advantage: float | None = None

    def __post_init__(self) -> None:
        for name, dtype in _ARRAYS.items():
            setattr(self, name, np.asarray(getattr(self, name), dtype))
        n = len(self.tokens)
        for name in _ARRAYS:
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, tokens ({n},)")
        if n and (not self.sample_starts or self.sample_starts[0] != 0):
            raise ValueError("sample_starts must begin with 0")
        if self.mode not in ("extended", "per_turn"):
            raise ValueError(f"mode must be 'extended' or 'per_turn', got {self.mode!r}")
        self.turn_spans = [(int(s), int(e)) for s, e in self.turn_spans]

    @property
    def num_turns(self) -> int:
        """Assistant turns sampled."""
        return len(self.turn_spans)

    @property
    def num_samples(self) -> int:
        """Training samples (sequences) the record splits into."""
        return len(self.sample_starts) if len(self.tokens) else 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (arrays as lists); :meth:`from_dict` inverts it exactly."""
        out: dict[str, Any] = {"version": RECORD_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.tolist() if isinstance(value, np.ndarray) else value
        out["turn_spans"] = [list(span) for span in self.turn_spans]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrajectoryRecord:
        """Rebuilds a record from :meth:`to_dict` output (e.g. one parsed JSONL line)."""
        data = dict(data)
        version = data.pop("version", None)
        if version != RECORD_VERSION:
            raise ValueError(f"record version {version!r}, this reader knows {RECORD_VERSION}")
        return cls(**data)

    def to_learner(
        self, *, sample_weighting: SampleWeighting = "inverse_count"
    ) -> list[Trajectory]:
        """The learner's trajectories: one per training sample, advantage weighted.

        Args:
            sample_weighting: ``"inverse_count"`` gives each of ``K`` samples advantage
                ``A / K``; ``"uniform"`` gives each ``A`` (see the module docstring).

        Returns:
            One :class:`mtrl_jax.types.Trajectory` per sample (token 0 of each is unmasked);
            samples without a sampled token are left out (they carry no gradient).

        Raises:
            EvalOnlyError: the record comes from an evaluation-only environment.
            ValueError: the advantage is not set (excluded or not yet scored).
        """
        if self.eval_only:
            raise EvalOnlyError(f"group {self.group_id}: evaluation-only records never train")
        if self.advantage is None:
            raise ValueError(f"group {self.group_id}: record has no advantage (excluded?)")
        if sample_weighting not in ("inverse_count", "uniform"):
            raise ValueError(f"unknown sample_weighting {sample_weighting!r}")
        ends = [*self.sample_starts[1:], len(self.tokens)]
        weight = 1.0 / len(ends) if sample_weighting == "inverse_count" else 1.0
        out = []
        for start, end in zip(self.sample_starts, ends, strict=True):
            if not self.loss_mask[start + 1 : end].any():
                continue  # nothing sampled (e.g. the first prompt did not fit): no gradient
            mask = self.loss_mask[start:end].astype(np.int32)
            mask[0] = 0  # nothing predicts a sequence's first token (it is template text anyway)
            out.append(
                Trajectory(
                    tokens=self.tokens[start:end],
                    loss_mask=mask,
                    behaviour_logp=self.logprobs[start:end],
                    advantages=float(self.advantage) * weight,
                    policy_version=self.policy_version[start:end],
                )
            )
        return out


class TrajectoryWriter:
    """Writes records to a JSONL file, one record per line.

    Args:
        path: The file (parent folders are created).
        evaluation_output: The caller declares this file an evaluation log, never read by
            training. Only then are records from evaluation-only environments accepted.
        overwrite: Start the file afresh instead of appending to an existing one (a file that
            holds exactly one step's records, written again when that step is run again).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        evaluation_output: bool = False,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        self.evaluation_output = evaluation_output
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w" if overwrite else "a", encoding="utf-8")

    def write(self, record: TrajectoryRecord) -> None:
        """Appends one record.

        Raises:
            EvalOnlyError: an evaluation-only record, and the file is not evaluation output.
        """
        if record.eval_only and not self.evaluation_output:
            raise EvalOnlyError(
                f"group {record.group_id} comes from an evaluation-only environment; write it "
                "with TrajectoryWriter(path, evaluation_output=True) to an evaluation log"
            )
        self._file.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Closes the file (safe to call twice)."""
        self._file.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_trajectories(path: str | os.PathLike[str]) -> Iterator[TrajectoryRecord]:
    """Yields the records of a JSONL file written by :class:`TrajectoryWriter`."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield TrajectoryRecord.from_dict(json.loads(line))


def read_trajectories(path: str | os.PathLike[str]) -> list[TrajectoryRecord]:
    """All records of a JSONL file, in file order."""
    return list(iter_trajectories(path))
