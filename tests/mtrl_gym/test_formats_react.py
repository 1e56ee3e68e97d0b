"""Tests for the react tool-call format: ``Thought:`` / ``Action:`` / ``Action Input:`` lines."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtrl_gym.formats import ReActFormat
from mtrl_gym.types import ParsedCall, ParseResult
from tests.mtrl_gym.test_formats_common import JSON_OBJECTS, STRINGS, TOOL_NAMES, _assert_round_trip

# --- Round trip -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(calls=st.lists(st.tuples(TOOL_NAMES, JSON_OBJECTS), max_size=1), content=STRINGS)
def test_react_round_trip__restores_call_and_content(
    calls: list[tuple[str, dict[str, Any]]], content: str
) -> None:
    fmt = ReActFormat()
    assume(not fmt.parse(content).calls)
    _assert_round_trip(fmt, calls, content)


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
            "quotes at line 1 column 2 (char 1)",
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
