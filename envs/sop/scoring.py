"""Scoring of SOP answers (SPEC.md rules 1-4) and the per-suite metrics TSR, ECR, C-TSR.

Only the final answer counts: the last ``<final_output>{json object}</final_output>`` of the last
assistant message (the environment's answer extractor finds it). Its keys are matched to the output
columns case-insensitively, and each field is compared with :func:`field_matches`:

1. null class: ``None``/NaN, or ``str(x).lower().strip()`` in ``none, null, na, n/a, nan, unknown,
   ""``; both null match, exactly one null does not;
2. ``str(x).lower().strip()`` equal;
3. equal after replacing ``_`` and ``-`` with spaces;
4. compatible mode only: one normalised string contains the other (upstream always applies it,
   which lets ``valid`` match ``invalid``).

Strict = rules 1-3, compatible = rules 1-4. A task is correct when every output field matches; a
field the answer leaves out is wrong in both modes. :class:`SopReward` is the strict (or
compatible) all-fields reward; :class:`SopEvaluator` reports both side by side, with per-field
results and tool-call counts; :func:`suite_metrics` aggregates episodes into the reported rates.

Non-goals: partial credit and LLM judging.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mtrl_gym import EpisodeSummary, Status

NULL_STRINGS = frozenset({"none", "null", "na", "n/a", "nan", "unknown", ""})
# Statuses of an episode that ran to an answer without an infrastructure failure (the ECR
# numerator): a malformed final answer is still an answer; truncation and timeouts are not.
COMPLETED_STATUSES = frozenset({str(Status.OK), str(Status.FORMAT_ERROR)})


def is_null(value: Any) -> bool:
    """Rule 1's null class.

    >>> [is_null(v) for v in (None, float("nan"), " N/A ", "Unknown", "0", False)]
    [True, True, True, True, False, False]
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return str(value).lower().strip() in NULL_STRINGS


def _loose(text: str) -> str:
    return text.replace("_", " ").replace("-", " ")


def field_matches(predicted: Any, expected: Any, *, compatible: bool = False) -> bool:
    """Whether one answered field matches the ground truth (rules 1-3, or 1-4 if compatible).

    >>> field_matches("in-progress", "IN_PROGRESS"), field_matches(True, "true")
    (True, True)
    >>> field_matches("invalid", "valid"), field_matches("invalid", "valid", compatible=True)
    (False, True)
    """
    predicted_null, expected_null = is_null(predicted), is_null(expected)
    if predicted_null or expected_null:
        return predicted_null and expected_null
    p, e = str(predicted).lower().strip(), str(expected).lower().strip()
    if p == e or _loose(p) == _loose(e):
        return True
    return compatible and (_loose(p) in _loose(e) or _loose(e) in _loose(p))


def answer_fields(answer: Any, output_columns: Iterable[str]) -> dict[str, Any]:
    """The answer's values by output column, keys matched case-insensitively.

    If several keys differ only in case, the last one wins (as a lower-cased dict would keep it).
    Columns the answer does not mention are left out.

    >>> answer_fields({"Final Status": "ok", "extra": 1}, ["final status"])
    {'final status': 'ok'}
    """
    if not isinstance(answer, dict):
        return {}
    lowered = {str(k).lower(): v for k, v in answer.items()}
    return {c: lowered[c.lower()] for c in output_columns if c.lower() in lowered}


@dataclass(frozen=True, kw_only=True)
class AnswerScore:
    """The score of one answer.

    Attributes:
        strict: Every field matches under rules 1-3.
        compatible: Every field matches under rules 1-4.
        fields: Per output column: ``present``, ``strict`` and ``compatible``.
    """

    strict: bool
    compatible: bool
    fields: dict[str, dict[str, bool]]


def score_answer(answer: Any, expected: Mapping[str, Any]) -> AnswerScore:
    """Scores a decoded final answer (a JSON object) against the expected output columns."""
    found = answer_fields(answer, expected)
    fields = {}
    for column, truth in expected.items():
        present = column in found
        fields[column] = {
            "present": present,
            "strict": present and field_matches(found[column], truth),
            "compatible": present and field_matches(found[column], truth, compatible=True),
        }
    return AnswerScore(
        strict=all(f["strict"] for f in fields.values()),
        compatible=all(f["compatible"] for f in fields.values()),
        fields=fields,
    )


