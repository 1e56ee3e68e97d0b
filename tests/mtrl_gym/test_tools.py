import asyncio
import enum
import json
from typing import Literal

import pytest

from mtrl_gym import Tool, tool
from mtrl_gym.tools import ToolInfraError, render_result
from tests.mtrl_gym.toy import ToyEnv


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def search(
    query: str,
    limit: int = 5,
    mode: Literal["fast", "exact"] = "fast",
    tags: list[str] | None = None,
    color: Color = Color.RED,
) -> list:
    """Searches the catalogue.

    Longer explanation that
    spans lines.

    Args:
        query: What to look for,
            possibly several words.
        limit (int): At most this many hits.
        mode: Matching mode.
        tags: Optional tag filter.
        color: Colour filter.

    Returns:
        Hits.
    """
    return [query, limit, mode, tags, color]


def test_from_function__schema_from_signature_and_docstring():
    t = Tool.from_function(search)
    assert t.name == "search"
    assert t.description == "Searches the catalogue.\n\nLonger explanation that spans lines."
    assert t.parameters == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for, possibly several words."},
            "limit": {"type": "integer", "description": "At most this many hits.", "default": 5},
            "mode": {"enum": ["fast", "exact"], "description": "Matching mode.", "default": "fast"},
            "tags": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "description": "Optional tag filter.",
                "default": None,
            },
            "color": {"enum": ["red", "blue"], "description": "Colour filter.", "default": "red"},
        },
        "required": ["query"],
        "additionalProperties": False,
    }
    assert t.validate({"query": "q", "color": "blue", "tags": ["a"]}) is None


def test_from_function__unsupported_hints_are_clear_errors():
    def no_hint(x):
        """Doc."""

    def varargs(*xs: int):
        """Doc."""

    with pytest.raises(ValueError, match="parameter 'x' needs a type hint"):
        Tool.from_function(no_hint)
    with pytest.raises(ValueError, match=r"\*args"):
        Tool.from_function(varargs)


def test_validate__messages_name_the_argument():
    t = Tool.from_function(search)
    assert t.validate({"query": "a"}) is None
    assert t.validate({"query": 3}) == "argument 'query': 3 is not of type 'string'"
    assert t.validate({}) == "'query' is a required property"
    assert t.validate({"query": "a", "extra": 1}).startswith(
        "Additional properties are not allowed"
    )
    assert t.validate({"query": "a", "mode": "slow"}) == (
        "argument 'mode': 'slow' is not one of ['fast', 'exact']"
    )
    assert t.validate([1]) == "arguments must be a JSON object, got list"


OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
BEDROCK = {
    "toolSpec": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "inputSchema": {"json": OPENAI["function"]["parameters"]},
    }
}


def test_from_openai_and_bedrock__same_tool_same_schema():
    a = Tool.from_openai(OPENAI, fn=lambda city, unit="c": f"sunny in {city}")
    b = Tool.from_bedrock(BEDROCK, fn=lambda city, unit="c": f"sunny in {city}")
    c = Tool.from_openai(OPENAI["function"], fn=lambda city: city)
    assert a.schema == OPENAI == b.schema == c.schema
    assert a(city="Oslo") == "sunny in Oslo"
    assert (
        a.validate({"city": "Oslo", "unit": "k"}) == "argument 'unit': 'k' is not one of ['c', 'f']"
    )


def test_from_production_schemas__bad_schemas_are_clear_errors():
    with pytest.raises(ValueError, match="inputSchema.json"):
        Tool.from_bedrock({"toolSpec": {"name": "x"}}, fn=print)
    with pytest.raises(ValueError, match="needs a 'name'"):
        Tool.from_openai({"type": "function", "function": {}}, fn=print)
    with pytest.raises(ValueError, match="invalid parameters schema"):
        Tool(name="x", description="", parameters={"type": "object", "properties": 3}, fn=print)
    with pytest.raises(ValueError, match="invalid tool name"):
        Tool(name="has space", description="", parameters={"type": "object"}, fn=print)


