"""An independent, minimal reading of the authored suites for the tests.

It reads the committed files with the standard library only, types the task table per
``column_types``, replays ``lookup`` tools the way SPEC.md describes them (params, ``validate``,
``pandas_eq`` matching, ``first`` row, field casts) and plays the oracle plan. Nothing here imports
the generators or the engine, so a test that passes through this module checks the data itself.

:class:`Agent` is what the per-suite reference procedures see: the task input as presented and the
results of the tool calls they make, never the hidden row.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtrl_envs.suites import SUITE_NAMES, data_dir

AUTHORED = SUITE_NAMES
FILES = ("sop.txt", "tools.json", "metadata.json", "tasks.csv", "behavior.json", "suite.json")
Row = dict[str, Any]


class ToolError(Exception):
    """A tool call answered with ``Error: <message>``."""


@dataclass(frozen=True)
class LoadedSuite:
    """The files of one suite folder, parsed."""

    name: str
    folder: Path
    text: dict[str, str]
    header: list[str]
    raw_rows: list[dict[str, str]]
    rows: list[Row]

    @property
    def behavior(self) -> dict[str, Any]:
        return json.loads(self.text["behavior.json"])

    @property
    def tool_specs(self) -> list[dict[str, Any]]:
        return json.loads(self.text["tools.json"])

    @property
    def metadata(self) -> dict[str, Any]:
        return json.loads(self.text["metadata.json"])

    @property
    def input_columns(self) -> list[str]:
        return self.behavior["task"]["input_columns"]

    @property
    def output_columns(self) -> list[str]:
        return self.behavior["task"]["output_columns"]


def typed(cell: str, kind: str) -> Any:
    """Types one CSV cell per ``column_types`` (an empty cell is None)."""
    if cell == "":
        return None
    if kind == "bool":
        return {"True": True, "False": False}[cell]
    return {"str": str, "int": int, "float": float}[kind](cell)


def present(value: Any) -> str:
    """A typed value as pandas' ``str()`` prints it (None as ``nan``)."""
    if value is None:
        return "nan"
    return repr(value) if isinstance(value, float) else str(value)


@functools.cache
def load(name: str) -> LoadedSuite:
    """Reads and types one suite's committed files (cached: the files are read-only here)."""
    folder = data_dir(name)
    text = {f: (folder / f).read_text(encoding="utf-8") for f in FILES}
    reader = csv.DictReader(text["tasks.csv"].splitlines())
    raw_rows = list(reader)
    types = json.loads(text["behavior.json"])["tables"]["main"]["column_types"]
    rows = [{c: typed(v, types[c]) for c, v in r.items()} for r in raw_rows]
    return LoadedSuite(name, folder, text, list(reader.fieldnames or ()), raw_rows, rows)


def _matches(cell: Any, arg: Any) -> bool:
    """``pandas_eq`` for one typed cell: missing never matches, strings only equal strings."""
    if cell is None or arg is None or isinstance(cell, str) != isinstance(arg, str):
        return False
    return bool(cell == arg)


def _cast(value: Any, cast: str, on_null: str) -> Any:
    if value is None:
        assert on_null == "null", f"unexpected on_null {on_null!r}"
        return None
    return {"raw": lambda v: v, "str": str, "int": int, "float": float, "bool": bool}[cast](value)


