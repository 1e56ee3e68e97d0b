"""The oracle: plays a task row's ``oracle_plan`` as real tool calls, then answers.

:class:`OraclePolicy` is a policy ``(observation, info) -> action`` for one episode. It skips the
steps whose ``when`` condition is false for the row, sends the others as tool calls in the
environment's tool-call format (several per message when no call needs the result of another in
the same message), checks every call's outcome against the step's ``expect``, and finally answers
with the row's output columns, rendered so that they score 100% under the strict rules.

Arguments come from the plan: ``input`` (the value as presented, NaN as ``"nan"``),
``input_parsed`` (the presented text parsed as a Python literal or split on commas), ``out`` (a
value from an earlier call's result; ``key: null`` takes the whole result), ``hidden`` (a row
value the agent would have to infer) or ``const``. An ``out`` value is sent the way an agent that
copies the result text would write it: a result prints NaN as the bare token ``NaN``
(``json.dumps``), so the call carries ``NaN`` too, and the tool-call parsers (Python's ``json``)
read it back as the float NaN, which passes a ``truthy`` check as it does upstream (``Infinity``
likewise). A missing ``hidden`` row value is sent as JSON ``null``.

An outcome that contradicts ``expect`` raises :class:`AssertionError`: the plan encodes what
upstream does, so a disagreement means the engine (or the behaviour file) is wrong.

Non-goals: solving tasks without the hidden row (that is the agent's job) and recovering from
errors the plan did not expect.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mtrl_envs.sop.table import is_na, present

RenderCalls = Callable[[Sequence[tuple[str, Mapping[str, Any]]]], str]
_FAILED = object()  # marks a tool whose latest call returned an error
# Stands in for a non-finite float while a format renders the calls (the renderers emit strict
# JSON and refuse NaN); plain ASCII, so no format escapes it.
_PLACEHOLDER = "__mtrl_oracle_{}__"


def condition_holds(cond: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """Evaluates a plan condition on a typed row (truthiness is Python's: NaN is truthy).

    >>> condition_holds({"all": [{"row_truthy": "a"}, {"not": {"row_isna": "b"}}]},
    ...                 {"a": True, "b": float("nan")})
    False
    """
    ((op, arg),) = cond.items()
    if op == "all":
        return all(condition_holds(c, row) for c in arg)
    if op == "not":
        return not condition_holds(arg, row)
    if op == "row_ne":
        return bool(row[arg[0]] != arg[1])
    if op == "row_isna":
        return is_na(row[arg])
    if op == "row_notna":
        return not is_na(row[arg])
    return bool(row[arg])  # row_truthy


def json_safe(value: Any) -> Any:
    """Replaces NaN (which JSON cannot carry) by ``None``, recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _mark_non_finite(value: Any, tokens: list[str]) -> Any:
    """Replaces each non-finite float by a placeholder string; ``tokens`` gets its JSON token."""
    if isinstance(value, float) and not math.isfinite(value):
        token = json.dumps(value)  # NaN, Infinity or -Infinity, as a tool result prints it
        tokens.append(token)
        return _PLACEHOLDER.format(token)
    if isinstance(value, dict):
        return {k: _mark_non_finite(v, tokens) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mark_non_finite(v, tokens) for v in value]
    return value


def render_copied(render_calls: RenderCalls, calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Renders tool calls, writing non-finite floats as the bare tokens a result shows.

    ``json.dumps`` prints NaN in a tool result as ``NaN``; an agent copying it into a call writes
    ``NaN`` too, which the tool-call parsers (Python's ``json``) read as the float NaN. The
    formats' renderers emit strict JSON, so the value goes through them as a placeholder string
    that is then swapped for the token.

    >>> render_copied(lambda calls: json.dumps(calls[0][1]), [("t", {"x": float("nan")})])
    '{"x": NaN}'
    """
    tokens: list[str] = []
    marked = [(name, _mark_non_finite(dict(args), tokens)) for name, args in calls]
    text = render_calls(marked)
    for token in set(tokens):
        quoted = json.dumps(_PLACEHOLDER.format(token))
        if text.count(quoted) != tokens.count(token):
            raise ValueError(f"cannot write {token} in these calls: the format changed {quoted}")
        text = text.replace(quoted, token)
    return text


def batches(steps: Sequence[Mapping[str, Any]], max_calls: int) -> list[list[Mapping[str, Any]]]:
    """Groups consecutive steps into messages, at most ``max_calls`` each.

    A step starts a new message when it needs the result of a tool called in the current one.
    """
    groups: list[list[Mapping[str, Any]]] = []
    for step in steps:
        needs = {s["out"] for s in step["args"].values() if "out" in s}
        current = groups[-1] if groups else None
        if current is None or len(current) >= max_calls or needs & {s["tool"] for s in current}:
            groups.append([step])
        else:
            current.append(step)
    return groups


class OraclePolicy:
    """Plays one task row's oracle plan, then answers with the row's outputs.

    Args:
        plan: The normalised ``oracle_plan``.
        row: The task's typed row (hidden columns included).
        expected: The output columns' values (NaN as ``None``).
        render_calls: The environment's tool-call format renderer.
        max_calls: Calls the environment accepts in one message.
        task_id: For error messages.
    """

    def __init__(
        self,
        *,
        plan: Sequence[Mapping[str, Any]],
        row: Mapping[str, Any],
        expected: Mapping[str, Any],
        render_calls: RenderCalls,
        max_calls: int,
        task_id: str,
    ):
        self.row = dict(row)
        self.expected = dict(expected)
        self.render_calls = render_calls
        self.task_id = task_id
        steps = [s for s in plan if s["when"] is None or condition_holds(s["when"], self.row)]
        self._batches = batches(steps, max_calls)
        self._pending: list[Mapping[str, Any]] = []
        self._results: dict[str, Any] = {}

    def __call__(self, observation: str, info: dict[str, Any]) -> str:
        """Checks the previous message's outcomes, then sends the next calls or the answer."""
        del observation
        if self._pending:
            self._check(self._pending, info.get("tool_calls"))
        if not self._batches:
            self._pending = []
            answer = json.dumps(json_safe(self.expected), ensure_ascii=False)
            return f"<final_output>{answer}</final_output>"
        self._pending = self._batches.pop(0)
        calls = [
            (s["tool"], {k: self._value(v) for k, v in s["args"].items()}) for s in self._pending
        ]
        return render_copied(self.render_calls, calls)

    def _fail(self, message: str) -> AssertionError:
        return AssertionError(f"oracle on task {self.task_id!r}: {message}")

    def _value(self, source: Mapping[str, Any]) -> Any:
        if "const" in source:
            return source["const"]
        if "hidden" in source:
            return json_safe(self.row[source["hidden"]])
        if "input" in source:
            return "nan" if is_na(self.row[source["input"]]) else self.row[source["input"]]
        if "input_parsed" in source:
            text = present(self.row[source["input_parsed"]])
            if source["parse"] == "split_comma":
                return [part.strip() for part in text.split(",")]
            try:
                return json_safe(ast.literal_eval(text))
            except (ValueError, SyntaxError) as e:
                raise self._fail(f"input {text!r} is not a Python literal: {e}") from None
        result = self._results.get(source["out"], _FAILED)
        if result is _FAILED:
            raise self._fail(f"step needs a result of {source['out']}, which has none")
        # Not json_safe: the value is copied as the result text shows it, NaN included.
        if source["key"] is None:
            return result
        if not isinstance(result, dict) or source["key"] not in result:
            raise self._fail(f"{source['out']} returned {result!r}, without {source['key']!r}")
        return result[source["key"]]

    def _check(self, steps: Sequence[Mapping[str, Any]], records: Any) -> None:
        if not isinstance(records, list) or len(records) != len(steps):
            raise self._fail(f"sent {len(steps)} calls, the environment reported {records!r}")
        for step, record in zip(steps, records, strict=True):
            expect = step["expect"]
            if isinstance(expect, dict):
                want_error = condition_holds(expect["error_when"], self.row)
            else:
                want_error = expect == "error"
            error = record.get("error")
            if want_error != (error is not None):
                got = (
                    f"error {error!r}" if error is not None else f"result {record.get('result')!r}"
                )
                want = "an error" if want_error else "a result"
                raise self._fail(
                    f"{step['tool']}({record.get('arguments')}) expected {want}, got {got}"
                )
            if error is not None:
                self._results[step["tool"]] = _FAILED
                continue
            try:
                self._results[step["tool"]] = json.loads(record["result"])
            except ValueError as e:
                raise self._fail(f"{step['tool']} returned text that is not JSON: {e}") from None
