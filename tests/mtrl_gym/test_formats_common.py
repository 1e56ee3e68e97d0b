"""Tests for mtrl_gym.formats that every format shares.

Parsers never raise and stay linear on adversarial text, renderers escape markup and reject
what they cannot express, prompts list every tool, and the registry maps names to formats.
The Hypothesis strategies and helpers defined here are imported by the per-format tests
(test_formats_hermes.py, test_formats_json.py, test_formats_react.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtrl_gym.formats import (
    HermesFormat,
    JsonFormat,
    ReActFormat,
    ToolCallFormat,
    available_formats,
    get_format,
    register_format,
)
from mtrl_gym.types import ParsedCall, ParseResult

FORMATS = [HermesFormat(), JsonFormat(), ReActFormat()]
FORMAT_IDS = [f.name for f in FORMATS]

# Every code point, lone surrogates included: model output decoded with errors="surrogatepass"
# or sliced mid-pair can carry them.
ANY_CHAR = st.characters(codec=None, exclude_categories=())
ANY_TEXT = st.text(alphabet=ANY_CHAR)

# Pieces of markup that near-miss inputs are stitched from.
FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_call",
    "</tool_",
    "<final_output>",
    "</final_output>",
    "{",
    "}",
    "[",
    "]",
    '"',
    "\\",
    '\\"',
    ":",
    ",",
    "\n",
    " ",
    "Action:",
    "\nAction: ",
    "Action Input:",
    "\nAction Input: ",
    "Thought:",
    "Observation:",
    "```",
    "```json\n",
    '"name"',
    '"arguments"',
    '"name": ',
    '"arguments": ',
    "null",
    "true",
    "1e999",
    "-0.0",
    "NaN",
    "9" * 5000,
    "[" * 300,
    "{" * 300,
    "\ud800",
    "\udfff",
    "\x00",
    "\u2028",
]
# Text that often contains markup look-alikes, to stress escaping and content checks.
MARKUP_TEXT = st.lists(st.sampled_from(FRAGMENTS) | ANY_TEXT, max_size=6).map("".join)
STRINGS = ANY_TEXT | MARKUP_TEXT

JSON_SCALARS = (
    st.none()
    | st.booleans()
    # Bounded: json.dumps itself refuses ints of more than 4300 digits.
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | STRINGS
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRINGS, inner, max_size=4),
    max_leaves=20,
)
JSON_OBJECTS = st.dictionaries(STRINGS, JSON_VALUES, max_size=5)
TOOL_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,30}", fullmatch=True)
CALLS = st.lists(st.tuples(TOOL_NAMES, JSON_OBJECTS), max_size=4)


def _parse_all(text: str) -> None:
    for fmt in FORMATS:
        result = fmt.parse(text)
        assert isinstance(result, ParseResult)
        assert isinstance(result.content, str)
        for call in result.calls:
            assert isinstance(call, ParsedCall)
            # The contract: a call is either well formed or has an error and no arguments.
            if call.error is None:
                assert isinstance(call.name, str)
                assert isinstance(call.arguments, dict)
            else:
                assert call.arguments is None
                assert call.error


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    """Valid calls in some format, then truncated, spliced, duplicated and corrupted."""
    fmt = draw(st.sampled_from(FORMATS))
    calls = draw(st.lists(st.tuples(TOOL_NAMES, JSON_OBJECTS), min_size=1, max_size=3))
    content = draw(st.sampled_from(["", "Let me think.", "<final_output>"]))
    if fmt.name == "react":
        calls = calls[:1]
    if fmt.name == "json":
        content = ""
    text = fmt.render_calls(calls, content)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["insert", "delete", "truncate", "duplicate", "wrap"]))
        at = draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:at] + draw(st.sampled_from(FRAGMENTS) | ANY_TEXT) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif op == "truncate":
            text = text[:at]
        elif op == "duplicate":
            end = draw(st.integers(at, len(text)))
            text = text[:end] + text[at:end] + text[end:]
        else:
            opener, closer = draw(
                st.sampled_from(
                    [
                        ("<tool_call>", "</tool_call>"),
                        ("<final_output>", "</final_output>"),
                        ("```json\n", "\n```"),
                        ("[", "]"),
                        ("<tool_call>", ""),
                        ("", "</final_output>"),
                    ]
                )
            )
            text = opener + text + closer
    return text


@st.composite
def wrong_type_calls(draw: st.DrawFn) -> str:
    """Call objects whose fields have arbitrary JSON types, in each format's markup."""
    obj = draw(
        st.dictionaries(
            st.sampled_from(["name", "arguments", "extra"]) | ANY_TEXT, JSON_VALUES, max_size=3
        )
        | JSON_VALUES
    )
    body = json.dumps(obj, ensure_ascii=False)
    name = draw(TOOL_NAMES)
    return draw(
        st.sampled_from(
            [
                f"<tool_call>\n{body}\n</tool_call>",
                body,
                f"[{body}, {body}]",
                f"```json\n{body}\n```",
                f"Action: {name}\nAction Input: {body}",
                f"<tool_call>{body}<tool_call>{body}</tool_call></tool_call>",
            ]
        )
    )