def call_tool(suite: LoadedSuite, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Replays one tool call from the behaviour spec.

    Raises:
        ToolError: With the message the agent would read after ``Error: ``.
    """
    tool = suite.behavior["tools"].get(name)
    if tool is None:
        raise ToolError(f"unknown tool {name}")
    params = tool["params"]
    missing = [p for p in params["required"] if p not in args]
    unknown = set(args) - set(params["required"]) - set(params["optional"])
    if missing or (unknown and params["reject_unknown"]):
        raise ToolError(f"bad arguments: missing {missing}, unknown {sorted(unknown)}")
    fill = {k: str(v) for k, v in args.items()}
    for rule in tool.get("validate", []):
        if rule["rule"] == "truthy":
            bad = any(not args[a] for a in rule["args"])
        else:
            assert rule["rule"] == "regex", rule
            bad = re.fullmatch(rule["pattern"], str(args[rule["arg"]])) is None
        if bad:
            raise ToolError(rule["error"].format(**fill))
    lookup = tool["lookup"]
    hits = [
        row
        for row in suite.rows
        if all(_matches(row[m["column"]], args[m["arg"]]) for m in lookup["match"])
    ]
    if not hits:
        raise ToolError(lookup["on_none"]["error"].format(**fill))
    assert lookup["on_multiple"] == "first"
    fields = tool["returns"]["fields"]
    return {f["key"]: _cast(hits[0][f["column"]], f["cast"], f["on_null"]) for f in fields}


def canonical_id(raw: str) -> str:
    """What a careful agent does after a format error: ``PREFIX-DIGITS``, upper-case.

    >>> canonical_id("ord 004211"), canonical_id("DU1234567")
    ('ORD-004211', 'DU-1234567')
    """
    compact = re.sub(r"[\s_#-]", "", raw).upper()
    match = re.fullmatch(r"([A-Z]+)([0-9]+)", compact)
    assert match, raw
    return f"{match[1]}-{match[2]}"


class Agent:
    """A scripted agent's view of one task: presented inputs and the tool results it asks for.

    Attributes:
        inputs: Input column -> the text shown to the agent.
        calls: ``(tool, args, error or None)`` for every call made.
        recovered: Whether a format error was fixed by a retry.
    """

    def __init__(self, suite: LoadedSuite, row: Row):
        self._suite = suite
        self.inputs = {c: present(row[c]) for c in suite.input_columns}
        self.calls: list[tuple[str, dict[str, Any], str | None]] = []
        self.recovered = False

    def call(self, tool: str, **args: Any) -> dict[str, Any]:
        """Calls a tool; the result round-trips through JSON, as the agent reads it."""
        try:
            result = call_tool(self._suite, tool, args)
        except ToolError as e:
            self.calls.append((tool, args, str(e)))
            raise
        self.calls.append((tool, args, None))
        return json.loads(json.dumps(result))

    def call_fixing_format(self, tool: str, param: str, raw: str) -> dict[str, Any]:
        """Calls with the raw id; after a format error naming it, retries with the canonical id."""
        try:
            return self.call(tool, **{param: raw})
        except ToolError as e:
            message = str(e)
            assert raw in message and "expected the canonical form" in message, message
        self.recovered = True
        return self.call(tool, **{param: canonical_id(raw)})


def holds(cond: Mapping[str, Any], row: Row) -> bool:
    """Evaluates an oracle-plan condition on a typed row."""
    ((op, arg),) = cond.items()
    ops: dict[str, Callable[[], bool]] = {
        "all": lambda: all(holds(c, row) for c in arg),
        "not": lambda: not holds(arg, row),
        "row_ne": lambda: row[arg[0]] != arg[1],
        "row_isna": lambda: row[arg] is None,
        "row_notna": lambda: row[arg] is not None,
        "row_truthy": lambda: bool(row[arg]),
    }
    return ops[op]()


def play_oracle(suite: LoadedSuite, row: Row) -> list[tuple[str, str | None]]:
    """Plays the oracle plan on a row; returns ``(tool, error or None)`` per call made.

    ``out`` reads the latest result of a tool (as the engine does); a step whose outcome
    contradicts its ``expect`` fails the test.
    """
    results: dict[str, Any] = {}
    made: list[tuple[str, str | None]] = []
    for step in suite.behavior["oracle_plan"]:
        if "when" in step and not holds(step["when"], row):
            continue
        args = {}
        for param, src in step["args"].items():
            if "input" in src:
                args[param] = row[src["input"]]
            elif "hidden" in src:
                args[param] = row[src["hidden"]]
            elif "const" in src:
                args[param] = src["const"]
            else:
                args[param] = results[src["out"]][src["key"]]
        try:
            result, error = call_tool(suite, step["tool"], args), None
        except ToolError as e:
            result, error = None, str(e)
        expect = step.get("expect", "ok")
        want_error = (
            holds(expect["error_when"], row) if isinstance(expect, dict) else expect == "error"
        )
        assert want_error == (error is not None), (row["id"], step, error)
        results[step["tool"]] = result  # None after an error: a later "out" must not read it
        made.append((step["tool"], error))
    return made
