"""Tools an agent can call: declaration, production schemas, argument validation, invocation.

A :class:`Tool` is a name, an OpenAI-style JSON schema and a callable. Tools are declared from a
Python function (schema from its signature and Google-style docstring) or from a production schema
(OpenAI function JSON, or a Bedrock ``toolSpec``), so the agent sees exactly what a deployed
system declares. Arguments are validated against the schema before the callable runs.

Who is at fault decides what the trainer does, so the rule is strict:

- Everything the agent's text decides is checked *before* the callable runs, and a violation is
  the agent's mistake (``Error: ...`` shown to it, the episode goes on, the outcome is scored):
  arguments against the schema, then against the callable's own signature (unexpected or missing
  names, even when the schema leaves ``additionalProperties`` open) and its simple type hints
  (wrong types, even when the schema declares none), and text that is not valid Unicode.
- :class:`ToolError` raised by the callable: the agent's call was wrong in a way only the tool
  can tell (record not found, bad value). Shown to the agent like the above. A tool written to
  *return* its errors as text (``"Error: order not found"``, as tau-bench's tools do) is declared
  with ``error_prefix="Error:"``: a returned string starting with the prefix counts as that
  ``ToolError``, with the rest of the string as its message.
- Any other exception, or :class:`ToolInfraError`: the tool's own machinery failed. The episode
  ends with status ``infra_error`` and is excluded from training rather than scored 0. Since the
  checks above run first, agent text cannot reach this branch through a well-typed callable; a
  tool whose body raises ``TypeError`` on values its schema and hints allow has a bug.

Non-goals: running tools (see ``mtrl_gym.core``) and isolating untrusted code (``sandbox``).
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import jsonschema

from mtrl_gym.types import JSON, copy_json, text_problem

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


class ToolError(Exception):
    """A mistake in the agent's call; shown to the agent as ``Error: <message>``."""


class ToolInfraError(Exception):
    """The tool's infrastructure failed (service down, sandbox crashed); ends the episode."""


