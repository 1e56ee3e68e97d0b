"""Read-only tools that replay recorded responses (the recorded-responses pattern).

A recording maps ``(tool name, canonical JSON of the arguments)`` to a response or an error. The
canonical key (sorted keys, no whitespace, unicode kept) makes ``{"b": 1, "a": 2}`` and
``{"a": 2, "b": 1}`` the same call. A key may hold a *sequence* of outcomes that successive calls
in one episode consume (the last one repeats), which is how a recording says "fails on the first
call, succeeds on the retry". Call counters are per episode: :meth:`Recording.new_episode`
returns a fresh replay state.

Recordings load from JSONL (one ``{"tool", "arguments", "response" | "error" | "sequence"}`` object
a line) or from CSV (one tool per file, argument columns typed through the tool's schema).

Non-goals: fuzzy matching of arguments. An unrecorded call is a clear ``ToolError`` naming the
tool and the arguments, exactly as a production API answers a lookup it cannot satisfy.
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtrl_gym.tools import Tool, ToolError
from mtrl_gym.types import JSON


def canonical_json(value: JSON) -> str:
    """Canonical JSON text of ``value``: sorted keys, compact separators, unicode kept.

    >>> canonical_json({"b": 1, "a": [1.5, "é"]})
    '{"a":[1.5,"é"],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Outcome:
    """One recorded outcome: a response, or an error the agent should read."""

    response: JSON = None
    error: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str) -> Outcome:
        """Builds an outcome from ``{"response": ...}`` or ``{"error": "..."}``."""
        if ("response" in record) == ("error" in record):
            raise ValueError(f"{where}: give exactly one of 'response' or 'error'")
        if "error" in record and not isinstance(record["error"], str):
            raise ValueError(f"{where}: 'error' must be a string")
        return cls(response=record.get("response"), error=record.get("error"))


class Recording:
    """Recorded outcomes for a set of tools, keyed by canonical arguments."""

    def __init__(self) -> None:
        self._outcomes: dict[tuple[str, str], tuple[Outcome, ...]] = {}

    def add(self, tool: str, arguments: Mapping[str, JSON], *outcomes: Outcome) -> None:
        """Records the outcome(s) of calling ``tool`` with ``arguments``; duplicates are errors."""
        if not outcomes:
            raise ValueError(f"no outcome given for {tool}({canonical_json(dict(arguments))})")
        key = (tool, canonical_json(dict(arguments)))
        if key in self._outcomes:
            raise ValueError(f"duplicate recording for {tool} with arguments {key[1]}")
        self._outcomes[key] = tuple(outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)

    def tools(self) -> set[str]:
        """Names of the tools that have at least one recording."""
        return {name for name, _ in self._outcomes}

    def new_episode(self) -> ReplayState:
        """A fresh per-episode replay state (call counters start at zero)."""
        return ReplayState(self)

    def lookup(self, tool: str, arguments: Mapping[str, JSON], call_index: int = 0) -> Outcome:
        """The outcome of the ``call_index``-th identical call (the last outcome repeats)."""
        key = (tool, canonical_json(dict(arguments)))
        outcomes = self._outcomes.get(key)
        if outcomes is None:
            raise ToolError(f"no record found for {tool} with arguments {key[1]}")
        return outcomes[min(call_index, len(outcomes) - 1)]

    # ---- loaders -------------------------------------------------------------------------------

    @classmethod
    def from_jsonl(cls, path: str | Path) -> Recording:
        """Loads ``{"tool", "arguments", "response"|"error"|"sequence"}`` lines."""
        rec = cls()
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: invalid JSON: {e}") from e
                if not isinstance(obj, dict) or not isinstance(obj.get("tool"), str):
                    raise ValueError(f"{where}: each line needs a string 'tool'")
                args = obj.get("arguments", {})
                if not isinstance(args, dict):
                    raise ValueError(f"{where}: 'arguments' must be an object")
                if "sequence" in obj:
                    seq = obj["sequence"]
                    if not isinstance(seq, list) or not seq:
                        raise ValueError(f"{where}: 'sequence' must be a non-empty list")
                    outcomes = [Outcome.from_record(o, where) for o in seq]
                else:
                    outcomes = [Outcome.from_record(obj, where)]
                rec.add(obj["tool"], args, *outcomes)
        return rec

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        *,
        tool: str,
        parameters: Mapping[str, Any],
        response_column: str = "response",
        error_column: str | None = "error",
    ) -> Recording:
        """Loads one tool's recordings from CSV: argument columns plus a response column.

        Argument columns are the properties of ``parameters`` (the tool's JSON schema) present in
        the header; their text is typed by the schema (integer, number, boolean, object/array as
        JSON) so keys match the typed arguments an agent sends. The response cell is parsed as
        JSON when it is valid JSON, else kept as text. A non-empty error cell records an error.
        """
        props: Mapping[str, Any] = parameters.get("properties", {})
        rec = cls()
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if response_column not in header:
                raise ValueError(f"{path}: missing response column {response_column!r}")
            arg_cols = [c for c in header if c in props]
            for rowno, row in enumerate(reader, 2):
                where = f"{path}:{rowno}"
                args = {c: _cast(row[c], props[c], f"{where}:{c}") for c in arg_cols if row[c]}
                err = row.get(error_column) if error_column else None
                if err:
                    rec.add(tool, args, Outcome(error=err))
                else:
                    rec.add(tool, args, Outcome(response=_maybe_json(row[response_column])))
        return rec


