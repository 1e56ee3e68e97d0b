"""The ``hermes`` format: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.

This is the default format, written the way Qwen and Hermes models are trained to write calls;
a message may hold several calls, with prose around them. Results render as
``<tool_response>`` blocks, in call order.

Non-goals: parsing other chat-template dialects (``<function=...>``, XML parameters) and calls
written as native API structures.
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
    _function_specs,
    _join_pieces,
    _prompt_json,
    _Search,
)
from mtrl_gym.formats.decoding import _call_from_object, _decode_json, _name_hint
from mtrl_gym.types import ParsedCall, ParseResult


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