def _episode_score(episode: EpisodeSummary) -> AnswerScore | None:
    """The answer's score, or ``None`` when the episode produced no well-formed answer."""
    answer = episode.final_answer
    if episode.status is not Status.OK or answer is None or answer.error is not None:
        return None
    return score_answer(answer.value, episode.task.answer)


@dataclass(frozen=True)
class SopReward:
    """1.0 when every output field matches (strict rules 1-3 by default), else 0.0.

    Args:
        compatible: Score with SOP-Bench's rules 1-4 instead (not recommended for training: it
            rewards ``valid`` for ``invalid``).
    """

    compatible: bool = False

    def __call__(self, episode: EpisodeSummary) -> float:
        """Scores the episode's final answer."""
        score = _episode_score(episode)
        if score is None:
            return 0.0
        return float(score.compatible if self.compatible else score.strict)


@dataclass(frozen=True)
class SopEvaluator:
    """Reports strict and SOP-Bench-compatible success side by side.

    The result holds ``success`` (strict), ``success_compatible``, ``fields`` (per output column:
    ``present``/``strict``/``compatible``), ``status``, ``tool_calls`` and ``tool_call_errors``.
    """

    def __call__(self, episode: EpisodeSummary) -> dict[str, Any]:
        """Evaluates a finished episode."""
        score = _episode_score(episode)
        if score is None:
            empty = {"present": False, "strict": False, "compatible": False}
            fields = {c: dict(empty) for c in episode.task.answer}
        else:
            fields = score.fields
        return {
            "success": score is not None and score.strict,
            "success_compatible": score is not None and score.compatible,
            "fields": fields,
            "status": str(episode.status),
            "tool_calls": len(episode.tool_calls),
            "tool_call_errors": sum(1 for c in episode.tool_calls if c.get("error") is not None),
        }


def _status_and_eval(result: Any) -> tuple[str, Mapping[str, Any]]:
    """Reads an episode result: a runner ``EpisodeResult`` or a final ``info``-like mapping."""
    if isinstance(result, Mapping):
        status, evaluation = result.get("status"), result.get("eval")
    else:
        status, evaluation = getattr(result, "status", None), getattr(result, "eval", None)
    if status is None:
        raise ValueError(f"an episode result needs a 'status', got {result!r}")
    return str(status), evaluation or {}


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def suite_metrics(results: Iterable[Any]) -> dict[str, Any]:
    """TSR, ECR, C-TSR and tool-call success rate over one suite's episodes.

    Args:
        results: Runner ``EpisodeResult`` objects, or mappings with ``status`` and ``eval`` (the
            final step's ``info`` works), one per task attempt.

    Returns:
        Counts (``tasks``, ``completed``, ``correct``, ``correct_compatible``, ``tool_calls``,
        ``tool_call_errors``) and rates: ``tsr`` = correct / tasks, ``ecr`` = completed / tasks,
        ``ctsr`` = correct / completed, each also ``*_compatible``, and
        ``tool_call_success_rate``. A rate with a zero denominator is ``None``.
    """
    tasks = completed = correct = correct_compatible = calls = errors = 0
    for result in results:
        status, evaluation = _status_and_eval(result)
        tasks += 1
        completed += status in COMPLETED_STATUSES
        correct += bool(evaluation.get("success"))
        correct_compatible += bool(evaluation.get("success_compatible"))
        calls += int(evaluation.get("tool_calls", 0))
        errors += int(evaluation.get("tool_call_errors", 0))
    return {
        "tasks": tasks,
        "completed": completed,
        "correct": correct,
        "correct_compatible": correct_compatible,
        "tool_calls": calls,
        "tool_call_errors": errors,
        "tsr": _rate(correct, tasks),
        "tsr_compatible": _rate(correct_compatible, tasks),
        "ecr": _rate(completed, tasks),
        "ctsr": _rate(correct, completed),
        "ctsr_compatible": _rate(correct_compatible, completed),
        "tool_call_success_rate": _rate(calls - errors, calls),
    }


RATES = (
    "tsr",
    "tsr_compatible",
    "ecr",
    "ctsr",
    "ctsr_compatible",
    "tool_call_success_rate",
)


def macro_average(per_suite: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """The unweighted mean of each rate over suites (suites where it is ``None`` are skipped)."""
    out: dict[str, float | None] = {}
    for rate in RATES:
        values = [m[rate] for m in per_suite.values() if m.get(rate) is not None]
        out[rate] = sum(values) / len(values) if values else None
    return out