@dataclass(frozen=True)
class Tool:
    """A callable tool with a JSON-schema for its arguments.

    Attributes:
        name: Name the agent calls the tool by.
        description: What the tool does, shown to the agent.
        parameters: JSON schema of the arguments object (``{"type": "object", ...}``).
        fn: The implementation, called with keyword arguments; may be ``async``.
        timeout_s: Wall-clock limit for one call (``None``: the environment's default).
        ends_episode: Every successful call ends the episode (status ``ok``, scored), with the
            return value as the result the agent reads: a transfer-to-human tool. A tool that
            ends it only sometimes returns :class:`~mtrl_gym.types.EndEpisode` instead.
        error_prefix: When set, a returned string starting with it is the agent's mistake, as if
            the tool had raised :class:`ToolError` with the rest of the string (leading spaces
            and colons removed) as its message; ``None`` (the default) treats every return value
            as a result. For tools that report errors as text, e.g. ``"Error:"``.

    Example:
        >>> def add(a: int, b: int) -> int:
        ...     '''Adds two integers.
        ...
        ...     Args:
        ...         a: First addend.
        ...         b: Second addend.
        ...     '''
        ...     return a + b
        >>> t = Tool.from_function(add)
        >>> t.schema["function"]["parameters"]["required"]
        ['a', 'b']
        >>> t.validate({"a": 1, "b": "2"})
        "argument 'b': '2' is not of type 'integer'"
    """

    name: str
    description: str
    parameters: Mapping[str, JSON]
    fn: Callable[..., Any]
    timeout_s: float | None = None
    ends_episode: bool = False
    error_prefix: str | None = None
    _validator: Any = field(default=None, repr=False, compare=False)
    # The callable's signature (None when it has none Python can read, e.g. some builtins) and a
    # validator built from its type hints: the checks that keep an agent's extra, missing or
    # mistyped argument from reaching the body as a TypeError (see the module docstring).
    _signature: inspect.Signature | None = field(default=None, repr=False, compare=False)
    _hint_validator: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"invalid tool name {self.name!r}: use letters, digits, _ . - only")
        if not callable(self.fn):
            raise TypeError(f"tool {self.name!r}: fn must be callable, got {type(self.fn)}")
        if self.error_prefix is not None and (
            not isinstance(self.error_prefix, str) or not self.error_prefix.strip()
        ):
            raise ValueError(
                f"tool {self.name!r}: error_prefix must be a non-blank string or None, "
                f"got {self.error_prefix!r}"
            )
        if self.parameters.get("type", "object") != "object":
            raise ValueError(f"tool {self.name!r}: parameters schema must have type 'object'")
        try:
            validator_cls = jsonschema.validators.validator_for(
                self.parameters, default=jsonschema.Draft202012Validator
            )
            validator_cls.check_schema(self.parameters)
        except jsonschema.SchemaError as e:
            raise ValueError(f"tool {self.name!r}: invalid parameters schema: {e.message}") from e
        # Compiling the validator once per tool keeps validation cheap on the hot path.
        object.__setattr__(self, "_validator", validator_cls(self.parameters))
        signature = _signature_of(self.fn)
        object.__setattr__(self, "_signature", signature)
        if signature is not None:
            for p in signature.parameters.values():
                if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
                    # Tools are called with keywords only, so this one could never be called.
                    raise ValueError(f"tool {self.name!r}: positional-only parameter {p.name!r}")
            hints = _hint_schema(self.fn, signature)
            if hints is not None:
                object.__setattr__(self, "_hint_validator", jsonschema.Draft202012Validator(hints))

    @property
    def is_async(self) -> bool:
        """Whether ``fn`` is a coroutine function."""
        return inspect.iscoroutinefunction(self.fn)

    @property
    def schema(self) -> dict[str, JSON]:
        """The OpenAI function schema, as passed to chat templates (a fresh copy each call)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": copy_json(dict(self.parameters)),
            },
        }

    def validate(self, arguments: Any) -> str | None:
        """Returns a clear message if the agent's ``arguments`` cannot be passed, else ``None``.

        Checks, in order: a JSON object; valid Unicode text; the schema; the callable's
        signature (names); its type hints. Anything this accepts reaches ``fn`` as keywords it
        can bind.

        >>> t = Tool.from_openai({"name": "f", "parameters": {"type": "object"}}, lambda a: a)
        >>> t.validate({"a": 1, "b": 2})
        "unexpected argument 'b' (f takes: a)"
        >>> t.validate({})
        "missing required argument 'a' (f takes: a)"
        """
        if not isinstance(arguments, dict):
            return f"arguments must be a JSON object, got {type(arguments).__name__}"
        problem = text_problem(arguments)
        if problem is not None:
            return f"argument {problem}"
        for validator in (self._validator, self._hint_validator):
            if validator is None:
                continue
            error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
            if error is not None:
                where = ".".join(str(p) for p in error.absolute_path)
                return f"argument '{where}': {error.message}" if where else error.message
        return self._binding_problem(arguments)

    def _binding_problem(self, arguments: dict[str, Any]) -> str | None:
        """Says why ``fn(**arguments)`` cannot bind, without calling it."""
        sig = self._signature
        if sig is None:
            return None
        params = sig.parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            named = set()  # **kwargs takes any name
        else:
            named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        takes = ", ".join(
            p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        takes = f" ({self.name} takes: {takes or 'no arguments'})"
        if named:
            unexpected = sorted(set(arguments) - named)
            if unexpected:
                return f"unexpected argument {unexpected[0]!r}{takes}"
        for p in params:
            needs_value = p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            if needs_value and p.default is p.empty and p.name not in arguments:
                return f"missing required argument {p.name!r}{takes}"
        return None

    def returned_error(self, value: Any) -> str | None:
        """The error message in a return value, under :attr:`error_prefix`; else ``None``.

        >>> t = Tool.from_openai({"name": "f"}, lambda: None, error_prefix="Error:")
        >>> t.returned_error("Error: no such order")
        'no such order'
        >>> t.returned_error("order #1: shipped") is None
        True
        """
        prefix = self.error_prefix
        if prefix is None or not isinstance(value, str) or not value.startswith(prefix):
            return None
        # "Error: x" under the prefix "Error" reads "x", not ": x"; the agent sees "Error: x".
        return value[len(prefix) :].lstrip(": \t\n") or "the tool reported an error"

    def __call__(self, **arguments: Any) -> Any:
        """Calls the implementation directly (no validation; the environment validates)."""
        return self.fn(**arguments)

    # ---- constructors from production schemas -------------------------------------------------

    @classmethod
    def from_openai(
        cls,
        schema: Mapping[str, Any],
        fn: Callable[..., Any],
        *,
        timeout_s: float | None = None,
        ends_episode: bool = False,
        error_prefix: str | None = None,
    ) -> Tool:
        """Declares a tool from an OpenAI function schema.

        Accepts both ``{"type": "function", "function": {...}}`` and the bare inner object.
        """
        spec = schema.get("function", schema)
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError("OpenAI tool schema needs a 'name' (optionally under 'function')")
        params = spec.get("parameters") or {"type": "object", "properties": {}}
        return cls(
            name=spec["name"],
            description=spec.get("description", ""),
            parameters=copy_json(dict(params)),
            fn=fn,
            timeout_s=timeout_s,
            ends_episode=ends_episode,
            error_prefix=error_prefix,
        )

    @classmethod
    def from_bedrock(
        cls,
        spec: Mapping[str, Any],
        fn: Callable[..., Any],
        *,
        timeout_s: float | None = None,
        ends_episode: bool = False,
        error_prefix: str | None = None,
    ) -> Tool:
        """Declares a tool from an Amazon Bedrock ``toolSpec`` (``inputSchema.json``)."""
        inner = spec.get("toolSpec", spec)
        try:
            name = inner["name"]
            params = inner["inputSchema"]["json"]
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"Bedrock toolSpec needs 'name' and 'inputSchema.json' (missing {e})"
            ) from e
        return cls(
            name=name,
            description=inner.get("description", ""),
            parameters=copy_json(dict(params)),
            fn=fn,
            timeout_s=timeout_s,
            ends_episode=ends_episode,
            error_prefix=error_prefix,
        )

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
        ends_episode: bool = False,
        error_prefix: str | None = None,
    ) -> Tool:
        """Declares a tool from a typed Python function and its Google-style docstring.

        Parameters without a default are required; ``additionalProperties`` is false, as in
        strict production schemas.
        """
        doc_summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
        hints = typing.get_type_hints(fn)
        properties: dict[str, JSON] = {}
        required: list[str] = []
        for pname, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ValueError(f"tool {fn.__name__}: *args/**kwargs cannot be described")
            if pname not in hints:
                raise ValueError(f"tool {fn.__name__}: parameter {pname!r} needs a type hint")
            prop = _type_to_schema(hints[pname], f"{fn.__name__}.{pname}")
            if pname in arg_docs:
                prop["description"] = arg_docs[pname]
            if param.default is param.empty:
                required.append(pname)
            else:
                default = param.default
                prop["default"] = default.value if isinstance(default, enum.Enum) else default
            properties[pname] = prop
        params: dict[str, JSON] = {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
        return cls(
            name=name or fn.__name__,
            description=description if description is not None else doc_summary,
            parameters=params,
            fn=fn,
            timeout_s=timeout_s,
            ends_episode=ends_episode,
            error_prefix=error_prefix,
        )


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    ends_episode: bool = False,
    error_prefix: str | None = None,
) -> Any:
    """Decorator form of :meth:`Tool.from_function` (``@tool`` or ``@tool(name=...)``)."""

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(
            f,
            name=name,
            timeout_s=timeout_s,
            ends_episode=ends_episode,
            error_prefix=error_prefix,
        )

    return wrap(fn) if fn is not None else wrap


def render_result(value: Any) -> str:
    """Renders a tool's return value as the text the agent reads.

    Strings pass through; anything else is ``json.dumps`` with Python's defaults. A value JSON
    cannot encode is a bug in the tool, hence an infrastructure error.
    """
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise ToolInfraError(f"tool returned a value that is not JSON-serialisable: {e}") from e


# ---- schema from Python types -----------------------------------------------------------------


def _signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The callable's signature, or ``None`` where Python cannot tell it (some builtins)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _hint_schema(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, JSON] | None:
    """A schema of the parameters whose type hints map to JSON types, or ``None`` if none do.

    Used beside a declared schema (e.g. one from ``from_openai`` that gives no types), so an
    argument the callable's hints reject is the agent's mistake before the body runs. Hints that
    cannot be described (custom classes, unresolvable forward references) are skipped: only
    what is certain is enforced.
    """
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable hints only mean nothing to enforce
        return None
    properties: dict[str, JSON] = {}
    for pname, param in signature.parameters.items():
        if pname not in hints or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        try:
            prop = _type_to_schema(hints[pname], pname)
        except ValueError:
            continue
        if prop:
            properties[pname] = prop
    return {"type": "object", "properties": properties} if properties else None


_SIMPLE_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _type_to_schema(tp: Any, where: str) -> dict[str, JSON]:
    """Maps a type hint to a JSON schema fragment; unsupported hints are a clear error."""
    if tp in _SIMPLE_TYPES:
        return {"type": _SIMPLE_TYPES[tp]}
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        out: dict[str, JSON] = {"type": "array"}
        if args and not (origin is tuple and len(args) != 2 and args[-1] is not Ellipsis):
            out["items"] = _type_to_schema(args[0], where)
        return out
    if origin is dict or tp is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_to_schema(a, where) for a in args]}
    if tp is Any:
        return {}
    raise ValueError(f"{where}: cannot describe type {tp!r} in a JSON schema")


_SECTION_RE = re.compile(r"^(Args|Arguments|Returns|Raises|Yields|Example|Examples|Note)s?:\s*$")
_ARG_RE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Splits a Google-style docstring into its summary and per-argument descriptions."""
    lines = doc.splitlines()
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None
    for line in lines:
        m = _SECTION_RE.match(line.strip())
        if m and not line.startswith(" " * 8):
            section, current, arg_indent = m.group(1), None, None
            continue
        if section is None:
            summary.append(line)
            continue
        if section not in ("Args", "Arguments") or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        am = _ARG_RE.match(line)
        if am and (arg_indent is None or indent <= arg_indent):
            arg_indent = indent
            current = am.group(1).lstrip("*")
            args[current] = am.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
    paragraphs = "\n".join(summary).strip().split("\n\n")
    description = "\n\n".join(re.sub(r"\s*\n\s*", " ", p).strip() for p in paragraphs)
    return description.strip(), args
