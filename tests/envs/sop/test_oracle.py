"""The oracle plays the plan as real tool calls, checks every expectation, and scores 100%."""

import json
import math

import pytest

from mtrl_envs.sop import SopEnv, SopSuite
from mtrl_envs.sop.oracle import batches, condition_holds
from mtrl_gym import play
from tests.envs.sop.synthetic import build_suite

NAN = float("nan")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return SopSuite.load(build_suite(tmp_path_factory.mktemp("oracle") / "suite"))


@pytest.mark.parametrize("tool_format", ["hermes", "json", "react"])
def test_oracle__scores_every_row_in_every_format(suite, tool_format):
    env = SopEnv(suite, tool_format=tool_format)
    for index in range(len(env.tasks())):
        record = play(env, seed=None, options={"task_index": index}, oracle=True)
        last = record[-1]
        assert last["terminated"] and last["reward"] == 1.0, (index, last["info"]["eval"])
        assert last["info"]["eval"]["success"] and last["info"]["status"] == "ok"
    env.close()


def test_oracle__sends_plan_arguments_and_batches_independent_calls(suite):
    env = SopEnv(suite)
    record = play(env, seed=None, options={"task_index": 2}, oracle=True)
    calls = [
        [(c["name"], c["arguments"]) for c in step["info"]["tool_calls"]] for step in record[1:]
    ]
    assert [len(c) for c in calls] == [1, 8, 5, 0]  # 8 = the most calls a message may carry
    flat = dict(call for message in calls for call in message)
    assert flat["getDetails"] == {"order_id": "O-3"}  # out: getOrder's "id"
    assert flat["checkQty"] == {"order_id": "O-3", "qty": 5}  # input_parsed pyliteral
    assert flat["itemsCheck"]["items"] == "\"['q']\""  # hidden: the raw cell
    assert flat["findOwner"]["owners"] == [{"name": "Ann"}]  # const
    assert flat["byRegion"] == {"region": "nan"}  # input: NaN as presented
    assert flat["setFlag"] == {"flag": False}  # hidden bool
    assert flat["checkCode"] == {"code": "in-progress"}  # out with key null: the whole result
    assert (
        record[-1]["action"] == '<final_output>{"status": "in-progress", "ok": null}</final_output>'
    )
    errors = {c["name"] for s in record[1:] for c in s["info"]["tool_calls"] if c["error"]}
    assert errors == {"getScoreStrict", "findOwner", "byRegion", "getMetrics", "legacyTool"}


def test_batches__split_on_dependencies_and_size():
    def step(tool, *needs):
        return {"tool": tool, "args": {n: {"out": n} for n in needs}}

    steps = [step("a"), step("b", "a"), step("c"), step("d", "c"), step("e", "a"), step("f")]
    tools = [[s["tool"] for s in b] for b in batches(steps, max_calls=8)]
    assert tools == [["a"], ["b", "c"], ["d", "e", "f"]]
    assert [[s["tool"] for s in b] for b in batches(steps, max_calls=1)] == [[t] for t in "abcdef"]


def test_condition_holds__python_truthiness_and_nan():
    row = {"flag": False, "gap": NAN, "name": "x"}
    assert condition_holds({"row_truthy": "gap"}, row)  # NaN is truthy in Python
    assert condition_holds({"row_isna": "gap"}, row) and not condition_holds(
        {"row_notna": "gap"}, row
    )
    assert condition_holds({"row_ne": ["name", "y"]}, row) and not condition_holds(
        {"row_ne": ["name", "x"]}, row
    )
    assert condition_holds({"not": {"all": [{"row_truthy": "flag"}, {"row_notna": "name"}]}}, row)


def oracle_error(tmp_path, edit, index):
    env = SopEnv(build_suite(tmp_path / "s", edit=edit))
    with pytest.raises(AssertionError) as info:
        play(env, seed=None, options={"task_index": index}, oracle=True)
    return str(info.value)


def test_oracle__an_outcome_against_expect_is_an_assertion_error(tmp_path):
    def expect_error(b):
        b["oracle_plan"][0]["expect"] = "error"

    message = oracle_error(tmp_path / "a", expect_error, 0)
    assert message.startswith("oracle on task '0': getOrder({'order_id': 'O-1'}) expected an error")
    assert 'got result \'{"id": "O-1"' in message

    def expect_ok(b):
        b["oracle_plan"][4]["expect"] = "ok"

    message = oracle_error(tmp_path / "b", expect_ok, 1)
    assert (
        "getScoreStrict({'order_id': 'O-2'}) expected a result, got error 'cannot convert"
        in message
    )


def test_oracle__using_the_result_of_a_failed_call_is_an_assertion_error(tmp_path):
    def edit(b):
        b["oracle_plan"].append(
            {"tool": "stubEcho", "args": {"level": {"out": "findOwner", "key": "owner"}}}
        )

    assert "needs a result of findOwner, which has none" in oracle_error(tmp_path, edit, 1)


def test_oracle__absent_without_a_plan(tmp_path):
    env = SopEnv(build_suite(tmp_path / "s", edit=lambda b: b.pop("oracle_plan")))
    env.reset(seed=0)
    assert env.oracle_policy() is None


def test_oracle__answer_is_the_rows_outputs_as_json(suite):
    env = SopEnv(suite)
    record = play(env, seed=None, options={"task_index": 0}, oracle=True)
    answer = record[-1]["action"].removeprefix("<final_output>").removesuffix("</final_output>")
    assert json.loads(answer) == {"status": "shipped", "ok": True}


def _nan_flows_into_a_truthy_check(b):
    # getDetails returns score_nan = NaN for O-2 (empty score); stubEcho now requires a truthy
    # level and echoes it back. NaN is truthy in Python, so upstream passes the check.
    b["tools"]["stubEcho"]["validate"] = [
        {"rule": "truthy", "args": ["level"], "error": "Missing level"}
    ]
    b["oracle_plan"][-1] = {
        "tool": "stubEcho",
        "args": {"level": {"out": "getDetails", "key": "score_nan"}},
    }


@pytest.mark.parametrize("tool_format", ["hermes", "json", "react"])
def test_oracle__copies_a_nan_result_value_as_nan_past_a_truthy_check(tmp_path, tool_format):
    env = SopEnv(
        build_suite(tmp_path / "s", edit=_nan_flows_into_a_truthy_check), tool_format=tool_format
    )
    record = play(env, seed=None, options={"task_index": 1}, oracle=True)  # O-2: empty score
    details = [c for s in record[1:] for c in s["info"]["tool_calls"] if c["name"] == "getDetails"]
    assert '"score_nan": NaN' in details[0]["result"]  # the text the agent reads
    (step,) = [s for s in record[1:] if "stubEcho" in s["action"]]
    # The call text carries the token as read: a bare NaN, which the JSON parser reads back as
    # the float NaN, not null (which would fail the truthy check).
    assert "NaN" in step["action"] and "null" not in step["action"]
    (echo,) = [c for c in step["info"]["tool_calls"] if c["name"] == "stubEcho"]
    assert echo["error"] is None and math.isnan(echo["arguments"]["level"])
    assert echo["result"] == '{"level": NaN, "list": [1, 2]}'
    assert record[-1]["reward"] == 1.0
    env.close()
