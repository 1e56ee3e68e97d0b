"""Tests for the json tool-call format: the whole message is one call or a list of calls."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given, settings

from mtrl_gym.formats import JsonFormat
from mtrl_gym.types import ParsedCall, ParseResult
from tests.mtrl_gym.test_formats_common import CALLS, STRINGS, _assert_round_trip

# --- Round trip -----------------------------------------------------------------------------


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


def test_json_parse__fenced_list() -> None:
    text = '```\n[{"name": "a"}, {"name": "b", "arguments": {}}]\n```'
    assert JsonFormat().parse(text) == ParseResult(
        content="",
        calls=(
            ParsedCall(name="a", arguments={}, raw='{"name": "a"}'),
            ParsedCall(name="b", arguments={}, raw='{"name": "b", "arguments": {}}'),
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