class ReplayState:
    """Per-episode view of a :class:`Recording` that counts identical calls."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self._calls: dict[tuple[str, str], int] = {}

    def call(self, tool: str, arguments: Mapping[str, JSON]) -> JSON:
        """Replays one call: returns the recorded response or raises the recorded ``ToolError``."""
        key = (tool, canonical_json(dict(arguments)))
        index = self._calls.get(key, 0)
        outcome = self.recording.lookup(tool, arguments, index)
        self._calls[key] = index + 1
        if outcome.error is not None:
            raise ToolError(outcome.error)
        return outcome.response


def replay_tools(
    schemas: Iterable[Mapping[str, Any]], state: ReplayState, *, bedrock: bool = False
) -> list[Tool]:
    """Builds read-only tools from production schemas that answer from ``state``.

    Args:
        schemas: OpenAI function schemas (or Bedrock ``toolSpec`` objects with ``bedrock=True``).
        state: The episode's replay state; create one per episode with ``Recording.new_episode``.
        bedrock: Whether ``schemas`` are Bedrock tool specs.
    """
    tools: list[Tool] = []
    for schema in schemas:
        make = Tool.from_bedrock if bedrock else Tool.from_openai
        probe = make(schema, fn=state.call)  # parse the name once, then bind it to the replay
        tools.append(make(schema, fn=functools.partial(_replay_call, state, probe.name)))
    return tools


def _replay_call(state: ReplayState, name: str, /, **arguments: Any) -> JSON:
    # Positional-only so that an argument called "state" or "name" cannot collide.
    return state.call(name, arguments)


def _maybe_json(text: str) -> JSON:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def _cast(text: str, schema: Mapping[str, Any], where: str) -> JSON:
    kind: Any = schema.get("type", "string")
    kinds: Sequence[str] = kind if isinstance(kind, list) else [kind]
    try:
        if "integer" in kinds:
            return int(text)
        if "number" in kinds:
            return float(text)
        if "boolean" in kinds:
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError(f"not a boolean: {text!r}")
            return low in ("true", "1")
        if "object" in kinds or "array" in kinds:
            return json.loads(text)
    except ValueError as e:
        raise ValueError(f"{where}: cannot read {text!r} as {kind}: {e}") from e
    return text