# --- Never raises ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_parse__never_raises_on_arbitrary_text(text: str) -> None:
    _parse_all(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | ANY_TEXT, max_size=30).map("".join))
def test_parse__never_raises_on_markup_soup(text: str) -> None:
    _parse_all(text)


@settings(max_examples=300, deadline=None)
@given(near_misses())
def test_parse__never_raises_on_near_miss_calls(text: str) -> None:
    _parse_all(text)


@settings(max_examples=200, deadline=None)
@given(wrong_type_calls())
def test_parse__never_raises_on_wrongly_typed_fields(text: str) -> None:
    _parse_all(text)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "{" * 100_000,
        '{"a":' * 100_000,
        "<tool_call>" + "[" * 100_000 + "</tool_call>",
        '<tool_call>{"name": "x", "arguments": ' + "[" * 100_000 + "</tool_call>",
        '<tool_call>{"name": "x", "arguments": "' + "[" * 100_000 + '"}</tool_call>',
        "```json\n[" + "{" * 100_000 + "\n```",
        "Action: x\nAction Input: " + "{" * 100_000,
        "<tool_call>" + "1" * 10_000 + "</tool_call>",
        '<tool_call>{"name": "x", "arguments": {"n": ' + "9" * 10_000 + "}}</tool_call>",
        '{"name": "x", "arguments": {"n": -' + "9" * 10_000 + "}}",
        "Action: x\nAction Input: " + "7" * 10_000,
        '<tool_call>{"name": "x\ud800", "arguments": {"s": "\udfff\x00"}}</tool_call>',
        '<tool_call>{"name": "x", "arguments": {"s": "\\ud800"}}</tool_call>',
        "\x00<tool_call>\x00</tool_call>\x00",
    ],
    ids=lambda t: repr(t[:30]),
)
def test_parse__never_raises_on_pathological_json(text: str) -> None:
    _parse_all(text)


