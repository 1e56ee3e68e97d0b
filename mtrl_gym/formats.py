"""Pluggable tool-call formats: how an agent writes tool calls in plain text, and how we read them.

A format is a parser / renderer pair. ``parse`` turns one assistant message into its prose and the
calls it contains; ``render_calls`` writes calls the way the format expects (for few-shot examples,
SFT data and tests); ``render_result`` says how a tool's output reads in a plain-text observation;
``tools_prompt`` writes the system-prompt section that lists the tools and teaches the format.

Three formats ship with the package and can be looked up by name with :func:`get_format`:

* ``hermes`` (default): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, as
  Qwen and Hermes models are trained to write them; several per message.
* ``json``: the whole message (optionally in a ```` ```json ```` fence) is one call object or a
  list of them.
* ``react``: ``Thought:`` / ``Action:`` / ``Action Input:`` lines, one call per message.

Parsing is built for untrusted model output: ``parse`` never raises, runs in roughly linear time
on adversarial text, and reports malformed calls (with ``error`` set) instead of dropping them so
that the environment can tell the agent what went wrong and count it.

Non-goals: executing calls, checking names against the tool set or validating arguments against
their schemas (the environment does that), extracting final answers (``<final_output>`` blocks are
left in ``content`` for the environment), and native tool-call APIs that return structured calls.
"""

from __future__ import annotations

import abc
import inspect
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from mtrl_gym.types import JSON, ParsedCall, ParseResult

__all__ = [
    "HermesFormat",
    "JsonFormat",
    "ReActFormat",
    "ToolCallFormat",
    "available_formats",
    "get_format",
    "register_format",
]

# Deeper JSON than this is rejected before decoding: real tool arguments are shallow, and the C
# decoder recurses once per level, so "[" * 100000 would otherwise end in a RecursionError.
MAX_JSON_DEPTH = 100

# strict=False lets literal newlines and tabs appear inside JSON strings; models often write code
# arguments that way, and refusing them would be pedantry the agent cannot learn much from.
_DECODER = json.JSONDecoder(strict=False)

_WS = re.compile(r"\s*")
# Only the structural characters matter for measuring depth; everything else is skipped in C.
_STRUCTURAL = re.compile(r'[\[\]{}"]')
# Bounded name capture: used only to name a call in an error message when its JSON is broken.
_NAME_HINT = re.compile(r'"name"\s*:\s*"([^"\\\n]{1,200})"')

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


