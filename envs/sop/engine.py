"""Runs one tool of a behaviour spec: signature, validation, lookup, checks, result rendering.

A :class:`BehaviorTool` is the callable behind one SOP tool. Called with the agent's keyword
arguments, it returns the rendered result (``json.dumps`` with Python's defaults, so NaN prints as
``NaN`` and keys keep the spec's order) or raises :class:`~mtrl_gym.ToolError` with the message the
environment shows as ``Error: <message>``. The order of work follows the upstream Python tools:

1. bind arguments like a Python signature (unexpected keyword first, then missing ones, in
   CPython's wording);
2. ``validate`` rules, first failure wins;
3. the lookup (``pandas_eq`` on each ``match`` column, ``on_none``, ``on_multiple``);
4. ``post_checks`` on the found row;
5. the returned fields, in order (a field error, e.g. ``on_null: error``, fails the call).

Failures Python itself would raise on bad data or arguments (``int("x")``, a JSON or literal that
does not parse, a missing key along an ``arg_path``) become agent-visible errors with Python's
message, made deterministic (no object addresses). Non-goals: schema validation of arguments
(upstream never enforced the JSON schemas) and tool discovery (``suite``).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mtrl_envs.sop.table import NAN, Table, is_na
from mtrl_gym import ToolError

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Everything literal_eval / json.loads may raise on hostile text, deep nesting included.
_PARSE_ERRORS = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)


def fill(template: str, values: Mapping[str, Any]) -> str:
    """Replaces ``{name}`` placeholders by ``str(value)``; other braces are left alone.

    >>> fill("No product {product_id} in {}", {"product_id": 7})
    'No product 7 in {}'
    """
    return _PLACEHOLDER.sub(
        lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template
    )


def _fill_json(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return fill(value, values)
    if isinstance(value, dict):
        return {k: _fill_json(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_json(v, values) for v in value]
    return value


def _python_error(error: BaseException) -> ToolError:
    """An agent-visible error carrying Python's message, without memory addresses."""
    return ToolError(_ADDRESS.sub("", str(error)) or type(error).__name__)


def literal(text: str) -> Any:
    """``ast.literal_eval`` with failures as :class:`ToolError`."""
    try:
        return ast.literal_eval(text)
    except _PARSE_ERRORS as e:
        raise _python_error(e) from None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except _PARSE_ERRORS as e:
        raise _python_error(e) from None


def _if_str(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    return lambda v: parse(v) if isinstance(v, str) else v


def _twice(v: Any) -> Any:
    # Some cells hold a literal that itself prints a literal; upstream parses until not a string.
    once = _if_str(literal)(v)
    return _if_str(literal)(once)


def _convert(kind: str, value: Any) -> Any:
    """``int(v)``, ``float(v)``, ``str(v)``, ``bool(v)`` as Python does them, errors included."""
    try:
        return {"int": int, "float": float, "str": str, "bool": bool}[kind](value)
    except (ValueError, TypeError, OverflowError) as e:
        raise _python_error(e) from None


CASTS: dict[str, Callable[[Any], Any]] = {
    "raw": lambda v: v,
    "int": lambda v: _convert("int", v),
    "float": lambda v: _convert("float", v),
    "bool": lambda v: _convert("bool", v),
    "str": lambda v: _convert("str", v),
    "json_if_str": _if_str(_json),
    "pyliteral_if_str": _if_str(literal),
}
PARSES: dict[str, Callable[[Any], Any]] = {
    "raw": CASTS["raw"],
    "json_if_str": CASTS["json_if_str"],
    "pyliteral_if_str": CASTS["pyliteral_if_str"],
    "pyliteral_twice_if_str": _twice,
}
# What a missing cell turns into; the replacement is final (not cast): "" stays "" under cast int.
ON_NULL: dict[str, Any] = {
    "nan": NAN,
    "null": None,
    "empty_string": "",
    "zero": 0,
    "true": True,
    "nan_string": "nan",
}


def _plural_names(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in names]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} and {quoted[1]}"
    return f"{', '.join(quoted[:-1])}, and {quoted[-1]}"