_NEAR_MISS_LEN = 200_000
ADVERSARIAL = {
    "open_tags": "<tool_call>" * (_NEAR_MISS_LEN // 11),
    "open_brace_tags": "<tool_call>{" * (_NEAR_MISS_LEN // 12),
    "unclosed_names": '<tool_call>{"name": "' * (_NEAR_MISS_LEN // 21),
    "tags_then_close": "<tool_call>" * (_NEAR_MISS_LEN // 22) + "</tool_call>",
    "closed_empty_calls": "<tool_call></tool_call>" * (_NEAR_MISS_LEN // 23),
    "escaped_quotes": '<tool_call>"' + '\\"' * (_NEAR_MISS_LEN // 2) + "</tool_call>",
    "quote_runs": "<tool_call>[" + '"\\' * (_NEAR_MISS_LEN // 2),
    "backslashes": '<tool_call>["' + "\\" * _NEAR_MISS_LEN + '"]</tool_call>',
    "name_then_spaces": '<tool_call>{"name"' + " " * _NEAR_MISS_LEN,
    "name_hints": '"name" :' * (_NEAR_MISS_LEN // 8),
    "final_opens": "<final_output>" * (_NEAR_MISS_LEN // 28) + "<tool_call>" * 1000,
    "final_blocks": "<final_output><tool_call></final_output>" * (_NEAR_MISS_LEN // 40),
    "final_then_calls": "<final_output>" + "<tool_call>{}</tool_call>" * (_NEAR_MISS_LEN // 25),
    "actions": "Action: x\n" * (_NEAR_MISS_LEN // 10),
    "action_inputs": "Action: x\nAction Input: {\n" * (_NEAR_MISS_LEN // 27),
    "action_spaces": "Action:" + " " * _NEAR_MISS_LEN,
    "action_blank_lines": "Action: x" + "\n" * _NEAR_MISS_LEN,
    "fences": "```json\n" * (_NEAR_MISS_LEN // 8),
    "fenced_list": "```json\n[" + " " * _NEAR_MISS_LEN + "{",
    "brackets": "[{" * (_NEAR_MISS_LEN // 2),
    "list_items": "[" + '{"name": "a"},' * (_NEAR_MISS_LEN // 14),
    "spaces": " " * _NEAR_MISS_LEN + "x",
}


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("text", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
def test_parse__is_fast_on_large_near_miss_input(fmt: ToolCallFormat, text: str) -> None:
    started = time.perf_counter()
    fmt.parse(text)
    # Linear parsers take tens of milliseconds here; quadratic ones take minutes.
    assert time.perf_counter() - started < 1.0


# --- Round trip -----------------------------------------------------------------------------


def _assert_round_trip(
    fmt: ToolCallFormat, calls: list[tuple[str, dict[str, Any]]], content: str
) -> None:
    result = fmt.parse(fmt.render_calls(calls, content))
    assert result.content == content.strip()
    assert [(c.name, c.arguments, c.error) for c in result.calls] == [
        (name, args, None) for name, args in calls
    ]


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_render_calls__escapes_closing_tags_inside_arguments(fmt: ToolCallFormat) -> None:
    args = {"html": "</tool_call></final_output><tool_call>", "k": "\nAction: y"}
    _assert_round_trip(fmt, [("write", args)], "")


# --- Shared rendering rules -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_render_calls__rejects_non_finite_numbers_and_bad_names(fmt: ToolCallFormat) -> None:
    with pytest.raises(ValueError):
        fmt.render_calls([("a", {"x": float("nan")})])
    with pytest.raises(ValueError):
        fmt.render_calls([("", {})])
    with pytest.raises(TypeError):
        fmt.render_calls([("a", {"x": object()})])


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_max_calls_per_turn__matches_the_format(fmt: ToolCallFormat) -> None:
    expected = {"hermes": None, "json": None, "react": 1}
    assert fmt.max_calls_per_turn == expected[fmt.name]


# --- tools_prompt ---------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Looks up an order by id.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "Order id, é"}},
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            },
        },
    },
]


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_tools_prompt__lists_every_tool_with_its_parameters(fmt: ToolCallFormat) -> None:
    prompt = fmt.tools_prompt(TOOLS)
    for tool in TOOLS:
        function = tool["function"]
        assert function["name"] in prompt
        assert function["description"] in prompt
        assert json.dumps(function["parameters"], ensure_ascii=False) in prompt


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_tools_prompt__accepts_bare_function_specs(fmt: ToolCallFormat) -> None:
    prompt = fmt.tools_prompt([{"name": "now", "description": "Current time."}])
    assert "now" in prompt
    assert json.dumps({"type": "object", "properties": {}}) in prompt


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_tools_prompt__rejects_tool_without_name(fmt: ToolCallFormat) -> None:
    with pytest.raises(ValueError, match="tool 0 has no function name"):
        fmt.tools_prompt([{"type": "function", "function": {"description": "?"}}])


def test_tools_prompt__explains_each_format() -> None:
    assert "<tool_call>" in HermesFormat().tools_prompt(TOOLS)
    assert '{"name": "tool_name", "arguments"' in JsonFormat().tools_prompt(TOOLS)
    react = ReActFormat().tools_prompt(TOOLS)
    assert "Action Input:" in react
    assert "Observation:" in react


# --- Registry -------------------------------------------------------------------------------


def test_get_format__by_name_and_instance() -> None:
    assert isinstance(get_format("hermes"), HermesFormat)
    assert isinstance(get_format("json"), JsonFormat)
    assert isinstance(get_format("react"), ReActFormat)
    fmt = ReActFormat()
    assert get_format(fmt) is fmt


def test_get_format__unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown tool-call format 'xml'.*'hermes', 'json'"):
        get_format("xml")


def test_get_format__rejects_other_types() -> None:
    with pytest.raises(TypeError):
        get_format(3)  # type: ignore[arg-type]


def test_available_formats__lists_builtins() -> None:
    assert {"hermes", "json", "react"} <= set(available_formats())
    assert available_formats() == sorted(available_formats())


def test_register_format__rejects_duplicates_and_non_formats() -> None:
    class Dup(HermesFormat):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_format(Dup)
    with pytest.raises(TypeError):
        register_format(dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="abstract"):
        register_format(ToolCallFormat)


def test_register_format__makes_a_new_format_available(monkeypatch: pytest.MonkeyPatch) -> None:
    import mtrl_gym.formats.base as formats

    # Isolate the registry so the new name does not leak into other tests.
    monkeypatch.setattr(formats, "_REGISTRY", dict(formats._REGISTRY))

    class Shout(HermesFormat):
        name = "shout"

    register_format(Shout)
    assert "shout" in available_formats()
    assert isinstance(get_format("shout"), Shout)
