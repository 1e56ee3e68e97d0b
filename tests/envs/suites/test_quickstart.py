"""The quickstart suite is tiny by design and its SOP reproduces every answer."""

import collections
import json

from tests.envs.suites.replay import Agent, call_tool, load


def solve(agent: Agent) -> dict:
    parcel = agent.call("get_parcel", parcel_id=agent.inputs["parcel"])
    if parcel["status"] == "lost":
        return {"action": "refund"}
    if parcel["status"] == "late":
        tier = agent.call("get_user", user_id=parcel["user"])["tier"]
        return {"action": "credit" if tier == "gold" else "sorry"}
    return {"action": "wait"}


def test_quickstart__reference_procedure_reproduces_every_answer():
    suite = load("quickstart")
    for row in suite.rows:
        agent = Agent(suite, row)
        assert solve(agent) == {"action": row["action"]}, row["id"]
        assert 1 <= len(agent.calls) <= 3 and not any(error for *_, error in agent.calls)


def test_quickstart__is_small_enough_for_a_tiny_model():
    suite = load("quickstart")
    assert len(suite.text["sop.txt"].splitlines()) <= 8
    assert suite.output_columns == ["action"]
    counts = collections.Counter(row["action"] for row in suite.rows)
    assert len(counts) <= 4 and max(counts.values()) <= 0.3 * len(suite.rows)
    assert all(len(row["id"]) <= 5 and len(row["parcel"]) <= 5 for row in suite.rows)
    row = suite.rows[0]
    longest = max(
        len(json.dumps(call_tool(suite, "get_parcel", {"parcel_id": r["parcel"]})))
        for r in suite.rows
    )
    assert (
        longest <= 40
        and len(json.dumps(call_tool(suite, "get_user", {"user_id": row["user"]}))) <= 20
    )
