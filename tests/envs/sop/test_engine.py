"""Tool behaviour through the environment: the exact text the agent reads for every construct.

Each case calls one tool of the synthetic suite (see ``synthetic.py``; rows O-1, O-2, O-3) and
compares the tool message with the expected rendering: ``json.dumps`` with Python's defaults
(``NaN``, ``ensure_ascii``, keys in spec order) or ``Error: <message>``.
"""

import pytest

from mtrl_envs.sop import SopEnv, SopSuite
from mtrl_envs.sop.engine import BehaviorTool, bind
from mtrl_envs.sop.spec import validate_tool
from mtrl_envs.sop.table import Table
from tests.envs.sop.synthetic import build_suite


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    suite = SopSuite.load(build_suite(tmp_path_factory.mktemp("engine") / "suite"))
    environment = SopEnv(suite)
    yield environment
    environment.close()


def call(env, name, **args):
    """Sends one call in a fresh episode; returns the tool message the agent reads."""
    env.reset(options={"task_index": 0})
    _, _, _, _, info = env.step(env.format.render_calls([(name, args)]))
    assert len(info["messages"]) == 1 and info["messages"][0]["role"] == "tool"
    return info["messages"][0]["content"]


CASES = [
    # lookup, arg echo with optional default, every cast, raw NaN, on_null, const, key order
    (
        "getOrder",
        {"order_id": "O-1"},
        '{"id": "O-1", "verbose": false, "qty": 3, "price": 70.1, "price_text": "70.1", '
        '"express": true, "gift": true, "note": "fragile", "kind": "order"}',
    ),
    (
        "getOrder",
        {"order_id": "O-2", "verbose": "\u00e9"},
        '{"id": "O-2", "verbose": "\\u00e9", "qty": 70, "price": 70.0, "price_text": "70.0", '
        '"express": false, "gift": NaN, "note": "", "kind": "order"}',
    ),
    # validate: truthy (0 and "" fail, "nan" passes), regex full match, {arg} templating
    ("getOrder", {"order_id": ""}, "Error: Missing order_id"),
    ("getOrder", {"order_id": 0}, "Error: Missing order_id"),
    ("getOrder", {"order_id": "nan"}, "Error: Bad id: nan"),
    ("getOrder", {"order_id": "O-1 "}, "Error: Bad id: O-1 "),
    ("getOrder", {"order_id": 7}, "Error: Bad id: 7"),
    ("getOrder", {"order_id": "O-9"}, "Error: No order O-9"),
    # signature semantics: unexpected keyword first, then missing, in CPython's words
    ("getOrder", {}, "Error: getOrder() missing 1 required positional argument: 'order_id'"),
    (
        "getOrder",
        {"orderId": "O-1"},
        "Error: getOrder() got an unexpected keyword argument 'orderId'",
    ),
    (
        "findOwner",
        {},
        "Error: findOwner() missing 2 required positional arguments: 'order_id' and 'owners'",
    ),
    # on_null variants on an empty float cell; bool(NaN) is True; on_none return templated
    (
        "getDetails",
        {"order_id": "O-1"},
        '{"score_nan": 0.5, "score_null": 0.5, "score_zero": 0.5, "score_true": 0.5, '
        '"score_text": "0.5", "score_bool": true, "owners": [{"name": "Ann", "id": 1}], '
        '"metrics_raw": "{\\"a\\": 1}"}',
    ),
    (
        "getDetails",
        {"order_id": "O-2"},
        '{"score_nan": NaN, "score_null": null, "score_zero": 0, "score_true": true, '
        '"score_text": "nan", "score_bool": true, "owners": [{"name": "Bob", "id": 2}], '
        '"metrics_raw": "{}"}',
    ),
    ("getDetails", {"order_id": "O-9"}, '{"found": false, "message": "Order O-9 not found"}'),
    # on_null error: the cast's own complaint, or a plain one for casts that accept NaN
    ("getScoreStrict", {"order_id": "O-1"}, '{"score": 0, "note": "fragile"}'),
    ("getScoreStrict", {"order_id": "O-2"}, "Error: cannot convert float NaN to integer"),
    ("getScoreStrict", {"order_id": "O-3"}, "Error: missing value in column 'note'"),
    # scalar returns: json_if_str, a bare string
    ("getMetrics", {"order_id": "O-1"}, '{"a": 1}'),
    ("getMetrics", {"order_id": "O-3"}, "Error: Expecting value: line 1 column 1 (char 0)"),
    ("getStatus", {"order_id": "O-3"}, '"in-progress"'),
    # on_multiple first / error; NaN cells never match, not even the string "nan"
    ("byRegion", {"region": "north"}, '{"order": "O-1"}'),
    ("byRegionStrict", {"region": "north"}, "Error: Several orders in north"),
    ("byRegion", {"region": "nan"}, "Error: No order in nan"),
    # arg_cast int: Python's int(), errors included
    ("checkQty", {"order_id": "O-1", "qty": "3"}, '{"ok": true}'),
    ("checkQty", {"order_id": "O-1", "qty": 3.9}, '{"ok": true}'),
    (
        "checkQty",
        {"order_id": "O-1", "qty": "3.5"},
        "Error: invalid literal for int() with base 10: '3.5'",
    ),
    (
        "checkQty",
        {"order_id": "O-1", "qty": None},
        "Error: int() argument must be a string, a bytes-like object or a real number, "
        "not 'NoneType'",
    ),
    ("checkQty", {"order_id": "O-1", "qty": 4}, "Error: No match"),
    # pandas_eq without a cast: numbers by value, bools equal 1/0, strings never equal numbers
    ("checkFlags", {"qty": 3.0, "express": 1}, '{"order": "O-1"}'),
    ("checkFlags", {"qty": 70, "express": False}, '{"order": "O-2"}'),
    ("checkFlags", {"qty": "3", "express": True}, "Error: No match"),
    ("checkFlags", {"qty": 3, "express": "True"}, "Error: No match"),
    # list_find: arg_parse str_then_quotes_to_json, wrap_list, on_missing with {value}
    (
        "findOwner",
        {"order_id": "O-1", "owners": [{"name": "Ann"}]},
        '{"owner": [{"name": "Ann", "id": 1}]}',
    ),
    (
        "findOwner",
        {"order_id": "O-1", "owners": "[{'name': 'Ann', 'id': 9}]"},
        '{"owner": [{"name": "Ann", "id": 1}]}',
    ),
    (
        "findOwner",
        {"order_id": "O-1", "owners": [{"name": "Zed"}]},
        "Error: Owner 'Zed' not found for O-1",
    ),
    ("findOwner", {"order_id": "O-1", "owners": []}, "Error: list index out of range"),
    ("findOwner", {"order_id": "O-1", "owners": [{"id": 1}]}, "Error: 'name'"),
    (
        "findOwner",
        {"order_id": "O-1", "owners": [{"name": "O'Neil"}]},
        "Error: Expecting ',' delimiter: line 1 column 14 (char 13)",
    ),
    # list_find without arg_parse, wrap_list or on_missing
    (
        "findOwnerPlain",
        {"order_id": "O-2", "owner": {"name": "Bob"}},
        '{"owner": {"name": "Bob", "id": 2}}',
    ),
    ("findOwnerPlain", {"order_id": "O-2", "owner": {"name": "Zed"}}, '{"owner": null}'),
    (
        "findOwnerPlain",
        {"order_id": "O-2", "owner": "Bob"},
        "Error: string indices must be integers, not 'str'",
    ),
    # post_checks arg_equals_column, parsing both sides (the O-3 cell holds a quoted literal)
    (
        "itemsCheck",
        {"order_id": "O-1", "items": [{"sku": "A1", "state": "ok"}]},
        '{"checked": true}',
    ),
    (
        "itemsCheck",
        {"order_id": "O-1", "items": "[{'sku': 'A1', 'state': 'ok'}]"},
        '{"checked": true}',
    ),
    ("itemsCheck", {"order_id": "O-3", "items": ["q"]}, '{"checked": true}'),
    (
        "itemsCheck",
        {"order_id": "O-1", "items": [{"sku": "A1"}]},
        "Error: Incorrect items: [{'sku': 'A1'}]",
    ),
    (
        "itemsCheck",
        {"order_id": "O-1", "items": "[oops"},
        "Error: '[' was never closed (<unknown>, line 1)",
    ),
    (
        "itemsCheck",
        {"order_id": "O-1", "items": "oops"},
        "Error: malformed node or string on line 1: <ast.Name object>",
    ),
    # constant kind: regex_match then if_field
    ("checkCode", {"code": "AB1"}, '{"valid": true, "reason": "good"}'),
    ("checkCode", {"code": "ab1"}, '{"valid": false, "reason": "bad"}'),
    ("checkCode", {"code": 5}, "Error: expected string or bytes-like object, got 'int'"),
    # stub kind: null shape, not_none, reject_unknown false; object stub with defaults
    ("setFlag", {"flag": None}, "Error: flag is required"),
    ("setFlag", {"flag": False}, "null"),
    ("setFlag", {"flag": 1, "anything": 2}, "null"),
    ("stubEcho", {}, '{"level": 1, "list": [1, 2]}'),
    ("stubEcho", {"level": 3}, '{"level": 3, "list": [1, 2]}'),
    # invalid kind: advertised, always an error
    ("legacyTool", {"order_id": "O-1"}, "Error: legacyTool was removed upstream"),
    # unlisted tools are callable
    ("secretStatus", {"order_id": "O-1"}, '"shipped"'),
]


