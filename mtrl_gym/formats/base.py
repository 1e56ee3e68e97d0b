"""The tool-call format contract, the format registry and the helpers the formats share.

:class:`ToolCallFormat` is the parser / renderer interface every format implements;
:func:`register_format`, :func:`get_format` and :func:`available_formats` map names to formats.
The private helpers are the pieces more than one format needs: forward-only searching that keeps
parsers linear, skipping closed ``<final_output>`` blocks, escaping JSON so that it cannot end or
open call markup, and listing tools in prompts.

Non-goals: any concrete format (see :mod:`~mtrl_gym.formats.hermes`,
:mod:`~mtrl_gym.formats.json_format` and :mod:`~mtrl_gym.formats.react`), registering the built-in
formats (importing :mod:`mtrl_gym.formats` does that) and decoding JSON (see
:mod:`~mtrl_gym.formats.decoding`).
"""

from __future__ import annotations

import abc
import inspect
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from mtrl_gym.types import JSON, ParseResult

_FINAL_OPEN = "<final_output>"
_FINAL_CLOSE = "</final_output>"


class ToolCallFormat(abc.ABC):
    """A way of writing tool calls in assistant text: a parser and the matching renderers.

    Subclasses set ``name`` (the registry key) and ``max_calls_per_turn`` (``None`` = no limit;
    the environment enforces it, the parser only reports what it finds).
    """

    name: ClassVar[str]
    max_calls_per_turn: ClassVar[int | None] = None

    @abc.abstractmethod
    def parse(self, text: str) -> ParseResult:
        """Finds the tool calls in one assistant message.

        Must never raise, whatever ``text`` holds: malformed calls come back as ``ParsedCall``
        objects with ``arguments=None`` and ``error`` set.

        Args:
            text: The assistant message.

        Returns:
            The text outside the call markup (stripped) and the calls in order of appearance.
        """

    @abc.abstractmethod
    def render_calls(
        self, calls: Sequence[tuple[str, Mapping[str, Any]]], content: str = ""
    ) -> str:
        """Writes an assistant message that ``parse`` maps back to exactly these calls and content.

        Args:
            calls: ``(tool name, arguments)`` pairs; arguments must be JSON-serialisable.
            content: Prose to accompany the calls; compared after ``strip()``.

        Returns:
            The assistant message text.

        Raises:
            ValueError: If the format cannot express this combination exactly (for example the
                content itself contains call markup, or more calls than the format allows).
            TypeError: If the arguments are not JSON-serialisable.
        """

    @abc.abstractmethod
    def render_result(self, name: str, content: str) -> str:
        """Writes a tool's result the way it reads in a plain-text observation.

        Args:
            name: The tool that produced the result.
            content: The result text.

        Returns:
            The observation text.
        """

    @abc.abstractmethod
    def tools_prompt(self, tools: Sequence[Mapping[str, Any]]) -> str:
        """Writes the system-prompt section that lists the tools and explains how to call them.

        Args:
            tools: OpenAI function schemas, ``{"type": "function", "function": {"name",
                "description", "parameters"}}``; the bare inner ``function`` dict is accepted too.

        Returns:
            Prompt text naming every tool with its description and parameters JSON schema.

        Raises:
            ValueError: If a tool has no name.
        """

    def _check_round_trip(
        self, text: str, calls: Sequence[tuple[str, Mapping[str, Any]]], content: str
    ) -> str:
        """Returns ``text`` if it parses back to ``calls`` and ``content``, else raises.

        Rendering is cheap next to generation, and checking the promise directly covers every
        corner (markup hidden in the content, a name that breaks the line structure, ...)
        without a hand-written rule for each.
        """
        # Compare against the JSON-normalised arguments: tuples become lists, and so on.
        expected = [(name, json.loads(_dumps(dict(args)))) for name, args in calls]
        parsed = self.parse(text)
        got = [(c.name, c.arguments) for c in parsed.calls]
        if got != expected or any(c.error for c in parsed.calls):
            raise ValueError(
                f"the {self.name!r} format cannot express these calls exactly; the content or a "
                "tool name probably contains text that reads as tool-call markup"
            )
        if parsed.content != content.strip():
            raise ValueError(
                f"the {self.name!r} format cannot carry this content unchanged next to the calls"
            )
        return text


# --- Registry -------------------------------------------------------------------------------

_REGISTRY: dict[str, type[ToolCallFormat]] = {}


