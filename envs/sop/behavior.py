"""The top level of a ``sop-tool-behavior/1`` file: task, tables, tool sets and the oracle plan.

:func:`normalize_behavior` validates a parsed ``tool_behavior.json`` strictly (tools through
:func:`mtrl_envs.sop.spec.validate_tool`) and returns a normalised copy with defaults filled in.
A file marked ``"supported": false`` is refused with its ``reason`` before anything else is checked,
since such files may describe tools only partly. :func:`check_columns` then checks every column a
tool, the task or the plan names against the CSV files actually read.

Non-goals: reading files (``suite``) and the meaning of each construct (``engine``, ``oracle``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtrl_envs.sop.spec import (
    FORMAT,
    SopSpecError,
    UnsupportedSuiteError,
    expect_bool,
    expect_enum,
    expect_object,
    expect_str,
    expect_strs,
    fail,
    kind_of,
    validate_tool,
)
from mtrl_envs.sop.table import COLUMN_TYPES, PANDAS_NA_VALUES, Table

LOADER_MODES = ("split", "legacy_full_row", "broken")
ARG_SOURCES = ("input", "input_parsed", "out", "hidden", "const")
INPUT_PARSES = ("pyliteral", "split_comma")
CONDITIONS = ("row_truthy", "row_isna", "row_notna", "row_ne", "all", "not")
_TOP_KEYS = (
    "domain",
    "supported",
    "reason",
    "source",
    "task",
    "tables",
    "tool_result_rendering",
    "unlisted_tools",
    "oracle_plan",
)


def normalize_behavior(raw: Any) -> dict[str, Any]:
    """Validates a parsed behaviour file and returns it normalised.

    Raises:
        UnsupportedSuiteError: The file says ``"supported": false`` (the message gives its reason).
        SopSpecError: Anything else is wrong; the message names the JSON path.
    """
    if not isinstance(raw, dict):
        fail("$", f"expected an object, got {kind_of(raw)}")
    top = raw
    if top.get("format") != FORMAT:
        fail("$.format", f"expected {FORMAT!r}, got {top.get('format')!r}")
    supported = expect_bool(top.get("supported", True), "$.supported")
    if not supported:
        reason = top.get("reason") or "no reason given"
        domain = top.get("domain", "this suite")
        raise UnsupportedSuiteError(
            f"{domain} is marked unsupported: its tools cannot be replayed from data ({reason})"
        )
    top = expect_object(
        raw, "$", required=("format", "task", "tables", "tools"), optional=_TOP_KEYS
    )
    for key in ("source", "tool_result_rendering"):
        if not isinstance(top.get(key, {}), dict):
            fail(f"$.{key}", f"expected an object, got {kind_of(top[key])}")
    tables = _tables(top["tables"])
    tools = _toolset(top["tools"], "$.tools", tables)
    unlisted = _toolset(top.get("unlisted_tools", {}), "$.unlisted_tools", tables)
    both = sorted(set(tools) & set(unlisted))
    if both:
        fail("$.unlisted_tools", f"tools both listed and unlisted: {both}")
    spec: dict[str, Any] = {
        "format": FORMAT,
        "domain": None if top.get("domain") is None else expect_str(top["domain"], "$.domain"),
        "supported": True,
        "source": dict(top.get("source", {})),
        "task": _task(top["task"]),
        "tables": tables,
        "tool_result_rendering": dict(top.get("tool_result_rendering", {})),
        "tools": tools,
        "unlisted_tools": unlisted,
        "oracle_plan": None,
    }
    if "oracle_plan" in top:
        spec["oracle_plan"] = _plan(top["oracle_plan"], tools, unlisted)
    return spec


def _task(value: Any) -> dict[str, Any]:
    raw = expect_object(
        value,
        "$.task",
        required=("csv", "input_columns", "output_columns"),
        optional=("official_loader_mode", "split_column", "id_column"),
    )
    mode = raw.get("official_loader_mode", "split")
    inputs = expect_strs(raw["input_columns"], "$.task.input_columns", non_empty=True)
    outputs = expect_strs(raw["output_columns"], "$.task.output_columns", non_empty=True)
    for key, columns in (("input_columns", inputs), ("output_columns", outputs)):
        if len(set(columns)) != len(columns):
            fail(f"$.task.{key}", f"a column is listed twice: {columns}")
    shown = sorted(set(inputs) & set(outputs))
    if shown:
        fail("$.task", f"output columns would be shown to the agent as inputs: {shown}")
    return {
        "csv": expect_str(raw["csv"], "$.task.csv"),
        "input_columns": inputs,
        "output_columns": outputs,
        "official_loader_mode": expect_enum(mode, "$.task.official_loader_mode", LOADER_MODES),
        "split_column": _optional_str(raw, "split_column", "$.task"),
        "id_column": _optional_str(raw, "id_column", "$.task"),
    }


def _optional_str(raw: Mapping[str, Any], key: str, path: str) -> str | None:
    return None if raw.get(key) is None else expect_str(raw[key], f"{path}.{key}")


def _tables(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not value:
        fail("$.tables", "expected an object with at least one table")
    out = {}
    for name, spec in value.items():
        path = f"$.tables.{name}"
        raw = expect_object(spec, path, required=("csv",), optional=("na_values", "column_types"))
        na = raw.get("na_values", list(PANDAS_NA_VALUES))
        if not isinstance(na, list) or not all(isinstance(v, str) for v in na):
            fail(f"{path}.na_values", "expected a list of strings")
        types = raw.get("column_types", {})
        if not isinstance(types, dict):
            fail(f"{path}.column_types", f"expected an object, got {kind_of(types)}")
        checked = {
            column: expect_enum(kind, f"{path}.column_types.{column}", COLUMN_TYPES)
            for column, kind in types.items()
        }
        out[name] = {
            "csv": expect_str(raw["csv"], f"{path}.csv"),
            "na_values": list(na),
            "column_types": checked,
        }
    return out


def _toolset(value: Any, path: str, tables: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        fail(path, f"expected an object of tools by name, got {kind_of(value)}")
    return {
        expect_str(name, f"{path}.<name>"): validate_tool(tool, f"{path}.{name}", tables)
        for name, tool in value.items()
    }


def _condition(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict) or len(value) != 1:
        fail(path, f"expected an object with one of: {', '.join(CONDITIONS)}")
    ((op, arg),) = value.items()
    expect_enum(op, path, CONDITIONS)
    if op == "all":
        if not isinstance(arg, list) or not arg:
            fail(f"{path}.all", "expected a non-empty list of conditions")
        return {"all": [_condition(c, f"{path}.all[{i}]") for i, c in enumerate(arg)]}
    if op == "not":
        return {"not": _condition(arg, f"{path}.not")}
    if op == "row_ne":
        if not isinstance(arg, list) or len(arg) != 2:
            fail(f"{path}.row_ne", "expected [column, value]")
        return {"row_ne": [expect_str(arg[0], f"{path}.row_ne[0]"), arg[1]]}
    return {op: expect_str(arg, f"{path}.{op}")}


def _arg_source(value: Any, path: str, earlier_tools: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {kind_of(value)}")
    sources = [s for s in ARG_SOURCES if s in value]
    if len(sources) != 1:
        fail(path, f"expected exactly one of {', '.join(ARG_SOURCES)}")
    source = sources[0]
    extra = {"input_parsed": ("parse",), "out": ("key",)}.get(source, ())
    raw = expect_object(value, path, required=(source, *extra))
    if source == "const":
        return {"const": raw["const"]}
    if source == "input_parsed":
        parse = expect_enum(raw["parse"], f"{path}.parse", INPUT_PARSES)
        return {
            "input_parsed": expect_str(raw["input_parsed"], f"{path}.input_parsed"),
            "parse": parse,
        }
    if source == "out":
        tool = expect_str(raw["out"], f"{path}.out")
        if tool not in earlier_tools:
            fail(f"{path}.out", f"{tool!r} is not called by an earlier step")
        key = raw["key"]
        if key is not None:
            expect_str(key, f"{path}.key")
        return {"out": tool, "key": key}
    return {source: expect_str(raw[source], f"{path}.{source}")}


def _plan(value: Any, tools: Mapping[str, Any], unlisted: Mapping[str, Any]) -> list[dict]:
    if not isinstance(value, list) or not value:
        fail("$.oracle_plan", "expected a non-empty list of steps")
    steps: list[dict[str, Any]] = []
    for i, step in enumerate(value):
        path = f"$.oracle_plan[{i}]"
        raw = expect_object(
            step, path, required=("tool", "args"), optional=("when", "expect", "unlisted")
        )
        is_unlisted = expect_bool(raw.get("unlisted", False), f"{path}.unlisted")
        tool = expect_str(raw["tool"], f"{path}.tool")
        pool = unlisted if is_unlisted else tools
        if tool not in pool:
            where = "unlisted_tools" if is_unlisted else "tools"
            fail(f"{path}.tool", f"{tool!r} is not in {where}")
        args = raw["args"]
        if not isinstance(args, dict):
            fail(f"{path}.args", f"expected an object of arguments, got {kind_of(args)}")
        earlier = {s["tool"] for s in steps}
        expect = raw.get("expect", "ok")
        if isinstance(expect, dict):
            when = expect_object(expect, f"{path}.expect", required=("error_when",))["error_when"]
            expect = {"error_when": _condition(when, f"{path}.expect.error_when")}
        else:
            expect_enum(expect, f"{path}.expect", ("ok", "error"))
        steps.append(
            {
                "tool": tool,
                "args": {k: _arg_source(v, f"{path}.args.{k}", earlier) for k, v in args.items()},
                "when": None if "when" not in raw else _condition(raw["when"], f"{path}.when"),
                "expect": expect,
                "unlisted": is_unlisted,
            }
        )
    return steps


def _condition_columns(cond: Mapping[str, Any]) -> list[str]:
    ((op, arg),) = cond.items()
    if op == "all":
        return [c for sub in arg for c in _condition_columns(sub)]
    if op == "not":
        return _condition_columns(arg)
    return [arg[0]] if op == "row_ne" else [arg]


def check_columns(spec: Mapping[str, Any], tables: Mapping[str, Table], task_table: Table) -> None:
    """Checks every column the spec names against the tables read from CSV.

    Raises:
        SopSpecError: naming the JSON path of the first column that does not exist.
    """

    def need(table: Table, column: str, path: str) -> None:
        if not table.has_column(column):
            raise SopSpecError(f"{path}: no column {column!r} in table {table.name!r}")

    task = spec["task"]
    for key in ("input_columns", "output_columns"):
        for i, column in enumerate(task[key]):
            need(task_table, column, f"$.task.{key}[{i}]")
    for key in ("split_column", "id_column"):
        if task[key]:
            need(task_table, task[key], f"$.task.{key}")
    for group in ("tools", "unlisted_tools"):
        for name, tool in spec[group].items():
            if tool["kind"] != "lookup":
                continue
            path = f"$.{group}.{name}"
            table = tables[tool["lookup"]["table"]]
            for i, m in enumerate(tool["lookup"]["match"]):
                need(table, m["column"], f"{path}.lookup.match[{i}].column")
            for i, c in enumerate(tool["post_checks"]):
                need(table, c["column"], f"{path}.post_checks[{i}].column")
            returns = tool["returns"]
            fields = returns.get("fields") or ([returns["field"]] if "field" in returns else [])
            for i, f in enumerate(fields):
                if "column" in f:
                    need(table, f["column"], f"{path}.returns.fields[{i}]")
    for i, step in enumerate(spec["oracle_plan"] or ()):
        path = f"$.oracle_plan[{i}]"
        for name, source in step["args"].items():
            for key in ("input", "input_parsed"):
                if key in source and source[key] not in task["input_columns"]:
                    raise SopSpecError(
                        f"{path}.args.{name}.{key}: {source[key]!r} is not an input column "
                        "(use 'hidden' for a value the agent must infer)"
                    )
            if "hidden" in source:
                need(task_table, source["hidden"], f"{path}.args.{name}.hidden")
        conditions = [step["when"]] if step["when"] else []
        if isinstance(step["expect"], dict):
            conditions.append(step["expect"]["error_when"])
        for cond in conditions:
            for column in _condition_columns(cond):
                need(task_table, column, f"{path} (condition)")