def bind(name: str, params: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Binds keyword arguments like a Python signature; wrong calls raise CPython's TypeError text.

    >>> bind("f", {"required": ["a", "b"], "optional": {}, "reject_unknown": True}, {})
    Traceback (most recent call last):
    ...
    mtrl_gym.tools.ToolError: f() missing 2 required positional arguments: 'a' and 'b'
    """
    known = [*params["required"], *params["optional"]]
    if params["reject_unknown"]:
        for key in kwargs:
            if key not in known:
                raise ToolError(f"{name}() got an unexpected keyword argument {key!r}")
    missing = [p for p in params["required"] if p not in kwargs]
    if missing:
        noun = "argument" if len(missing) == 1 else "arguments"
        raise ToolError(
            f"{name}() missing {len(missing)} required positional {noun}: {_plural_names(missing)}"
        )
    bound = dict(params["optional"])
    bound.update((k, v) for k, v in kwargs.items() if k in known)
    return bound


def _check_rule(rule: Mapping[str, Any], args: Mapping[str, Any]) -> None:
    kind = rule["rule"]
    if kind == "regex":
        value = args[rule["arg"]]
        # A pattern is text-only: a number or list cannot fully match it.
        ok = isinstance(value, str) and re.fullmatch(rule["pattern"], value) is not None
    elif kind == "truthy":
        ok = all(bool(args[a]) for a in rule["args"])
    else:
        ok = all(args[a] is not None for a in rule["args"])
    if not ok:
        raise ToolError(fill(rule["error"], args))


class BehaviorTool:
    """The callable behind one SOP tool.

    Args:
        name: The tool's name (used in signature errors).
        spec: The normalised tool description (see :func:`mtrl_envs.sop.spec.validate_tool`).
        tables: The suite's tables by name.
    """

    def __init__(self, name: str, spec: Mapping[str, Any], tables: Mapping[str, Table]):
        self.name = name
        self.spec = spec
        self.table = tables[spec["lookup"]["table"]] if spec["kind"] == "lookup" else None

    def __call__(self, **kwargs: Any) -> str:
        """Runs the tool; returns the rendered result or raises :class:`ToolError`."""
        spec = self.spec
        if spec["kind"] in ("invalid", "unsupported"):
            raise ToolError(spec["reason"] or f"{self.name} is not available")
        args = bind(self.name, spec["params"], kwargs)
        for rule in spec["validate"]:
            _check_rule(rule, args)
        row = None
        if self.table is not None:
            row = self._lookup(args)
            if row is None:  # no match, and the spec returns a value instead of an error
                return _render(_fill_json(spec["lookup"]["on_none"]["return"], args))
            for check in spec["post_checks"]:
                self._post_check(check, args, row)
        returns = spec["returns"]
        if returns["shape"] == "null":
            return _render(None)
        if returns["shape"] == "scalar":
            return _render(self._field(returns["field"], args, row, {}))
        result: dict[str, Any] = {}
        for field in returns["fields"]:
            result[field["key"]] = self._field(field, args, row, result)
        return _render(result)

    def _lookup(self, args: Mapping[str, Any]) -> int | None:
        """The matching row number; ``None`` when nothing matches and ``on_none`` returns."""
        assert self.table is not None
        lookup = self.spec["lookup"]
        rows: list[int] | None = None
        for m in lookup["match"]:
            value = args[m["arg"]]
            if m["arg_cast"] is not None:
                value = _convert(m["arg_cast"], value)
            matches = self.table.find(m["column"], value)
            if rows is None:
                rows = matches
            else:
                keep = set(matches)
                rows = [r for r in rows if r in keep]
        if not rows:
            on_none = lookup["on_none"]
            if "error" in on_none:
                raise ToolError(fill(on_none["error"], args))
            return None
        if len(rows) > 1 and lookup["on_multiple"] != "first":
            raise ToolError(fill(lookup["on_multiple"]["error"], args))
        return rows[0]

    def _post_check(self, check: Mapping[str, Any], args: Mapping[str, Any], row: int) -> None:
        assert self.table is not None
        got = PARSES[check["arg_parse"]](args[check["arg"]])
        want = PARSES[check["column_parse"]](self.table.value(row, check["column"]))
        if is_na(want) or got != want:
            raise ToolError(fill(check["error"], args))

    def _field(
        self,
        field: Mapping[str, Any],
        args: Mapping[str, Any],
        row: int | None,
        earlier: Mapping[str, Any],
    ) -> Any:
        source = field["source"]
        if source == "arg":
            return args[field["arg"]]
        if source == "const":
            return field["const"]
        if source == "if_field":
            return field["then"] if earlier[field["if_field"]] else field["else"]
        if source == "regex_match":
            value = args[field["arg"]]
            if not isinstance(value, str):
                # re.match's own complaint about a non-string subject.
                raise ToolError(
                    f"expected string or bytes-like object, got {type(value).__name__!r}"
                )
            return re.match(field["pattern"], value) is not None
        assert self.table is not None and row is not None
        if source == "column":
            return self._column(field, self.table.value(row, field["column"]))
        return self._list_find(field, args, self.table.value(row, field["column"]))

    def _column(self, field: Mapping[str, Any], value: Any) -> Any:
        on_null = field["on_null"]
        if is_na(value) and on_null is not None:
            if on_null == "error":
                CASTS[field["cast"]](NAN)  # raises the cast's own complaint, e.g. int(NaN)
                raise ToolError(f"missing value in column {field['column']!r}")
            return ON_NULL[on_null]
        return CASTS[field["cast"]](value)

    def _list_find(self, field: Mapping[str, Any], args: Mapping[str, Any], cell: Any) -> Any:
        if not isinstance(cell, str):
            # Upstream calls str.replace on the cell; a missing cell is a float NaN.
            raise ToolError(f"{type(cell).__name__!r} object has no attribute 'replace'")
        items = _json(cell.replace("'", '"'))
        first, *rest = field["arg_path"]
        value = args[first]
        if field["arg_parse"] == "str_then_quotes_to_json":
            value = _json(str(value).replace("'", '"'))
        try:
            for step in rest:
                value = value[step]
        except (KeyError, IndexError, TypeError) as e:
            raise _python_error(e) from None
        key = field["match_field"]
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and key in item and item[key] == value:
                return [item] if field["wrap_list"] else item
        if field["on_missing"] is not None:
            raise ToolError(fill(field["on_missing"]["error"], {**args, "value": value}))
        return None


def _render(value: Any) -> str:
    """``json.dumps`` with Python's defaults; a value JSON cannot hold is the call's error."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise _python_error(e) from None