class HermesFormat(ToolCallFormat):
    r"""``<tool_call>`` blocks holding ``{"name": ..., "arguments": {...}}`` (Qwen / Hermes style).

    Rules:
        * A call spans ``<tool_call>`` to the first ``</tool_call>`` after it; the body must be
          one JSON object. A ``</tool_call>`` inside a JSON string therefore ends the call early
          (the renderer escapes it as ``<\/``), which is how common inference servers read it.
        * A ``<tool_call>`` with no ``</tool_call>`` before the next ``<tool_call>`` is reported
          as unclosed; its span ends at the next ``<tool_call>`` or ``<final_output>`` or at the
          end of the text, so a later well-formed call or final answer survives.
        * Markup inside a closed ``<final_output>...</final_output>`` block is left alone: the
          block is the final answer and stays in ``content`` verbatim.
        * ``content`` is the text between calls, each piece stripped, joined by newlines.
    """

    name: ClassVar[str] = "hermes"
    max_calls_per_turn: ClassVar[int | None] = None

    OPEN: ClassVar[str] = "<tool_call>"
    CLOSE: ClassVar[str] = "</tool_call>"

    def parse(self, text: str) -> ParseResult:
        """See :meth:`ToolCallFormat.parse`."""
        opens = _Search(text, re.compile(re.escape(self.OPEN)))
        closes = _Search(text, re.compile(re.escape(self.CLOSE)))
        guard = _FinalOutputGuard(text)
        pieces: list[str] = []
        calls: list[ParsedCall] = []
        pos = piece_start = 0
        while (m := opens.find(pos)) is not None:
            skip_to = guard.block_end(pos, m.start())
            if skip_to is not None:
                pos = skip_to
                continue
            start, body_start = m.start(), m.end()
            pieces.append(text[piece_start:start])
            close = closes.find(body_start)
            nxt = opens.find(body_start)
            if close is not None and (nxt is None or close.start() < nxt.start()):
                end = close.end()
                calls.append(self._parse_body(text[body_start : close.start()], text[start:end]))
            else:
                # Unclosed: stop before the next call or final answer rather than swallowing it.
                final = guard.next_open(body_start)
                end = min(
                    nxt.start() if nxt is not None else len(text),
                    final if final is not None else len(text),
                )
                calls.append(
                    ParsedCall(
                        name=_name_hint(text[body_start:end]),
                        arguments=None,
                        raw=text[start:end],
                        error=f"unclosed {self.OPEN} tag: missing {self.CLOSE} after the JSON",
                    )
                )
            pos = piece_start = end
        pieces.append(text[piece_start:])
        return ParseResult(content=_join_pieces(pieces), calls=tuple(calls))

    def _parse_body(self, body: str, raw: str) -> ParsedCall:
        body = body.strip()
        if not body:
            return ParsedCall(
                name=None,
                arguments=None,
                raw=raw,
                error=f'empty {self.OPEN} block: expected {{"name": ..., "arguments": {{...}}}}',
            )
        value, error = _decode_json(body)
        if error is not None:
            return ParsedCall(
                name=_name_hint(body),
                arguments=None,
                raw=raw,
                error=f"invalid JSON in {self.OPEN}: {error}",
            )
        return _call_from_object(value, raw, where=self.OPEN)

    def render_calls(
        self, calls: Sequence[tuple[str, Mapping[str, Any]]], content: str = ""
    ) -> str:
        """See :meth:`ToolCallFormat.render_calls`."""
        _check_calls(calls)
        parts = [content.strip()] if content.strip() else []
        for name, args in calls:
            call = _dumps({"name": name, "arguments": dict(args)})
            parts.append(f"{self.OPEN}\n{call}\n{self.CLOSE}")
        return self._check_round_trip("\n".join(parts), calls, content)

    def render_result(self, name: str, content: str) -> str:
        """See :meth:`ToolCallFormat.render_result`.

        The name is not shown: results come back in call order, as Qwen's chat template does.
        """
        del name
        return f"<tool_response>\n{content}\n</tool_response>"

    def tools_prompt(self, tools: Sequence[Mapping[str, Any]]) -> str:
        """See :meth:`ToolCallFormat.tools_prompt`."""
        specs = _function_specs(tools)
        listing = "\n".join(_prompt_json({"type": "function", "function": s}) for s in specs)
        return (
            "# Tools\n\n"
            "You can use the tools below. Each line is one tool, given as a JSON function schema:\n"
            f"<tools>\n{listing}\n</tools>\n\n"
            f"To use a tool, write a {self.OPEN} block holding a single JSON object with the "
            'tool\'s "name" and an "arguments" object that fits its parameters schema:\n'
            f'{self.OPEN}\n{{"name": "tool_name", "arguments": {{"param": "value"}}}}\n'
            f"{self.CLOSE}\n"
            f"You may write several {self.OPEN} blocks in one message. They run in order, and "
            "each result comes back inside <tool_response></tool_response>."
        )


