"""Tests for mtrl_gym.formats: parsers never raise, renderers round-trip, errors are reported."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtrl_gym.formats import (
    MAX_JSON_DEPTH,
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
    assert time.perf_counter() - started < 0.5


# --- Round trip -----------------------------------------------------------------------------


def _assert_round_trip(
    fmt: ToolCallFormat, calls: list[tuple[str, dict[str, Any]]], content: str
) -> None:
    result = fmt.parse(fmt.render_calls(calls, content))
    assert result.content == content.strip()
    assert [(c.name, c.arguments, c.error) for c in result.calls] == [
        (name, args, None) for name, args in calls
    ]


@settings(max_examples=150, deadline=None)
@given(calls=CALLS, content=STRINGS)
def test_hermes_round_trip__restores_calls_and_content(
    calls: list[tuple[str, dict[str, Any]]], content: str
) -> None:
    fmt = HermesFormat()
    assume(not fmt.parse(content).calls)
    _assert_round_trip(fmt, calls, content)


@settings(max_examples=150, deadline=None)
@given(calls=CALLS, content=STRINGS)
def test_json_round_trip__restores_calls_or_content(
    calls: list[tuple[str, dict[str, Any]]], content: str
) -> None:
    fmt = JsonFormat()
    if calls:
        content = ""  # The format has no room for prose next to calls.
    assume(not fmt.parse(content).calls)
    _assert_round_trip(fmt, calls, content)


@settings(max_examples=150, deadline=None)
@given(calls=st.lists(st.tuples(TOOL_NAMES, JSON_OBJECTS), max_size=1), content=STRINGS)
def test_react_round_trip__restores_call_and_content(
    calls: list[tuple[str, dict[str, Any]]], content: str
) -> None:
    fmt = ReActFormat()
    assume(not fmt.parse(content).calls)
    _assert_round_trip(fmt, calls, content)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_render_calls__escapes_closing_tags_inside_arguments(fmt: ToolCallFormat) -> None:
    args = {"html": "</tool_call></final_output><tool_call>", "k": "\nAction: y"}
    _assert_round_trip(fmt, [("write", args)], "")


# --- Hermes ---------------------------------------------------------------------------------


def test_hermes_parse__several_calls_and_surrounding_text() -> None:
    text = (
        "I will look both up.\n"
        '<tool_call>\n{"name": "lookup", "arguments": {"id": 1}}\n</tool_call>\n'
        "and then\n"
        '<tool_call>{"name": "lookup", "arguments": {"id": 2}}</tool_call>  '
    )
    assert HermesFormat().parse(text) == ParseResult(
        content="I will look both up.\nand then",
        calls=(
            ParsedCall(
                name="lookup",
                arguments={"id": 1},
                raw='<tool_call>\n{"name": "lookup", "arguments": {"id": 1}}\n</tool_call>',
            ),
            ParsedCall(
                name="lookup",
                arguments={"id": 2},
                raw='<tool_call>{"name": "lookup", "arguments": {"id": 2}}</tool_call>',
            ),
        ),
    )


def test_hermes_parse__plain_text_has_no_calls() -> None:
    assert HermesFormat().parse("  Just an answer.\n") == ParseResult(content="Just an answer.")


def test_hermes_parse__final_output_is_content_not_a_call() -> None:
    text = '<final_output>{"name": "x", "arguments": {}}</final_output>'
    assert HermesFormat().parse(text) == ParseResult(content=text)


def test_hermes_parse__call_markup_inside_final_output_is_left_alone() -> None:
    text = 'Done.\n<final_output><tool_call>{"name": "x"}</tool_call></final_output>'
    assert HermesFormat().parse(text) == ParseResult(content=text)


def test_hermes_parse__call_after_final_output_is_parsed() -> None:
    text = '<final_output>42</final_output>\n<tool_call>{"name": "x"}</tool_call>'
    assert HermesFormat().parse(text) == ParseResult(
        content="<final_output>42</final_output>",
        calls=(ParsedCall(name="x", arguments={}, raw='<tool_call>{"name": "x"}</tool_call>'),),
    )


def test_hermes_parse__invalid_json_reports_position() -> None:
    raw = '<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>'
    assert HermesFormat().parse(raw) == ParseResult(
        content="",
        calls=(
            ParsedCall(
                name="add",
                arguments=None,
                raw=raw,
                error="invalid JSON in <tool_call>: Expecting property name enclosed in double "
                "quotes at line 1 column 38 (char 37)",
            ),
        ),
    )


def test_hermes_parse__trailing_data_is_invalid_json() -> None:
    raw = '<tool_call>{"name": "a"} x</tool_call>'
    (call,) = HermesFormat().parse(raw).calls
    assert call == ParsedCall(
        name="a",
        arguments=None,
        raw=raw,
        error="invalid JSON in <tool_call>: Extra data at line 1 column 15 (char 14)",
    )


def test_hermes_parse__missing_name() -> None:
    raw = '<tool_call>{"arguments": {"a": 1}}</tool_call>'
    assert HermesFormat().parse(raw).calls == (
        ParsedCall(name=None, arguments=None, raw=raw, error='<tool_call> is missing "name"'),
    )


def test_hermes_parse__non_string_name() -> None:
    raw = '<tool_call>{"name": ["add"], "arguments": {}}</tool_call>'
    assert HermesFormat().parse(raw).calls == (
        ParsedCall(
            name=None,
            arguments=None,
            raw=raw,
            error='"name" in <tool_call> must be a string, got an array',
        ),
    )


def test_hermes_parse__empty_name() -> None:
    raw = '<tool_call>{"name": " ", "arguments": {}}</tool_call>'
    assert HermesFormat().parse(raw).calls == (
        ParsedCall(
            name=" ", arguments=None, raw=raw, error='"name" in <tool_call> must not be empty'
        ),
    )


def test_hermes_parse__non_object_arguments() -> None:
    raw = '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>'
    assert HermesFormat().parse(raw).calls == (
        ParsedCall(
            name="add",
            arguments=None,
            raw=raw,
            error='"arguments" in <tool_call> must be a JSON object, got an array',
        ),
    )


def test_hermes_parse__string_encoded_arguments_are_accepted() -> None:
    raw = '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>'
    assert HermesFormat().parse(raw).calls == (ParsedCall(name="add", arguments={"a": 1}, raw=raw),)


def test_hermes_parse__string_arguments_without_object_are_rejected() -> None:
    raw = '<tool_call>{"name": "add", "arguments": "a=1"}</tool_call>'
    assert HermesFormat().parse(raw).calls == (
        ParsedCall(
            name="add",
            arguments=None,
            raw=raw,
            error='"arguments" in <tool_call> is a string that does not hold a JSON object '
            "(Expecting value at line 1 column 1 (char 0))",
        ),
    )


@pytest.mark.parametrize("body", ['{"name": "now"}', '{"name": "now", "arguments": null}'])
def test_hermes_parse__missing_or_null_arguments_mean_empty(body: str) -> None:
    raw = f"<tool_call>{body}</tool_call>"
    assert HermesFormat().parse(raw).calls == (ParsedCall(name="now", arguments={}, raw=raw),)


def test_hermes_parse__non_object_body() -> None:
    raw = '<tool_call>["add", {}]</tool_call>'
    assert HermesFormat().parse(raw).calls == (
        ParsedCall(
            name=None,
            arguments=None,
            raw=raw,
            error='<tool_call> must hold a JSON object with "name" and "arguments", got an array',
        ),
    )


def test_hermes_parse__empty_block() -> None:
    raw = "<tool_call>\n \n</tool_call>"
    assert HermesFormat().parse(raw).calls == (
        ParsedCall(
            name=None,
            arguments=None,
            raw=raw,
            error='empty <tool_call> block: expected {"name": ..., "arguments": {...}}',
        ),
    )


def test_hermes_parse__unclosed_tag_at_end() -> None:
    text = 'Calling.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n'
    assert HermesFormat().parse(text) == ParseResult(
        content="Calling.",
        calls=(
            ParsedCall(
                name="add",
                arguments=None,
                raw='<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n',
                error="unclosed <tool_call> tag: missing </tool_call> after the JSON",
            ),
        ),
    )


def test_hermes_parse__unclosed_tag_stops_at_next_call() -> None:
    text = '<tool_call>{"name": "a"}\n<tool_call>{"name": "b"}</tool_call>'
    assert HermesFormat().parse(text) == ParseResult(
        content="",
        calls=(
            ParsedCall(
                name="a",
                arguments=None,
                raw='<tool_call>{"name": "a"}\n',
                error="unclosed <tool_call> tag: missing </tool_call> after the JSON",
            ),
            ParsedCall(name="b", arguments={}, raw='<tool_call>{"name": "b"}</tool_call>'),
        ),
    )


def test_hermes_parse__unclosed_tag_stops_at_final_output() -> None:
    text = '<tool_call>{"name": "a"}\n<final_output>7</final_output>'
    result = HermesFormat().parse(text)
    assert result.content == "<final_output>7</final_output>"
    assert [c.raw for c in result.calls] == ['<tool_call>{"name": "a"}\n']


def test_hermes_parse__nested_open_tag_is_reported() -> None:
    text = '<tool_call><tool_call>{"name": "a"}</tool_call></tool_call>'
    assert HermesFormat().parse(text) == ParseResult(
        content="</tool_call>",
        calls=(
            ParsedCall(
                name=None,
                arguments=None,
                raw="<tool_call>",
                error="unclosed <tool_call> tag: missing </tool_call> after the JSON",
            ),
            ParsedCall(name="a", arguments={}, raw='<tool_call>{"name": "a"}</tool_call>'),
        ),
    )


def test_hermes_parse__stray_closing_tag_stays_in_content() -> None:
    assert HermesFormat().parse("a </tool_call> b") == ParseResult(content="a </tool_call> b")


def test_hermes_parse__deep_nesting_is_an_error_not_a_crash() -> None:
    raw = "<tool_call>" + "[" * 100_000 + "</tool_call>"
    (call,) = HermesFormat().parse(raw).calls
    assert call == ParsedCall(
        name=None,
        arguments=None,
        raw=raw,
        error=f"invalid JSON in <tool_call>: nesting deeper than {MAX_JSON_DEPTH} levels",
    )


def test_hermes_parse__moderate_nesting_is_accepted() -> None:
    args = {"a": json.loads("[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2))}
    _assert_round_trip(HermesFormat(), [("deep", args)], "")


def test_hermes_parse__huge_integer_is_an_error_not_a_crash() -> None:
    raw = '<tool_call>{"name": "add", "arguments": {"a": ' + "1" * 5000 + "}}</tool_call>"
    assert HermesFormat().parse(raw).calls == (
        ParsedCall(
            name="add",
            arguments=None,
            raw=raw,
            error="invalid JSON in <tool_call>: a number has too many digits",
        ),
    )


def test_hermes_parse__surrogates_and_nul_pass_through() -> None:
    raw = (
        '<tool_call>{"name": "echo", "arguments": {"s": "\ud800\x00", "t": "\\udfff"}}</tool_call>'
    )
    assert HermesFormat().parse("\x00" + raw) == ParseResult(
        content="\x00",
        calls=(ParsedCall(name="echo", arguments={"s": "\ud800\x00", "t": "\udfff"}, raw=raw),),
    )


def test_hermes_parse__literal_newline_inside_string_is_accepted() -> None:
    raw = '<tool_call>{"name": "write", "arguments": {"code": "a\n\tb"}}</tool_call>'
    assert HermesFormat().parse(raw).calls[0].arguments == {"code": "a\n\tb"}


def test_hermes_render_calls__layout() -> None:
    text = HermesFormat().render_calls([("add", {"a": 1}), ("now", {})], "Two calls.")
    assert text == (
        "Two calls.\n"
        '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    )


def test_hermes_render_calls__rejects_content_with_call_markup() -> None:
    with pytest.raises(ValueError, match="cannot express"):
        HermesFormat().render_calls([], '<tool_call>{"name": "x"}</tool_call>')


def test_hermes_render_result__wraps_in_tool_response() -> None:
    assert HermesFormat().render_result("add", "3") == "<tool_response>\n3\n</tool_response>"


# --- JSON -----------------------------------------------------------------------------------


def test_json_parse__single_object() -> None:
    text = ' {"name": "add", "arguments": {"a": 1}}\n'
    assert JsonFormat().parse(text) == ParseResult(
        content="",
        calls=(
            ParsedCall(
                name="add", arguments={"a": 1}, raw='{"name": "add", "arguments": {"a": 1}}'
            ),
        ),
    )


def test_json_parse__fenced_object() -> None:
    text = '```json\n{"name": "add", "arguments": {"a": 1}}\n```'
    assert JsonFormat().parse(text) == ParseResult(
        content="",
        calls=(
            ParsedCall(
                name="add", arguments={"a": 1}, raw='{"name": "add", "arguments": {"a": 1}}'
            ),
        ),
    )


def test_json_parse__list_of_calls_with_exact_spans() -> None:
    text = '[ {"name": "a"} ,\n{"name": "b", "arguments": {"x": [1]}}, 3]'
    assert JsonFormat().parse(text) == ParseResult(
        content="",
        calls=(
            ParsedCall(name="a", arguments={}, raw='{"name": "a"}'),
            ParsedCall(
                name="b", arguments={"x": [1]}, raw='{"name": "b", "arguments": {"x": [1]}}'
            ),
            ParsedCall(
                name=None,
                arguments=None,
                raw="3",
                error='item 2 of the call list must be a JSON object with "name" and '
                '"arguments", got a number',
            ),
        ),
    )


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 4.",
        "[1, 2, 3]",
        "[]",
        '"just a string"',
        'Here you go: {"name": "a"}',
        '```python\n{"name": "a"}\n```',
        '<final_output>{"name": "a"}</final_output>',
    ],
)
def test_json_parse__anything_else_is_plain_content(text: str) -> None:
    assert JsonFormat().parse(text) == ParseResult(content=text)


def test_json_parse__invalid_json_reports_position() -> None:
    text = '{"name": "add", "arguments": {"a": 1}'
    assert JsonFormat().parse(text) == ParseResult(
        content="",
        calls=(
            ParsedCall(
                name="add",
                arguments=None,
                raw=text,
                error="invalid JSON in tool call: Expecting ',' delimiter at line 1 column 38 "
                "(char 37)",
            ),
        ),
    )


def test_json_parse__unclosed_fence() -> None:
    text = '```json\n{"name": "add", "arguments": {}}'
    assert JsonFormat().parse(text) == ParseResult(
        content="",
        calls=(
            ParsedCall(
                name="add",
                arguments=None,
                raw=text,
                error="unclosed ``` fence: the JSON block must end with ```",
            ),
        ),
    )


def test_json_parse__object_without_name() -> None:
    text = '{"answer": 42}'
    assert JsonFormat().parse(text).calls == (
        ParsedCall(name=None, arguments=None, raw=text, error='tool call is missing "name"'),
    )


def test_json_render_calls__object_for_one_list_for_several() -> None:
    fmt = JsonFormat()
    assert fmt.render_calls([("a", {"x": 1})]) == '{"name": "a", "arguments": {"x": 1}}'
    assert fmt.render_calls([("a", {}), ("b", {})]) == (
        '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]'
    )


def test_json_render_calls__rejects_content_next_to_calls() -> None:
    with pytest.raises(ValueError, match="content"):
        JsonFormat().render_calls([("a", {})], "hello")


def test_json_render_result__is_a_json_object() -> None:
    assert json.loads(JsonFormat().render_result("add", "3")) == {"name": "add", "content": "3"}


# --- ReAct ----------------------------------------------------------------------------------


def test_react_parse__thought_action_and_input() -> None:
    text = 'Thought: I should add them.\nAction: add\nAction Input: {"a": 1,\n  "b": 2}\n'
    assert ReActFormat().parse(text) == ParseResult(
        content="I should add them.",
        calls=(
            ParsedCall(
                name="add",
                arguments={"a": 1, "b": 2},
                raw='Action: add\nAction Input: {"a": 1,\n  "b": 2}',
            ),
        ),
    )


def test_react_parse__blank_lines_between_action_and_input_are_allowed() -> None:
    text = "Action:  add \n\n  Action Input:\n{}"
    assert ReActFormat().parse(text).calls == (ParsedCall(name="add", arguments={}, raw=text),)


def test_react_parse__action_without_input() -> None:
    text = "Thought: hmm\nAction: add\nI forgot the input."
    assert ReActFormat().parse(text) == ParseResult(
        content="hmm\nI forgot the input.",
        calls=(
            ParsedCall(
                name="add",
                arguments=None,
                raw="Action: add",
                error="Action: must be followed by an 'Action Input:' line holding the "
                "arguments as a JSON object",
            ),
        ),
    )


def test_react_parse__action_without_name() -> None:
    text = "Action:\nAction Input: {}"
    assert ReActFormat().parse(text).calls == (
        ParsedCall(name=None, arguments=None, raw=text, error="Action: has no tool name"),
    )


def test_react_parse__invalid_input_json() -> None:
    text = "Action: add\nAction Input: {a: 1}\nAction: sub\nAction Input: {}"
    assert ReActFormat().parse(text).calls == (
        ParsedCall(
            name="add",
            arguments=None,
            raw="Action: add\nAction Input: {a: 1}\n",
            error="invalid JSON in Action Input: Expecting property name enclosed in double "
            "quotes at line 2 column 16 (char 27)",
        ),
        ParsedCall(
            name="sub",
            arguments=None,
            raw="Action: sub\nAction Input: {}",
            error="only one Action is allowed per message; this extra Action was ignored",
        ),
    )


def test_react_parse__non_object_input() -> None:
    text = "Action: search\nAction Input: weather in Paris"
    (call,) = ReActFormat().parse(text).calls
    assert call.name == "search"
    assert call.arguments is None
    assert call.error is not None
    assert call.error.startswith("invalid JSON in Action Input: Expecting value")

    text = 'Action: search\nAction Input: ["Paris"]'
    assert ReActFormat().parse(text).calls == (
        ParsedCall(
            name="search",
            arguments=None,
            raw=text,
            error="Action Input must be a JSON object, got an array",
        ),
    )


def test_react_parse__string_encoded_input_is_accepted() -> None:
    text = 'Action: add\nAction Input: "{\\"a\\": 1}"'
    assert ReActFormat().parse(text).calls == (
        ParsedCall(name="add", arguments={"a": 1}, raw=text),
    )


def test_react_parse__second_action_is_reported_as_extra() -> None:
    text = 'Action: a\nAction Input: {}\nObservation: made up\nAction: b\nAction Input: {"x": 1}'
    assert ReActFormat().parse(text) == ParseResult(
        content="Observation: made up",
        calls=(
            ParsedCall(name="a", arguments={}, raw="Action: a\nAction Input: {}"),
            ParsedCall(
                name="b",
                arguments=None,
                raw='Action: b\nAction Input: {"x": 1}',
                error="only one Action is allowed per message; this extra Action was ignored",
            ),
        ),
    )


def test_react_parse__final_output_is_not_an_action() -> None:
    text = "Thought: done.\n<final_output>\nAction: add\nAction Input: {}\n</final_output>"
    assert ReActFormat().parse(text) == ParseResult(content=text[len("Thought: ") :])


def test_react_parse__action_must_start_a_line() -> None:
    text = 'The next Action: add\nAction Input: {"a": 1}'
    assert ReActFormat().parse(text) == ParseResult(content=text)


def test_react_render_calls__layout_and_one_call_limit() -> None:
    fmt = ReActFormat()
    assert fmt.render_calls([("add", {"a": 1})], "Adding.") == (
        'Thought: Adding.\nAction: add\nAction Input: {"a": 1}'
    )
    with pytest.raises(ValueError, match="one call"):
        fmt.render_calls([("a", {}), ("b", {})])
    with pytest.raises(ValueError, match="one line"):
        fmt.render_calls([("a\nb", {})])


def test_react_render_result__is_an_observation() -> None:
    assert ReActFormat().render_result("add", "3") == "Observation: 3"


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
    import mtrl_gym.formats as formats

    # Isolate the registry so the new name does not leak into other tests.
    monkeypatch.setattr(formats, "_REGISTRY", dict(formats._REGISTRY))

    class Shout(HermesFormat):
        name = "shout"

    register_format(Shout)
    assert "shout" in available_formats()
    assert isinstance(get_format("shout"), Shout)
