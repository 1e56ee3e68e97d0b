"""The ``react`` format: ``Thought:`` / ``Action:`` / ``Action Input:`` lines, one call a turn.

A leading ``Thought:`` label is dropped from the content, the ``Action:`` line names the tool and
the ``Action Input:`` that follows holds the arguments as a JSON object; results render as
``Observation: ...`` lines.

Non-goals: several calls in one message (extra ``Action:`` lines are reported as errors),
``Final Answer:`` lines (final answers use ``<final_output>`` blocks, left in the content) and
arguments that are not a JSON object.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from mtrl_gym.formats.base import (
    ToolCallFormat,
    _check_calls,
    _dumps,
    _FinalOutputGuard,
    _join_pieces,
    _Search,
    _tool_listing,
)
from mtrl_gym.formats.decoding import _WS, _decode_json, _json_type, _raw_decode
from mtrl_gym.types import ParsedCall, ParseResult


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