class JsonFormat(ToolCallFormat):
    """The whole message is one call object, or a JSON list of them, optionally fenced.

    Rules:
        * After stripping, an optional ```` ```json ```` (or bare ```` ``` ````) fence is removed.
        * The message is a call attempt when what remains starts with ``{`` or with ``[`` followed
          by ``{``. Anything else (prose, ``[1, 2]``, text around a fence) is plain content with
          no calls.
        * A call attempt that is not valid JSON, or a fence without its closing backticks, is one
          malformed call. In a list, every element is its own call; non-objects are malformed.
        * When a message is a call attempt, ``content`` is empty.
    """

    name: ClassVar[str] = "json"
    max_calls_per_turn: ClassVar[int | None] = None

    def parse(self, text: str) -> ParseResult:
        """See :meth:`ToolCallFormat.parse`."""
        stripped = text.strip()
        body, fence_error = _unfence(stripped)
        body = body.strip()
        if not _looks_like_call_json(body):
            return ParseResult(content=stripped)
        if fence_error is not None:
            return ParseResult(
                content="",
                calls=(
                    ParsedCall(
                        name=_name_hint(body), arguments=None, raw=stripped, error=fence_error
                    ),
                ),
            )
        value, error = _decode_json(body)
        if error is not None:
            return ParseResult(
                content="",
                calls=(
                    ParsedCall(
                        name=_name_hint(body),
                        arguments=None,
                        raw=body,
                        error=f"invalid JSON in tool call: {error}",
                    ),
                ),
            )
        if isinstance(value, dict):
            return ParseResult(content="", calls=(_call_from_object(value, body, "tool call"),))
        calls = []
        for index, (item, raw) in enumerate(_array_items(body, value)):
            if isinstance(item, dict):
                calls.append(_call_from_object(item, raw, "tool call"))
            else:
                calls.append(
                    ParsedCall(
                        name=None,
                        arguments=None,
                        raw=raw,
                        error=f"item {index} of the call list must be a JSON object with "
                        f'"name" and "arguments", got {_json_type(item)}',
                    )
                )
        return ParseResult(content="", calls=tuple(calls))

    def render_calls(
        self, calls: Sequence[tuple[str, Mapping[str, Any]]], content: str = ""
    ) -> str:
        """See :meth:`ToolCallFormat.render_calls`.

        One call renders as a bare object, several as a list. Content and calls cannot share a
        message in this format.
        """
        _check_calls(calls)
        if not calls:
            return self._check_round_trip(content.strip(), calls, content)
        if content.strip():
            raise ValueError("the 'json' format cannot carry content next to tool calls")
        objects = [{"name": name, "arguments": dict(args)} for name, args in calls]
        text = _dumps(objects[0] if len(objects) == 1 else objects)
        return self._check_round_trip(text, calls, content)

    def render_result(self, name: str, content: str) -> str:
        """See :meth:`ToolCallFormat.render_result`."""
        return json.dumps({"name": name, "content": content}, ensure_ascii=False)

    def tools_prompt(self, tools: Sequence[Mapping[str, Any]]) -> str:
        """See :meth:`ToolCallFormat.tools_prompt`."""
        return (
            "# Tools\n\n"
            "You can use the tools below; each entry gives the tool's name, what it does and the "
            "JSON schema of its arguments.\n\n"
            f"{_tool_listing(tools)}\n\n"
            "To use a tool, make your entire message one JSON object and nothing else:\n"
            '{"name": "tool_name", "arguments": {"param": "value"}}\n'
            "To use several tools at once, send a JSON list of such objects. Any message that is "
            "not in this form is read as ordinary text and runs no tool."
        )


