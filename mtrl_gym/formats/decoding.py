"""Never-raising JSON decoding of untrusted model output, and validation of call objects.

The decoders here accept what models really write (literal newlines inside strings, arguments
JSON-encoded a second time) and turn everything else into an error message the agent can act on,
with positions counted from where the JSON starts. They never raise and never recurse without
bound: nesting deeper than :data:`MAX_JSON_DEPTH` and integers too long for ``int`` are reported,
not decoded, so a hostile ``"[" * 100000`` costs linear time and no stack.

Non-goals: finding calls in a message (each format does that), rendering JSON (see
:func:`mtrl_gym.formats.base._dumps`) and JSON-schema validation of arguments (the environment).
"""

from __future__ import annotations

import json
import re
from typing import Any

from mtrl_gym.types import ParsedCall

# Deeper JSON than this is never handed to the decoder: real tool arguments are shallow, and the C
# decoder recurses once per level, so "[" * 100000 would end in a RecursionError (or, with a
# raised recursion limit, overflow the C stack).
MAX_JSON_DEPTH = 100

# strict=False lets literal newlines and tabs appear inside JSON strings; models often write code
# arguments that way, and refusing them would be pedantry the agent cannot learn much from.
_DECODER = json.JSONDecoder(strict=False)

_WS = re.compile(r"\s*")
# Only the structural characters matter for measuring depth; everything else is skipped in C.
_STRUCTURAL = re.compile(r'[\[\]{}"]')
# Bounded name capture: used only to name a call in an error message when its JSON is broken.
_NAME_HINT = re.compile(r'"name"\s*:\s*"([^"\\\n]{1,200})"')


def _depth_cut(text: str, start: int, limit: int) -> int | None:
    """Finds where the JSON value at ``start`` first nests deeper than ``limit``.

    Scans only the first top-level value, skipping strings, in linear time.

    Returns:
        The index of the first bracket beyond ``limit`` levels, or ``None`` if there is none.
    """
    if start >= len(text) or text[start] not in "[{":
        return None
    depth = 0
    pos = start
    while (m := _STRUCTURAL.search(text, pos)) is not None:
        char, pos = m.group(), m.end()
        if char == '"':
            pos = _string_end(text, pos)
        elif char in "[{":
            depth += 1
            if depth > limit:
                return m.start()
        else:
            depth -= 1
            if depth <= 0:
                return None
    return None


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
    cut = _depth_cut(text, start, MAX_JSON_DEPTH)
    try:
        if cut is not None:
            # Decode only what lies within the depth limit. The value is still open at ``cut``,
            # so this fails; where it fails tells a real syntax error before ``cut`` (reported
            # as such) from JSON that is merely too deep.
            # Slicing from ``start`` (not from 0) keeps repeated calls on one message linear.
            _DECODER.raw_decode(text[start:cut])
            return None, start, f"nesting deeper than {MAX_JSON_DEPTH} levels"
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        if cut is None:
            return None, start, _describe(exc, start)
        if exc.pos >= cut - start:
            return None, start, f"nesting deeper than {MAX_JSON_DEPTH} levels"
        return None, start, _describe(exc, 0)
    except RecursionError:  # Belt and braces: the depth limit should have prevented it.
        return None, start, f"nesting deeper than {MAX_JSON_DEPTH} levels"
    except ValueError:
        # Python >= 3.11 refuses to turn integers of more than 4300 digits into int.
        return None, start, "a number has too many digits"
    return value, end, None


def _decode_json(text: str) -> tuple[Any, str | None]:
    """Decodes a whole string as one JSON value; returns ``(value, error)``. Never raises."""
    start = _WS.match(text).end()
    value, end, error = _raw_decode(text, start)
    if error is None and (pos := _WS.match(text, end).end()) != len(text):
        return None, _describe(json.JSONDecodeError("Extra data", text, pos), start)
    return value, error


def _describe(exc: json.JSONDecodeError, origin: int) -> str:
    """Formats a decode error with its position, counted from where the JSON value starts.

    The agent needs the position to find its mistake, and "char 3 of the JSON" is what it can
    act on, not an offset into the whole message.
    """
    pos = max(exc.pos - origin, 0)
    line = exc.doc.count("\n", origin, exc.pos) + 1
    column = exc.pos - max(exc.doc.rfind("\n", origin, exc.pos) + 1, origin) + 1
    return f"{exc.msg} at line {line} column {column} (char {pos})"


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