def test_tool_decorator__with_and_without_arguments():
    @tool
    def f(x: int) -> int:
        """Doubles.

        Args:
            x: A number.
        """
        return 2 * x

    @tool(name="g2", timeout_s=1.5)
    async def g(x: float) -> float:
        """Halves."""
        return x / 2

    assert isinstance(f, Tool) and f(x=2) == 4 and not f.is_async
    assert g.name == "g2" and g.timeout_s == 1.5 and g.is_async
    assert g.parameters["properties"] == {"x": {"type": "number"}}


def test_render_result__strings_pass_json_otherwise():
    assert render_result("plain") == "plain"
    assert render_result({"a": [1, None, True]}) == '{"a": [1, null, true]}'
    with pytest.raises(ToolInfraError, match="not JSON-serialisable"):
        render_result({"a": object()})


def _find_order(order_id: str) -> str:
    """Finds an order, tau-bench style: errors are returned, not raised.

    Args:
        order_id: The order.
    """
    return "Order #1: shipped" if order_id == "#1" else "Error: order not found"


FIND_SCHEMA = {
    "name": "find_order",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
}
FIND_SPEC = {"toolSpec": {"name": "find_order", "inputSchema": {"json": FIND_SCHEMA["parameters"]}}}


def test_error_prefix__every_constructor_takes_it_and_off_by_default():
    made = [
        Tool.from_function(_find_order, name="find_order", error_prefix="Error:"),
        Tool.from_openai(FIND_SCHEMA, _find_order, error_prefix="Error:"),
        Tool.from_bedrock(FIND_SPEC, _find_order, error_prefix="Error:"),
        tool(error_prefix="Error:")(_find_order),
    ]
    assert [t.error_prefix for t in made] == ["Error:"] * 4
    assert all(t.returned_error("Error: order not found") == "order not found" for t in made)
    assert all(t.returned_error("Order #1: shipped") is None for t in made)
    assert Tool.from_function(_find_order).returned_error("Error: order not found") is None


def test_error_prefix__message_is_the_rest_without_a_doubled_error():
    t = Tool.from_function(_find_order, error_prefix="Error")
    assert t.returned_error("Error: order not found") == "order not found"
    assert t.returned_error("Error") == "the tool reported an error"
    assert t.returned_error({"Error": 1}) is None and t.returned_error("error: x") is None
    with pytest.raises(ValueError, match="error_prefix"):
        Tool.from_function(_find_order, error_prefix=" ")


@pytest.mark.parametrize("runner", ["step", "astep"])
@pytest.mark.parametrize("ends_episode", [False, True])
def test_error_prefix__returned_error_is_recorded_like_a_raised_tool_error(runner, ends_episode):
    find = Tool.from_function(_find_order, error_prefix="Error: ", ends_episode=ends_episode)
    env = ToyEnv(extra_tools=(find,))
    env.reset(options={"task_id": "t2"})
    calls = [("_find_order", {"order_id": "#9"}), ("lookup", {"key": "zz"})]
    action = "".join(
        f"<tool_call>{json.dumps({'name': n, 'arguments': a})}</tool_call>" for n, a in calls
    )
    step = env.step if runner == "step" else lambda a: asyncio.run(env.astep(a))
    obs, _, terminated, truncated, info = step(action)
    assert not terminated and not truncated  # an error ends nothing, even from an ending tool
    record = info["tool_calls"][0]
    assert record["error"] == "order not found" and record.get("result") is None
    assert info["messages"][0]["content"] == "Error: order not found"
    assert obs.count("Error: ") == 2 and "Error: Error" not in obs
    # Counted exactly like the ToolError that ``lookup`` raises: a call that ran, not invalid.
    assert info["counts"]["tool_calls"] == 2 and info["counts"]["invalid_tool_calls"] == 0
    obs, _, terminated, _, info = step(
        f"<tool_call>{json.dumps({'name': '_find_order', 'arguments': {'order_id': '#1'}})}"
        "</tool_call>"
    )
    assert info["tool_calls"][0]["result"] == "Order #1: shipped"
    assert terminated is ends_episode
    env.close()