class ReActFormat(ToolCallFormat):
    """``Thought:`` / ``Action:`` / ``Action Input:`` lines with one call per message.

    Rules:
        * A call starts at a line beginning with ``Action:`` (the tool name is the rest of the
          line) outside closed ``<final_output>`` blocks. The next non-blank line must start with
          ``Action Input:`` followed by a JSON object, which may span several lines.
        * A missing ``Action Input:`` line, bad JSON or a non-object input makes the call
          malformed. Every ``Action:`` after the first is reported as a malformed extra call.
        * ``content`` is the text outside the calls (pieces stripped, joined by newlines) with a
          leading ``Thought:`` label removed; results render as ``Observation: ...``.
    """

    name: ClassVar[str] = "react"
    max_calls_per_turn: ClassVar[int | None] = 1

    _ACTION: ClassVar[re.Pattern[str]] = re.compile(r"^[ \t]*Action[ \t]*:([^\n]*)", re.M)
    _INPUT: ClassVar[re.Pattern[str]] = re.compile(r"Action[ \t]+Input[ \t]*:")
    _THOUGHT: ClassVar[re.Pattern[str]] = re.compile(r"Thought[ \t]*:")

    def parse(self, text: str) -> ParseResult:
        """See :meth:`ToolCallFormat.parse`."""
        actions = _Search(text, self._ACTION)
        guard = _FinalOutputGuard(text)
        pieces: list[str] = []
        calls: list[ParsedCall] = []
        pos = piece_start = 0
        while (m := actions.find(pos)) is not None:
            skip_to = guard.block_end(pos, m.start())
            if skip_to is not None:
                pos = skip_to
                continue
            pieces.append(text[piece_start : m.start()])
            call, end = self._parse_action(text, m, actions, guard)
            if calls:
                # One call per message: later Actions are reported so the agent learns the rule.
                call = ParsedCall(
                    name=call.name,
                    arguments=None,
                    raw=call.raw,
                    error="only one Action is allowed per message; this extra Action was ignored",
                )
            calls.append(call)
            pos = piece_start = end
        pieces.append(text[piece_start:])
        content = _join_pieces(pieces)
        if label := self._THOUGHT.match(content):
            content = content[label.end() :].strip()
        return ParseResult(content=content, calls=tuple(calls))

    def _parse_action(
        self, text: str, m: re.Match[str], actions: _Search, guard: _FinalOutputGuard
    ) -> tuple[ParsedCall, int]:
        """Parses the call whose ``Action:`` line is ``m``; returns it and where its span ends."""
        name = m.group(1).strip() or None
        line_end = m.end()
        input_at = _WS.match(text, line_end).end()
        label = self._INPUT.match(text, input_at)
        if label is None:
            return (
                ParsedCall(
                    name=name,
                    arguments=None,
                    raw=text[m.start() : line_end],
                    error="Action: must be followed by an 'Action Input:' line holding the "
                    "arguments as a JSON object",
                ),
                line_end,
            )
        value_at = _WS.match(text, label.end()).end()
        value, end, error = _raw_decode(text, value_at)
        if error is None and isinstance(value, str):
            # Some models quote the whole object; accept it when the string holds an object.
            inner, inner_error = _decode_json(value)
            if inner_error is None and isinstance(inner, dict):
                value = inner
        if error is None and not isinstance(value, dict):
            error = f"Action Input must be a JSON object, got {_json_type(value)}"
        elif error is not None:
            error = f"invalid JSON in Action Input: {error}"
            # The JSON's extent is unknown; stop before the next Action or final answer.
            nxt = actions.find(value_at)
            final = guard.next_open(value_at)
            end = min(
                nxt.start() if nxt is not None else len(text),
                final if final is not None else len(text),
            )
        if name is None and error is None:
            error = "Action: has no tool name"
        raw = text[m.start() : end]
        if error is not None or not isinstance(value, dict):
            return ParsedCall(name=name, arguments=None, raw=raw, error=error), end
        return ParsedCall(name=name, arguments=value, raw=raw), end

    def render_calls(
        self, calls: Sequence[tuple[str, Mapping[str, Any]]], content: str = ""
    ) -> str:
        """See :meth:`ToolCallFormat.render_calls`.

        Content renders as a ``Thought:`` line before the call.
        """
        _check_calls(calls)
        if len(calls) > 1:
            raise ValueError(f"the 'react' format allows one call per message, got {len(calls)}")
        parts = [f"Thought: {content.strip()}"] if content.strip() else []
        for name, args in calls:
            if name != name.strip() or "\n" in name:
                raise ValueError(f"a react tool name must be one line without padding: {name!r}")
            parts.append(f"Action: {name}\nAction Input: {_dumps(dict(args))}")
        return self._check_round_trip("\n".join(parts), calls, content)

    def render_result(self, name: str, content: str) -> str:
        """See :meth:`ToolCallFormat.render_result`."""
        del name
        return f"Observation: {content}"

    def tools_prompt(self, tools: Sequence[Mapping[str, Any]]) -> str:
        """See :meth:`ToolCallFormat.tools_prompt`."""
        return (
            "# Tools\n\n"
            "You can use the tools below; each entry gives the tool's name, what it does and the "
            "JSON schema of its arguments.\n\n"
            f"{_tool_listing(tools)}\n\n"
            "Work step by step. To use a tool, write these three lines:\n"
            "Thought: what you know so far and why this tool helps\n"
            "Action: the tool's name, exactly as listed\n"
            'Action Input: the arguments as one JSON object, e.g. {"param": "value"}\n'
            "Use at most one Action per message and end the message after its Action Input. "
            'The tool\'s result comes back as "Observation: ...".'
        )


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


