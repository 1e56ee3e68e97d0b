import json

import pytest

from mtrl_gym import Recording, ToolError, canonical_json, replay_tools
from mtrl_gym.replay import Outcome

SCHEMA = {
    "type": "function",
    "function": {
        "name": "get_user",
        "description": "Fetch a user.",
        "parameters": {
            "type": "object",
            "properties": {
                "user_id": {"type": "integer"},
                "verbose": {"type": "boolean"},
                "fields": {"type": "array"},
            },
            "required": ["user_id"],
        },
    },
}


def test_canonical_json__key_order_and_spacing_do_not_matter():
    assert (
        canonical_json({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == '{"a":{"c":"é","d":[1,2]},"b":1}'
    )


def test_from_jsonl__responses_errors_and_sequences(tmp_path):
    path = tmp_path / "rec.jsonl"
    rows = [
        {
            "tool": "get_user",
            "arguments": {"user_id": 1, "verbose": True},
            "response": {"name": "Ada"},
        },
        {"tool": "get_user", "arguments": {"user_id": 2}, "error": "user 2 is suspended"},
        {
            "tool": "get_user",
            "arguments": {"user_id": 3},
            "sequence": [{"error": "busy, retry"}, {"response": "ok"}],
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    rec = Recording.from_jsonl(path)
    assert len(rec) == 3 and rec.tools() == {"get_user"}
    state = rec.new_episode()
    (tool,) = replay_tools([SCHEMA], state)
    assert tool(verbose=True, user_id=1) == {"name": "Ada"}  # argument order is irrelevant
    with pytest.raises(ToolError, match="user 2 is suspended"):
        tool(user_id=2)
    with pytest.raises(ToolError, match="busy, retry"):
        tool(user_id=3)
    assert tool(user_id=3) == "ok"
    assert tool(user_id=3) == "ok"  # the last outcome repeats
    with pytest.raises(
        ToolError, match=r'no record found for get_user with arguments \{"user_id":9\}'
    ):
        tool(user_id=9)
    # A new episode starts the call counters again.
    (fresh,) = replay_tools([SCHEMA], rec.new_episode())
    with pytest.raises(ToolError, match="busy"):
        fresh(user_id=3)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"arguments": {}}', "string 'tool'"),
        ('{"tool": "t", "arguments": [], "response": 1}', "'arguments' must be an object"),
        ('{"tool": "t", "response": 1, "error": "x"}', "exactly one of"),
        ('{"tool": "t", "sequence": []}', "non-empty list"),
    ],
)
def test_from_jsonl__bad_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"tool": "t", "response": 0}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{message}"):
        Recording.from_jsonl(path)


def test_add__duplicates_are_errors():
    rec = Recording()
    rec.add("t", {"a": 1, "b": 2}, Outcome(response=1))
    with pytest.raises(ValueError, match="duplicate recording"):
        rec.add("t", {"b": 2, "a": 1}, Outcome(response=2))


def test_from_csv__arguments_typed_by_schema(tmp_path):
    path = tmp_path / "users.csv"
    path.write_text(
        "user_id,verbose,fields,response,error\n"
        '1,true,"[""a""]","{""name"": ""Ada""}",\n'
        "2,false,,plain text,\n"
        '3,,,,"user 3 not found"\n'
    )
    rec = Recording.from_csv(path, tool="get_user", parameters=SCHEMA["function"]["parameters"])
    state = rec.new_episode()
    assert state.call("get_user", {"user_id": 1, "verbose": True, "fields": ["a"]}) == {
        "name": "Ada"
    }
    assert state.call("get_user", {"user_id": 2, "verbose": False}) == "plain text"
    with pytest.raises(ToolError, match="user 3 not found"):
        state.call("get_user", {"user_id": 3})
    with pytest.raises(ToolError, match="no record found"):
        state.call("get_user", {"user_id": "1", "verbose": True, "fields": ["a"]})  # wrong type


def test_from_csv__bad_cells_are_clear_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user_id,response\nabc,1\n")
    with pytest.raises(ValueError, match=r"bad.csv:2:user_id: cannot read 'abc' as integer"):
        Recording.from_csv(path, tool="get_user", parameters=SCHEMA["function"]["parameters"])
    path.write_text("user_id\n1\n")
    with pytest.raises(ValueError, match="missing response column"):
        Recording.from_csv(path, tool="get_user", parameters=SCHEMA["function"]["parameters"])
