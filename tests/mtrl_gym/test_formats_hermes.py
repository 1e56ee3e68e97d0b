"""Tests for the hermes tool-call format: ``<tool_call>{...}</tool_call>`` blocks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given, settings

from mtrl_gym.formats import MAX_JSON_DEPTH, HermesFormat
from mtrl_gym.types import ParsedCall, ParseResult
from tests.mtrl_gym.test_formats_common import CALLS, STRINGS, _assert_round_trip

# --- Round trip -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(calls=CALLS, content=STRINGS)
def test_hermes_round_trip__restores_calls_and_content(
    calls: list[tuple[str, dict[str, Any]]], content: str
) -> None:
    fmt = HermesFormat()
    assume(not fmt.parse(content).calls)
    _assert_round_trip(fmt, calls, content)


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


def test_hermes_parse__syntax_error_before_deep_nesting_is_reported_as_such() -> None:
    raw = "<tool_call>[1 2" + "[" * 100_000 + "</tool_call>"
    (call,) = HermesFormat().parse(raw).calls
    assert (
        call.error
        == "invalid JSON in <tool_call>: Expecting ',' delimiter at line 1 column 4 (char 3)"
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


def test_hermes_render_calls__escapes_markup_inside_strings() -> None:
    text = HermesFormat().render_calls([("w", {"s": "<tool_call></tool_call> a<b"})])
    assert text == (
        '<tool_call>\n{"name": "w", "arguments": {"s": "\\u003ctool_call><\\/tool_call> a<b"}}\n'
        "</tool_call>"
    )


def test_hermes_render_calls__rejects_content_with_call_markup() -> None:
    with pytest.raises(ValueError, match="cannot express"):
        HermesFormat().render_calls([], '<tool_call>{"name": "x"}</tool_call>')


def test_hermes_render_result__wraps_in_tool_response() -> None:
    assert HermesFormat().render_result("add", "3") == "<tool_response>\n3\n</tool_response>"