for _builtin in (HermesFormat, JsonFormat, ReActFormat):
    register_format(_builtin)


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


def _exceeds_depth(text: str, start: int, limit: int) -> bool:
    """Returns whether the JSON value starting at ``start`` nests deeper than ``limit``.

    Scans only the first top-level value, skipping strings, in linear time.
    """
    if start >= len(text) or text[start] not in "[{":
        return False
    depth = 0
    pos = start
    while (m := _STRUCTURAL.search(text, pos)) is not None:
        char, pos = m.group(), m.end()
        if char == '"':
            pos = _string_end(text, pos)
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
            if depth <= 0:
                return False
    return False


def _string_end(text: str, pos: int) -> int:
    """Returns the index after the quote that closes a JSON string whose body starts at ``pos``."""
    while (quote := text.find('"', pos)) != -1:
        segment = text[pos:quote]
        backslashes = len(segment) - len(segment.rstrip("\\"))
        if backslashes % 2 == 0:
            return quote + 1
        pos = quote + 1
    return len(text)


def _raw_decode(text: str, start: int) -> tuple[Any, int, str | None]:
    """Decodes one JSON value at ``text[start:]``; returns ``(value, end, error)``.

    Never raises: depth and number-size limits come back as error messages.
    """
    if _exceeds_depth(text, start, MAX_JSON_DEPTH):
        return None, start, f"nesting deeper than {MAX_JSON_DEPTH} levels"
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        return None, start, _describe(exc)
    except RecursionError:  # Belt and braces: the depth check should have caught it.
        return None, start, "nesting too deep"
    except ValueError:
        # Python >= 3.11 refuses to turn integers of more than 4300 digits into int.
        return None, start, "a number has too many digits"
    return value, end, None


def _decode_json(text: str) -> tuple[Any, str | None]:
    """Decodes a whole string as one JSON value; returns ``(value, error)``. Never raises."""
    start = _WS.match(text).end()
    value, end, error = _raw_decode(text, start)
    if error is None and (pos := _WS.match(text, end).end()) != len(text):
        return None, _describe(json.JSONDecodeError("Extra data", text, pos))
    return value, error


def _describe(exc: json.JSONDecodeError) -> str:
    """Formats a decode error with its position, which the agent needs to find its mistake."""
    return f"{exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"