@pytest.mark.parametrize(("name", "args", "expected"), CASES)
def test_behavior_tool__renders_results_and_errors_exactly(env, name, args, expected):
    assert call(env, name, **args) == expected


def test_behavior_tool__unknown_tool_is_an_error_listing_only_advertised_tools(env):
    text = call(env, "noSuchTool", order_id="O-1")
    assert text.startswith("Error: Tool 'noSuchTool' not found. Available tools: getOrder, ")
    assert "secretStatus" not in text and "legacyTool" in text


def test_behavior_tool__schemas_are_advertised_but_not_enforced(env):
    # The toolspec says order_id matches "^X$"; upstream never enforced schemas.
    _, info = env.reset(options={"task_index": 0})
    assert info["tools"][0]["function"]["parameters"]["properties"]["order_id"]["pattern"] == "^X$"
    assert call(env, "getStatus", order_id="O-1") == '"shipped"'
    _, _, _, _, info = env.step('<tool_call>{"name": "getStatus", "arguments": [1]}</tool_call>')
    assert info["tool_calls"][0]["error"].startswith("malformed tool call")


def test_bind__three_missing_arguments_read_like_python():
    params = {"required": ["a", "b", "c"], "optional": {"d": 0}, "reject_unknown": True}
    with pytest.raises(
        Exception, match=r"^f\(\) missing 3 required positional arguments: 'a', 'b', and 'c'$"
    ):
        bind("f", params, {})
    assert bind("f", params, {"a": 1, "b": 2, "c": 3}) == {"d": 0, "a": 1, "b": 2, "c": 3}


def test_behavior_tool__a_result_json_cannot_hold_is_the_calls_error():
    table = Table("t", ["k", "v"], {"k": "str", "v": "str"}, [["a", "{1, 2}"]])
    spec = validate_tool(
        {
            "kind": "lookup",
            "params": {"required": ["k"]},
            "lookup": {
                "table": "t",
                "match": [{"column": "k", "arg": "k"}],
                "on_none": {"error": "none"},
                "on_multiple": "first",
            },
            "returns": {"shape": "scalar", "field": {"column": "v", "cast": "pyliteral_if_str"}},
        },
        "$.tools.x",
        {"t": table},
    )
    tool = BehaviorTool("x", spec, {"t": table})
    with pytest.raises(Exception, match="^Object of type set is not JSON serializable$"):
        tool(k="a")
