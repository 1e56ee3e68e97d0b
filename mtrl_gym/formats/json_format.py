"""The ``json`` format: the whole message is one call object or a JSON list of them.

The message may be wrapped in a ```` ```json ```` fence. A message that does not start like a call
object is plain content, so the agent can still answer in prose; a message that does is all
calls, with no room for prose next to them. The module is named ``json_format`` so that it never
shadows the standard library's :mod:`json`.

Non-goals: finding JSON embedded in prose (a message is either calls or text) and JSON5 or other
relaxed dialects beyond literal control characters in strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from mtrl_gym.formats.base import ToolCallFormat, _check_calls, _dumps, _tool_listing
from mtrl_gym.formats.decoding import (
    _WS,
    _call_from_object,
    _decode_json,
    _json_type,
    _name_hint,
    _raw_decode,
)
from mtrl_gym.types import ParsedCall, ParseResult


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


# --- Helpers --------------------------------------------------------------------------------


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
