"""Final answers, rewards and external evaluation, kept as separate composable objects.

The reward is the training signal; the evaluation measures success on the end task for humans and
eval jobs. Both read the same :class:`EpisodeSummary`, but an evaluator never sees the reward, so
reward shaping (format bonuses, tool-call penalties) can never leak into the reported success.

Non-goals: learned or LLM-judge rewards (they fit the same protocols) and pass@k (``mtrl_jax``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mtrl_gym.types import JSON, EndedBy, Status, Task


@dataclass(frozen=True, kw_only=True)
class FinalAnswer:
    """The answer an agent committed to.

    Attributes:
        raw: The text between the answer tags.
        value: The decoded JSON value (``None`` when ``error`` is set).
        error: Why the answer could not be decoded, or ``None``.
    """

    raw: str
    value: JSON = None
    error: str | None = None

    def to_dict(self) -> dict[str, JSON]:
        """A fresh JSON-friendly dict for ``info["final_answer"]``."""
        return {"raw": self.raw, "value": json.loads(json.dumps(self.value)), "error": self.error}


class AnswerExtractor(Protocol):
    """Finds the final answer in one assistant message; ``None`` means the agent did not answer."""

    def __call__(self, text: str) -> FinalAnswer | None:
        """Returns the answer in ``text``, or ``None`` if there is none."""
        ...


_FENCE_RE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


class TagAnswerExtractor:
    """Extracts the JSON in the last ``<final_output>...</final_output>`` block (the default).

    Args:
        tag: The tag's name.
        require_object: Only a JSON object is an answer; anything else is a format error.
        allow_text: A body that is not JSON is a free-text answer: its stripped text becomes the
            value (a ``str``), for environments whose answers are prose. A JSON body still
            decodes (``42`` is the number). Needs ``require_object=False``.

    >>> TagAnswerExtractor()('Done. <final_output>{"ok": true}</final_output>').value
    {'ok': True}
    >>> TagAnswerExtractor()("<final_output>{oops</final_output>").error[:25]
    'final answer is not valid'
    >>> TagAnswerExtractor()("no answer yet") is None
    True
    >>> text = TagAnswerExtractor(require_object=False, allow_text=True)
    >>> text("<final_output> Refund approved. </final_output>").value
    'Refund approved.'
    """

    def __init__(
        self, tag: str = "final_output", *, require_object: bool = True, allow_text: bool = False
    ):
        if allow_text and require_object:
            raise ValueError("allow_text=True needs require_object=False (text is not an object)")
        self.open, self.close = f"<{tag}>", f"</{tag}>"
        self.require_object = require_object
        self.allow_text = allow_text

    def __call__(self, text: str) -> FinalAnswer | None:
        """Returns the last tagged answer, decoded, or ``None`` if there is no opening tag."""
        start = text.rfind(self.open)
        if start < 0:
            return None
        body_start = start + len(self.open)
        end = text.find(self.close, body_start)
        if end < 0:
            raw = text[body_start:]
            return FinalAnswer(raw=raw, error=f"final answer has no closing {self.close} tag")
        raw = text[body_start:end]
        body = raw.strip()
        fence = _FENCE_RE.match(body)
        if fence:
            body = fence.group(1).strip()
        try:
            value = json.loads(body)
        except (ValueError, RecursionError) as e:
            if self.allow_text:
                return FinalAnswer(raw=raw, value=body)
            return FinalAnswer(raw=raw, error=f"final answer is not valid JSON: {e}")
        if self.require_object and not isinstance(value, dict):
            kind = type(value).__name__
            return FinalAnswer(raw=raw, error=f"final answer must be a JSON object, got {kind}")
        return FinalAnswer(raw=raw, value=value)


@dataclass(frozen=True, kw_only=True)
class EpisodeSummary:
    """What rewards and evaluators see of a finished episode.

    Attributes:
        task: The episode's task.
        status: How it ended for the trainer (``ok`` is scored).
        final_answer: The committed answer: from the agent's final-answer tag, from a tool that
            ended the episode with an answer, or (where the environment says so) the agent's last
            message to a user who ended the conversation; ``None`` if there is none.
        tool_calls: Every call as in ``info["tool_calls"]``, in order.
        turns: Assistant messages.
        invalid_tool_calls: Calls rejected before they ran.
        format_errors: Messages that were neither a call nor an answer (nor, with a user, a
            message to the user).
        grade: What the environment's ``grade_episode`` computed once (e.g. hidden tests run in a
            sandbox), shared by the reward and the evaluator so the expensive part runs once.
        ended_by: What ended it (:class:`~mtrl_gym.types.EndedBy`: answer, tool, user, limit,
            failure). When a tool did, it is the last entry of ``tool_calls``.
        messages: The whole transcript (system, user, assistant and tool messages, user
            simulator turns included), as in ``TextEnv.transcript``.
        user_turns: Replies of the user simulator.
    """

    task: Task
    status: Status
    final_answer: FinalAnswer | None
    tool_calls: tuple[Mapping[str, JSON], ...]
    turns: int
    invalid_tool_calls: int
    format_errors: int
    grade: Any = None
    # Defaults keep summaries built before user turns and ending tools existed valid.
    ended_by: EndedBy = EndedBy.ANSWER
    messages: tuple[Mapping[str, JSON], ...] = ()
    user_turns: int = 0

    @property
    def answer_value(self) -> JSON:
        """The decoded final answer, or ``None`` if there is none or it did not parse."""
        fa = self.final_answer
        return None if fa is None or fa.error is not None else fa.value


class RewardFn(Protocol):
    """Maps a finished episode to a scalar reward.

    Raise :class:`~mtrl_gym.tools.ToolInfraError` (e.g. let a ``SandboxInfraError`` propagate)
    when the reward cannot be computed for infrastructure reasons: ``TextEnv`` then ends the
    episode with status ``infra_error`` and reward 0.0, excluded from training. Any other
    exception is treated as a bug and propagates out of ``step``.
    """

    def __call__(self, episode: EpisodeSummary) -> float:
        """Returns the episode's reward."""
        ...


