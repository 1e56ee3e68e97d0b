"""The routing SOP, re-implemented from sop.txt as a scripted agent, reproduces every answer."""

import collections

from tests.envs.suites.replay import Agent, load

IMPACT = {"organization": 2, "team": 3, "single_user": 4}  # step 6a of sop.txt
QUEUES = {"billing": "billing", "technical": "tech_support", "account_access": "accounts"}


def solve(agent: Agent) -> tuple[set[str], dict]:
    """Follows sop.txt; returns (the branches taken, the answer)."""
    ticket = agent.call_fixing_format("get_ticket", "ticket_id", agent.inputs["ticket_ref"])
    account = agent.call("get_account", account_id=ticket["account_id"])
    if ticket["category"] == "security":
        return {"security"}, {"queue": "security", "priority": "P1"}
    if ticket["category"] == "technical":
        incidents = agent.call(
            "check_incidents", product=ticket["product"], region=account["region"]
        )
        if incidents["incident_open"]:
            return {"active_incident"}, {"queue": "incident_response", "priority": "P2"}
    queue = QUEUES[ticket["category"]]
    sla = agent.call("get_sla_policy", plan=account["plan"])
    breached = ticket["hours_open"] > sla["response_target_hours"]
    number = IMPACT[ticket["impact"]] - sla["priority_boost"] - (1 if breached else 0)
    branches = {queue, *(["sla_breached"] if breached else []), f"boost_{sla['priority_boost']}"}
    if number < 1:
        branches.add("floor")
    return branches, {"queue": queue, "priority": f"P{max(number, 1)}"}


def test_routing__reference_procedure_reproduces_every_answer():
    suite = load("routing")
    branches = collections.Counter()
    for row in suite.rows:
        agent = Agent(suite, row)
        taken, answer = solve(agent)
        assert answer == {c: row[c] for c in suite.output_columns}, row["id"]
        assert row["rule"] in taken, row["id"]
        assert agent.recovered == row["ticket_ref_is_messy"]
        assert 2 <= len(agent.calls) <= 6
        branches.update(taken)
    expected = {"security", "active_incident", *QUEUES.values()}
    assert set(branches) == expected | {"sla_breached", "boost_0", "boost_1", "floor"}


def test_routing__incidents_only_redirect_technical_tickets():
    rows = load("routing").rows
    assert any(r["incident_open"] and r["category"] == "billing" for r in rows)
    assert any(r["hours_open"] == r["response_target_hours"] for r in rows)  # not yet breached
    accounts = collections.Counter(r["account_id"] for r in rows)
    assert max(accounts.values()) > 1  # accounts recur, so get_account is a shared lookup
