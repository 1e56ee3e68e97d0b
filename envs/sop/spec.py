"""Strict validation of one tool of a ``sop-tool-behavior/1`` file, and the checking helpers.

:func:`validate_tool` checks a tool description against the format in SPEC.md and returns a copy
with every default filled in, so the engine can read it without ``.get`` chains. Unknown keys,
kinds, rules, casts and ``on_null`` values, missing fields and dangling references (an ``{arg}``
placeholder naming no parameter, an ``if_field`` naming no earlier field) are errors such as
``$.tools.getBankData.returns.fields[2].cast: unknown value 'integer' (expected one of ...)``.
``notes`` (free prose) is accepted on every object. The ``expect_*`` helpers are shared with
:mod:`~mtrl_envs.sop.behavior`, which validates the rest of the file.

Non-goals: running tools (``engine``), and checking that a behaviour is a faithful description of
upstream code (the fidelity tests do that on real data).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

FORMAT = "sop-tool-behavior/1"
KINDS = ("lookup", "constant", "stub", "invalid", "unsupported")
CASTS = ("raw", "int", "float", "bool", "str", "json_if_str", "pyliteral_if_str")
ON_NULL = ("nan", "null", "empty_string", "zero", "error", "true", "nan_string")
ARG_CASTS = ("int", "float", "str", "bool")
CHECK_PARSES = ("raw", "json_if_str", "pyliteral_if_str", "pyliteral_twice_if_str")
VALUE_SOURCES = ("column", "arg", "const", "regex_match", "if_field", "list_find")
RULES = ("truthy", "not_none", "regex")
SHAPES = ("object", "scalar", "null")

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SopSpecError(ValueError):
    """An invalid SOP suite or behaviour spec; the message names the file and JSON path."""


class UnsupportedSuiteError(SopSpecError):
    """The behaviour spec says ``"supported": false``: its tools cannot be replayed from data."""


def fail(path: str, message: str) -> NoReturn:
    """Raises :class:`SopSpecError` for the JSON ``path``."""
    raise SopSpecError(f"{path}: {message}")


def kind_of(value: Any) -> str:
    """The JSON-ish name of a value's type, for error messages."""
    return "null" if value is None else type(value).__name__