class Evaluator(Protocol):
    """Maps a finished episode to a dict of end-task metrics; must include ``success``.

    Raise :class:`~mtrl_gym.tools.ToolInfraError` (e.g. let a ``SandboxInfraError`` propagate)
    when grading fails for infrastructure reasons: ``TextEnv`` then ends the episode with status
    ``infra_error`` and reports ``{"success": False, "status": "infra_error", "error": ...}``
    instead. Any other exception is treated as a bug and propagates out of ``step``.
    """

    def __call__(self, episode: EpisodeSummary) -> dict[str, JSON]:
        """Returns the episode's end-task metrics."""
        ...


def json_equal(a: JSON, b: JSON) -> bool:
    """Strict JSON equality: types must agree (``True`` is not ``1``, ``"1"`` is not ``1``).

    Integers and floats compare by value, as JSON has one number type (``1 == 1.0``).

    >>> json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]}), json_equal(True, 1), json_equal("1", 1)
    (True, False, False)
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            return True
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def field_matches(answer: JSON, expected: JSON) -> dict[str, bool]:
    """Per-field strict match of an answer object against the expected object.

    Every expected field must be present with an equal value; extra fields in the answer are
    ignored. A non-object ``expected`` is compared as a whole under the key ``"answer"``.
    """
    if not isinstance(expected, dict):
        return {"answer": json_equal(answer, expected)}
    got = answer if isinstance(answer, dict) else {}
    return {k: k in got and json_equal(got[k], v) for k, v in expected.items()}


@dataclass(frozen=True)
class ExactMatchReward:
    """1.0 when every expected field matches exactly, else 0.0 (or the matched fraction).

    Args:
        partial: Give the fraction of matching fields instead of all-or-nothing.
    """

    partial: bool = False

    def __call__(self, episode: EpisodeSummary) -> float:
        """Scores the final answer against ``episode.task.answer``."""
        if episode.status is not Status.OK:
            return 0.0
        matches = field_matches(episode.answer_value, episode.task.answer)
        if not matches:
            return 1.0
        if self.partial:
            return sum(matches.values()) / len(matches)
        return float(all(matches.values()))


@dataclass(frozen=True)
class FormatReward:
    """``value`` when the agent committed to a well-formed final answer, else 0."""

    value: float = 1.0

    def __call__(self, episode: EpisodeSummary) -> float:
        """Rewards a parseable final answer regardless of its correctness."""
        return self.value if episode.status is Status.OK else 0.0


@dataclass(frozen=True)
class ToolCallPenalty:
    """A negative reward per tool call and per invalid tool call or format error.

    Args:
        per_call: Subtracted for every tool call (encourages short solutions).
        per_invalid: Subtracted for every malformed / unknown / badly-argued call and format error.
        max_penalty: Cap on the total penalty (a positive number), or ``None``.
    """

    per_call: float = 0.0
    per_invalid: float = 0.1
    max_penalty: float | None = None

    def __call__(self, episode: EpisodeSummary) -> float:
        """Returns the (non-positive) penalty."""
        invalid = episode.invalid_tool_calls + episode.format_errors
        penalty = self.per_call * len(episode.tool_calls) + self.per_invalid * invalid
        if self.max_penalty is not None:
            penalty = min(penalty, self.max_penalty)
        return -penalty


@dataclass(frozen=True)
class WeightedSum:
    """Sum of weighted reward terms, e.g. ``WeightedSum([(1.0, ExactMatchReward()), ...])``."""

    terms: Sequence[tuple[float, RewardFn]]

    def __call__(self, episode: EpisodeSummary) -> float:
        """Adds up ``weight * term(episode)``."""
        return float(sum(w * fn(episode) for w, fn in self.terms))


@dataclass(frozen=True)
class ExactMatchEvaluator:
    """External evaluation by strict field-by-field match of the final JSON answer.

    Reports ``success`` (every field right), ``field_accuracy`` and ``fields`` (per-field result).
    Infrastructure failures are reported as not successful, with ``status`` so eval jobs can
    exclude them.
    """

    def __call__(self, episode: EpisodeSummary) -> dict[str, Any]:
        """Evaluates the final answer against ``episode.task.answer``."""
        answered = episode.status is Status.OK
        matches = field_matches(episode.answer_value, episode.task.answer)
        if not answered:
            matches = dict.fromkeys(matches, False)
        acc = sum(matches.values()) / len(matches) if matches else float(answered)
        return {
            "success": answered and all(matches.values()),
            "field_accuracy": acc,
            "fields": matches,
            "status": str(episode.status),
        }