def _json_type(value: Any) -> str:
    """Names a decoded JSON value's type the way JSON does, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _name_hint(text: str) -> str | None:
    """Best-effort tool name from broken call text, so errors can say which call failed."""
    value, error = _decode_json(text.strip())
    if error is None and isinstance(value, dict):
        name = value.get("name")
        return name if isinstance(name, str) else None
    m = _NAME_HINT.search(text)
    return m.group(1) if m else None


def _call_from_object(obj: Any, raw: str, where: str) -> ParsedCall:
    """Validates a decoded ``{"name": ..., "arguments": {...}}`` object into a call."""
    if not isinstance(obj, dict):
        return ParsedCall(
            name=None,
            arguments=None,
            raw=raw,
            error=f'{where} must hold a JSON object with "name" and "arguments", '
            f"got {_json_type(obj)}",
        )
    if "name" not in obj:
        return ParsedCall(name=None, arguments=None, raw=raw, error=f'{where} is missing "name"')
    name = obj["name"]
    if not isinstance(name, str):
        return ParsedCall(
            name=None,
            arguments=None,
            raw=raw,
            error=f'"name" in {where} must be a string, got {_json_type(name)}',
        )
    if not name.strip():
        return ParsedCall(
            name=name, arguments=None, raw=raw, error=f'"name" in {where} must not be empty'
        )
    # A missing key or null both mean "no arguments", as in APIs that send null for none.
    args = obj.get("arguments")
    if args is None:
        return ParsedCall(name=name, arguments={}, raw=raw)
    if isinstance(args, str):
        # Some models JSON-encode the arguments a second time, OpenAI-API style.
        inner, error = _decode_json(args)
        if error is None and isinstance(inner, dict):
            return ParsedCall(name=name, arguments=inner, raw=raw)
        detail = error if error is not None else f"it decodes to {_json_type(inner)}"
        return ParsedCall(
            name=name,
            arguments=None,
            raw=raw,
            error=f'"arguments" in {where} is a string that does not hold a JSON object ({detail})',
        )
    if not isinstance(args, dict):
        return ParsedCall(
            name=name,
            arguments=None,
            raw=raw,
            error=f'"arguments" in {where} must be a JSON object, got {_json_type(args)}',
        )
    return ParsedCall(name=name, arguments=args, raw=raw)


def _join_pieces(pieces: Sequence[str]) -> str:
    """Joins the text between calls: each piece stripped, empty ones dropped."""
    return "\n".join(p for p in (piece.strip() for piece in pieces) if p)


def _unfence(text: str) -> tuple[str, str | None]:
    """Removes a ```` ```json ```` / ```` ``` ```` fence around a stripped message.

    Returns:
        The inner text (or ``text`` unchanged when it is not fenced) and an error message when
        the fence is opened but never closed.
    """
    if not text.startswith("```"):
        return text, None
    newline = text.find("\n")
    if newline == -1 or text[3:newline].strip().lower() not in ("", "json"):
        return text, None
    if text.endswith("```"):
        # The closing fence cannot overlap the opening one: text[newline] is not a backtick.
        return text[newline + 1 : -3], None
    return text[newline + 1 :], "unclosed ``` fence: the JSON block must end with ```"


def _looks_like_call_json(body: str) -> bool:
    """Whether a JSON-format message is a call attempt: ``{...`` or ``[{...``."""
    if body.startswith("{"):
        return True
    if body.startswith("["):
        first = _WS.match(body, 1).end()
        return first < len(body) and body[first] == "{"
    return False


def _array_items(body: str, value: list[Any]) -> list[tuple[Any, str]]:
    """Pairs each item of an already decoded JSON array with its exact source text."""
    items: list[tuple[Any, str]] = []
    pos = _WS.match(body, _WS.match(body).end() + 1).end()  # Just past "[" and whitespace.
    for item in value:
        _, end, error = _raw_decode(body, pos)
        if error is not None:  # Cannot happen for a body that decoded; stay total anyway.
            return [(v, _dumps(v)) for v in value]
        items.append((item, body[pos:end]))
        pos = _WS.match(body, end).end() + 1  # Past the "," (or the final "]").
        pos = _WS.match(body, pos).end()
    return items


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