def expect_object(
    value: Any, path: str, required: Sequence[str] = (), optional: Sequence[str] = ()
) -> dict[str, Any]:
    """Checks an object's keys: all of ``required``, nothing outside ``optional`` and ``notes``."""
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {kind_of(value)}")
    allowed = {*required, *optional, "notes"}
    for key in value:
        if key not in allowed:
            fail(f"{path}.{key}", f"unknown key (allowed here: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in value:
            fail(path, f"missing required key {key!r}")
    return value


def expect_str(value: Any, path: str) -> str:
    """Returns ``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value:
        fail(path, f"expected a non-empty string, got {kind_of(value)} {value!r}")
    return value


def expect_strs(value: Any, path: str, *, non_empty: bool = False) -> list[str]:
    """Returns ``value`` if it is a list of non-empty strings."""
    if not isinstance(value, list):
        fail(path, f"expected a list of strings, got {kind_of(value)}")
    if non_empty and not value:
        fail(path, "expected at least one entry")
    return [expect_str(v, f"{path}[{i}]") for i, v in enumerate(value)]


def expect_bool(value: Any, path: str) -> bool:
    """Returns ``value`` if it is a boolean."""
    if not isinstance(value, bool):
        fail(path, f"expected true or false, got {kind_of(value)} {value!r}")
    return value


def expect_enum(value: Any, path: str, choices: Sequence[str]) -> str:
    """Returns ``value`` if it is one of ``choices``."""
    if value not in choices:
        fail(path, f"unknown value {value!r} (expected one of: {', '.join(choices)})")
    return value


def expect_choice(value: Any, path: str, key: str, choices: Sequence[str]) -> str:
    """Returns the discriminating ``key`` of an object (``kind``, ``rule``, ``shape``)."""
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {kind_of(value)}")
    if key not in value:
        fail(path, f"missing required key {key!r}")
    return expect_enum(value[key], f"{path}.{key}", choices)


def expect_template(text: Any, path: str, names: Sequence[str]) -> str:
    """Checks that a message's ``{name}`` placeholders all name known values."""
    text = expect_str(text, path)
    for name in _PLACEHOLDER.findall(text):
        if name not in names:
            fail(path, f"placeholder {{{name}}} names no parameter (known: {sorted(names)})")
    return text


def _templates_in(value: Any, path: str, names: Sequence[str]) -> Any:
    """Checks the placeholders of every string inside a JSON value (an ``on_none`` return)."""
    if isinstance(value, str):
        return expect_template(value, path, names) if value else value
    if isinstance(value, dict):
        return {k: _templates_in(v, f"{path}.{k}", names) for k, v in value.items()}
    if isinstance(value, list):
        return [_templates_in(v, f"{path}[{i}]", names) for i, v in enumerate(value)]
    return value


def expect_pattern(value: Any, path: str) -> str:
    """Returns ``value`` if it is a valid regular expression."""
    pattern = expect_str(value, path)
    try:
        re.compile(pattern)
    except re.error as e:
        fail(path, f"invalid regular expression: {e}")
    return pattern


def expect_param(value: Any, path: str, params: Sequence[str]) -> str:
    """Returns ``value`` if it names one of the tool's parameters."""
    name = expect_str(value, path)
    if name not in params:
        fail(path, f"{name!r} is not a parameter of this tool (parameters: {list(params)})")
    return name


# ---- tools ---------------------------------------------------------------------------------


def _params(value: Any, path: str) -> dict[str, Any]:
    raw = expect_object(value, path, optional=("required", "optional", "reject_unknown"))
    required = expect_strs(raw.get("required", []), f"{path}.required")
    optional = raw.get("optional", {})
    if not isinstance(optional, dict):
        fail(f"{path}.optional", f"expected an object of defaults, got {kind_of(optional)}")
    clash = sorted(set(required) & set(optional))
    if clash or len(set(required)) != len(required):
        fail(path, f"parameters listed twice: {clash or required}")
    reject = expect_bool(raw.get("reject_unknown", True), f"{path}.reject_unknown")
    return {"required": required, "optional": dict(optional), "reject_unknown": reject}


def _rule(value: Any, path: str, params: Sequence[str]) -> dict[str, Any]:
    rule = expect_choice(value, path, "rule", RULES)
    if rule == "regex":
        raw = expect_object(value, path, required=("rule", "arg", "pattern", "error"))
        return {
            "rule": rule,
            "arg": expect_param(raw["arg"], f"{path}.arg", params),
            "pattern": expect_pattern(raw["pattern"], f"{path}.pattern"),
            "error": expect_template(raw["error"], f"{path}.error", params),
        }
    raw = expect_object(value, path, required=("rule", "args", "error"))
    args = expect_strs(raw["args"], f"{path}.args", non_empty=True)
    for i, a in enumerate(args):
        expect_param(a, f"{path}.args[{i}]", params)
    return {
        "rule": rule,
        "args": args,
        "error": expect_template(raw["error"], f"{path}.error", params),
    }


def _lookup(value: Any, path: str, params: Sequence[str], tables: Mapping[str, Any]) -> dict:
    raw = expect_object(
        value, path, required=("table", "match", "on_none", "on_multiple"), optional=("compare",)
    )
    table = expect_str(raw["table"], f"{path}.table")
    if table not in tables:
        fail(f"{path}.table", f"no table named {table!r} (tables: {sorted(tables)})")
    expect_enum(raw.get("compare", "pandas_eq"), f"{path}.compare", ("pandas_eq",))
    if not isinstance(raw["match"], list) or not raw["match"]:
        fail(f"{path}.match", "expected a non-empty list of {column, arg} objects")
    match = []
    for i, m in enumerate(raw["match"]):
        where = f"{path}.match[{i}]"
        m = expect_object(m, where, required=("column", "arg"), optional=("arg_cast",))
        cast = m.get("arg_cast")
        match.append(
            {
                "column": expect_str(m["column"], f"{where}.column"),
                "arg": expect_param(m["arg"], f"{where}.arg", params),
                "arg_cast": None
                if cast is None
                else expect_enum(cast, f"{where}.arg_cast", ARG_CASTS),
            }
        )
    on_none = expect_object(raw["on_none"], f"{path}.on_none", optional=("error", "return"))
    if len(set(on_none) - {"notes"}) != 1:
        fail(f"{path}.on_none", "expected exactly one of 'error' or 'return'")
    if "error" in on_none:
        on_none = {"error": expect_template(on_none["error"], f"{path}.on_none.error", params)}
    else:
        on_none = {"return": _templates_in(on_none["return"], f"{path}.on_none.return", params)}
    multiple = raw["on_multiple"]
    if multiple != "first":
        error = expect_object(multiple, f"{path}.on_multiple", required=("error",))["error"]
        multiple = {"error": expect_template(error, f"{path}.on_multiple.error", params)}
    return {"table": table, "match": match, "on_none": on_none, "on_multiple": multiple}


def _post_check(value: Any, path: str, params: Sequence[str]) -> dict[str, Any]:
    raw = expect_object(
        value,
        path,
        required=("rule", "arg", "column", "error"),
        optional=("arg_parse", "column_parse"),
    )
    expect_enum(raw["rule"], f"{path}.rule", ("arg_equals_column",))
    return {
        "rule": raw["rule"],
        "arg": expect_param(raw["arg"], f"{path}.arg", params),
        "column": expect_str(raw["column"], f"{path}.column"),
        "arg_parse": expect_enum(raw.get("arg_parse", "raw"), f"{path}.arg_parse", CHECK_PARSES),
        "column_parse": expect_enum(
            raw.get("column_parse", "raw"), f"{path}.column_parse", CHECK_PARSES
        ),
        "error": expect_template(raw["error"], f"{path}.error", params),
    }


def _field(
    value: Any, path: str, params: Sequence[str], earlier: Sequence[str], *, keyed: bool, row: bool
) -> dict[str, Any]:
    """One returned value; ``earlier`` are the keys before it, ``row`` whether a row exists."""
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {kind_of(value)}")
    sources = [s for s in VALUE_SOURCES if s in value]
    if len(sources) != 1:
        fail(path, f"expected exactly one value source of {', '.join(VALUE_SOURCES)}")
    source = sources[0]
    extra = {
        "column": ("cast", "on_null"),
        "if_field": ("then", "else"),
        "list_find": ("wrap_list", "on_missing"),
    }.get(source, ())
    raw = expect_object(
        value, path, required=("key", source) if keyed else (source,), optional=("key", *extra)
    )
    out: dict[str, Any] = {"source": source, "key": raw.get("key")}
    if out["key"] is not None:
        expect_str(out["key"], f"{path}.key")
    if source in ("column", "list_find") and not row:
        fail(f"{path}.{source}", "only a lookup tool has a row to read columns from")
    if source == "column":
        out["column"] = expect_str(raw["column"], f"{path}.column")
        out["cast"] = expect_enum(raw.get("cast", "raw"), f"{path}.cast", CASTS)
        on_null = raw.get("on_null")
        out["on_null"] = (
            None if on_null is None else expect_enum(on_null, f"{path}.on_null", ON_NULL)
        )
    elif source == "arg":
        out["arg"] = expect_param(raw["arg"], f"{path}.arg", params)
    elif source == "const":
        out["const"] = raw["const"]
    elif source == "regex_match":
        spec = expect_object(raw["regex_match"], f"{path}.regex_match", required=("arg", "pattern"))
        out["arg"] = expect_param(spec["arg"], f"{path}.regex_match.arg", params)
        out["pattern"] = expect_pattern(spec["pattern"], f"{path}.regex_match.pattern")
    elif source == "if_field":
        expect_object(raw, path, required=("if_field", "then", "else"), optional=("key",))
        out["if_field"] = expect_str(raw["if_field"], f"{path}.if_field")
        if out["if_field"] not in earlier:
            fail(f"{path}.if_field", f"{out['if_field']!r} is not an earlier field's key")
        out["then"], out["else"] = raw["then"], raw["else"]
    else:
        out.update(_list_find(raw, path, params))
    return out


def _list_find(raw: dict[str, Any], path: str, params: Sequence[str]) -> dict[str, Any]:
    spec = expect_object(
        raw["list_find"],
        f"{path}.list_find",
        required=("column", "match_field", "value"),
        optional=("parse",),
    )
    where = f"{path}.list_find"
    value = expect_object(
        spec["value"], f"{where}.value", required=("arg_path",), optional=("arg_parse",)
    )
    arg_path = value["arg_path"]
    if not isinstance(arg_path, list) or not arg_path:
        fail(f"{where}.value.arg_path", "expected a non-empty list: [parameter, key or index...]")
    expect_param(arg_path[0], f"{where}.value.arg_path[0]", params)
    for i, step in enumerate(arg_path[1:], start=1):
        if isinstance(step, bool) or not isinstance(step, str | int):
            fail(f"{where}.value.arg_path[{i}]", f"expected a key or an index, got {step!r}")
    arg_parse = value.get("arg_parse")
    if arg_parse is not None:
        expect_enum(arg_parse, f"{where}.value.arg_parse", ("str_then_quotes_to_json",))
    on_missing = raw.get("on_missing")
    if on_missing is not None:
        error = expect_object(on_missing, f"{path}.on_missing", required=("error",))["error"]
        on_missing = {
            "error": expect_template(error, f"{path}.on_missing.error", [*params, "value"])
        }
    return {
        "column": expect_str(spec["column"], f"{where}.column"),
        "parse": expect_enum(
            spec.get("parse", "quotes_to_json"), f"{where}.parse", ("quotes_to_json",)
        ),
        "match_field": expect_str(spec["match_field"], f"{where}.match_field"),
        "arg_path": list(arg_path),
        "arg_parse": arg_parse,
        "wrap_list": expect_bool(raw.get("wrap_list", False), f"{path}.wrap_list"),
        "on_missing": on_missing,
    }


def _returns(value: Any, path: str, params: Sequence[str], *, row: bool) -> dict[str, Any]:
    shape = expect_choice(value, path, "shape", SHAPES)
    if shape == "null":
        expect_object(value, path, required=("shape",))
        return {"shape": shape}
    if shape == "scalar":
        raw = expect_object(value, path, required=("shape", "field"))
        return {
            "shape": shape,
            "field": _field(raw["field"], f"{path}.field", params, (), keyed=False, row=row),
        }
    raw = expect_object(value, path, required=("shape", "fields"))
    if not isinstance(raw["fields"], list):
        fail(f"{path}.fields", f"expected a list of fields, got {kind_of(raw['fields'])}")
    fields: list[dict[str, Any]] = []
    for i, f in enumerate(raw["fields"]):
        keys = [x["key"] for x in fields]
        field = _field(f, f"{path}.fields[{i}]", params, keys, keyed=True, row=row)
        if field["key"] in keys:
            fail(f"{path}.fields[{i}].key", f"duplicate key {field['key']!r}")
        fields.append(field)
    return {"shape": shape, "fields": fields}


def validate_tool(
    value: Any, path: str, tables: Mapping[str, Any], *, supported: bool = True
) -> dict[str, Any]:
    """Validates one tool and returns it normalised.

    Args:
        value: The tool's JSON object.
        path: Its JSON path, for error messages (``$.tools.<name>``).
        tables: The file's tables by name (a lookup must name one).
        supported: Whether the suite claims to be replayable (then no tool may be
            ``unsupported``).

    Raises:
        SopSpecError: naming the JSON path of the first problem.
    """
    kind = expect_choice(value, path, "kind", KINDS)
    common = ("kind", "reason", "approximation")
    if kind == "unsupported" and supported:
        fail(f"{path}.kind", "an 'unsupported' tool in a suite marked supported")
    if kind in ("invalid", "unsupported"):
        raw = expect_object(value, path, required=("kind",), optional=(*common, "params"))
        params = _params(raw.get("params", {}), f"{path}.params")
        reason = raw.get("reason")
        return {
            "kind": kind,
            "params": params,
            "reason": reason and expect_str(reason, f"{path}.reason"),
        }
    is_lookup = kind == "lookup"
    required = ("kind", "params", "returns", *(("lookup",) if is_lookup else ()))
    optional = (*common, "validate", *(("post_checks",) if is_lookup else ()))
    raw = expect_object(value, path, required=required, optional=optional)
    params = _params(raw["params"], f"{path}.params")
    names = [*params["required"], *params["optional"]]
    rules = raw.get("validate", [])
    checks = raw.get("post_checks", [])
    if not isinstance(rules, list) or not isinstance(checks, list):
        fail(path, "'validate' and 'post_checks' must be lists")
    return {
        "kind": kind,
        "params": params,
        "validate": [_rule(r, f"{path}.validate[{i}]", names) for i, r in enumerate(rules)],
        "lookup": _lookup(raw["lookup"], f"{path}.lookup", names, tables) if is_lookup else None,
        "post_checks": [
            _post_check(c, f"{path}.post_checks[{i}]", names) for i, c in enumerate(checks)
        ],
        "returns": _returns(raw["returns"], f"{path}.returns", names, row=is_lookup),
        "reason": raw.get("reason"),
    }