def register_format(fmt_cls: type[ToolCallFormat]) -> None:
    """Makes a format available to :func:`get_format` under its ``name``.

    Args:
        fmt_cls: A concrete ``ToolCallFormat`` subclass with a constructor taking no arguments.

    Raises:
        TypeError: If ``fmt_cls`` is not a concrete ``ToolCallFormat`` subclass.
        ValueError: If it has no usable ``name`` or the name is already registered.
    """
    if not (isinstance(fmt_cls, type) and issubclass(fmt_cls, ToolCallFormat)):
        raise TypeError(f"expected a ToolCallFormat subclass, got {fmt_cls!r}")
    if inspect.isabstract(fmt_cls):
        raise TypeError(f"{fmt_cls.__name__} is abstract and cannot be registered")
    name = getattr(fmt_cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{fmt_cls.__name__}.name must be a non-empty string")
    if name in _REGISTRY:
        raise ValueError(
            f"a tool-call format named {name!r} is already registered "
            f"({_REGISTRY[name].__qualname__})"
        )
    _REGISTRY[name] = fmt_cls


def get_format(name_or_format: str | ToolCallFormat) -> ToolCallFormat:
    """Returns a format instance for a registered name, or the given instance unchanged.

    Args:
        name_or_format: A registered format name or a ``ToolCallFormat`` instance.

    Returns:
        The format.

    Raises:
        ValueError: If the name is not registered (the message lists the known names).
        TypeError: If the argument is neither a string nor a ``ToolCallFormat``.
    """
    if isinstance(name_or_format, ToolCallFormat):
        return name_or_format
    if not isinstance(name_or_format, str):
        raise TypeError(
            f"expected a format name or ToolCallFormat, got {type(name_or_format).__name__}"
        )
    try:
        fmt_cls = _REGISTRY[name_or_format]
    except KeyError:
        known = ", ".join(repr(n) for n in available_formats())
        raise ValueError(
            f"unknown tool-call format {name_or_format!r}; known formats: {known}"
        ) from None
    return fmt_cls()


def available_formats() -> list[str]:
    """Returns the registered format names, sorted."""
    return sorted(_REGISTRY)


# --- Helpers --------------------------------------------------------------------------------


class _Search:
    """Forward-only ``pattern.search`` with a one-entry cache.

    Parsers ask "where is the next X after pos" many times with growing ``pos``. Without the
    cache, a needle that never occurs would be searched to the end of the text once per call,
    which is quadratic on texts with thousands of calls.
    """

    def __init__(self, text: str, pattern: re.Pattern[str]) -> None:
        self._text = text
        self._pattern = pattern
        self._from = -1
        self._match: re.Match[str] | None = None

    def find(self, pos: int) -> re.Match[str] | None:
        """Returns the first match starting at or after ``pos``."""
        cached_ok = 0 <= self._from <= pos and (self._match is None or self._match.start() >= pos)
        if not cached_ok:
            self._from = pos
            self._match = self._pattern.search(self._text, pos)
        return self._match


class _FinalOutputGuard:
    """Locates closed ``<final_output>`` blocks so that markup inside them is not parsed."""

    def __init__(self, text: str) -> None:
        self._open = _Search(text, re.compile(re.escape(_FINAL_OPEN)))
        self._close = _Search(text, re.compile(re.escape(_FINAL_CLOSE)))
        # Once an opening tag has no closing tag after it, no later block can be closed either.
        self._exhausted = False

    def next_open(self, pos: int) -> int | None:
        """Returns where the next ``<final_output>`` tag at or after ``pos`` starts."""
        m = self._open.find(pos)
        return None if m is None else m.start()

    def block_end(self, pos: int, limit: int) -> int | None:
        """Returns the end of a closed block that starts in ``[pos, limit)``, else ``None``."""
        if self._exhausted:
            return None
        start = self.next_open(pos)
        if start is None or start >= limit:
            return None
        close = self._close.find(start + len(_FINAL_OPEN))
        if close is None:
            self._exhausted = True
            return None
        return close.end()


def _dumps(value: JSON) -> str:
    r"""Serialises JSON for rendering: readable unicode, strict JSON, no markup look-alikes.

    ``<`` only ever occurs inside JSON strings, where ``<\/`` means ``</`` and ``\u003c`` means
    ``<``. Escaping closing tags and ``<tool_call`` keeps a value like ``"</tool_call>"`` from
    ending, or ``"<tool_call>"`` from interrupting, the surrounding markup; other ``<`` stay
    readable.
    """
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return text.replace("</", "<\\/").replace("<tool_call", "\\u003ctool_call")


def _prompt_json(value: JSON) -> str:
    """Serialises a tool schema for a prompt: ``json.dumps(value, ensure_ascii=False)``."""
    return json.dumps(value, ensure_ascii=False)


def _join_pieces(pieces: Sequence[str]) -> str:
    """Joins the text between calls: each piece stripped, empty ones dropped."""
    return "\n".join(p for p in (piece.strip() for piece in pieces) if p)


def _check_calls(calls: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Rejects calls that no format could render meaningfully."""
    for name, args in calls:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"tool names must be non-empty strings, got {name!r}")
        if not isinstance(args, Mapping):
            raise TypeError(f"arguments of {name!r} must be a mapping, got {type(args).__name__}")


def _function_specs(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Normalises tool schemas to ``{"name", "description", "parameters"}`` dicts."""
    specs = []
    for index, tool in enumerate(tools):
        function = tool.get("function", tool)
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tool {index} has no function name: {tool!r}")
        specs.append(
            {
                "name": name,
                "description": function.get("description", ""),
                "parameters": function.get("parameters", {"type": "object", "properties": {}}),
            }
        )
    return specs


def _tool_listing(tools: Sequence[Mapping[str, Any]]) -> str:
    """Lists tools as ``- name: description`` with the parameters schema on the next line."""
    lines = []
    for spec in _function_specs(tools):
        lines.append(f"- {spec['name']}: {spec['description']}".rstrip())
        lines.append(f"  parameters: {_prompt_json(spec['parameters'])}")
    return "\n".join(lines)
