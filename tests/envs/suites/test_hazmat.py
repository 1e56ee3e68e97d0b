"""The hazmat SOP, re-implemented from sop.txt as a scripted agent, reproduces every answer."""

import collections

import pytest

from tests.envs.suites.replay import Agent, ToolError, load

CLAUSES = {"a", "b", "c", "d", "e"}  # step 2's classification rules
AIR_RULES = {"not_regulated", "uncertified", "passenger_ok", "cargo_only", "over_cargo_limit"}


def classify(data: dict) -> tuple[str, str]:
    """Step 2 of sop.txt; returns (clause letter, hazard class)."""
    if data["contains_lithium_cells"]:
        return "a", "class_9"
    if data["is_compressed_gas"]:
        return "b", "class_2"
    if data["flash_point_c"] is not None and data["flash_point_c"] <= 60.0:
        return "c", "class_3"
    ph = data["ph"]
    if ph is not None and (ph <= 2.0 or ph >= 12.5):
        return "d", "class_8"
    return "e", "not_regulated"


def solve(agent: Agent) -> tuple[str, str, dict]:
    """Follows sop.txt; returns (clause, air rule, answer)."""
    data = agent.call_fixing_format("get_safety_data", "product_code", agent.inputs["product_ref"])
    clause, hazard_class = classify(data)
    limits = agent.call("get_transport_limits", hazard_class=hazard_class)

    def answer(air: str) -> dict:
        return {"hazard_class": hazard_class, "air_transport": air}

    if hazard_class == "not_regulated":
        return clause, "not_regulated", answer("passenger_and_cargo")
    if limits["requires_certified_packaging"]:
        packaging = agent.call("check_packaging", packaging_code=agent.inputs["packaging_code"])
        if not packaging["un_certified"]:
            return clause, "uncertified", answer("forbidden")
    quantity = float(agent.inputs["net_quantity_kg"])
    if quantity <= limits["passenger_aircraft_max_kg"]:
        return clause, "passenger_ok", answer("passenger_and_cargo")
    if quantity <= limits["cargo_aircraft_max_kg"]:
        return clause, "cargo_only", answer("cargo_only")
    return clause, "over_cargo_limit", answer("forbidden")


def test_hazmat__reference_procedure_reproduces_every_answer():
    suite = load("hazmat")
    clauses, air_rules = collections.Counter(), collections.Counter()
    for row in suite.rows:
        agent = Agent(suite, row)
        clause, air_rule, answer = solve(agent)
        assert answer == {c: row[c] for c in suite.output_columns}, row["id"]
        assert air_rule == row["rule"], row["id"]
        assert agent.recovered == row["product_ref_is_messy"]
        assert 2 <= len(agent.calls) <= 6
        clauses[clause] += 1
        air_rules[air_rule] += 1
    assert set(clauses) == CLAUSES and set(air_rules) == AIR_RULES


def test_hazmat__rule_order_and_limits_are_exercised():
    rows = load("hazmat").rows
    flammable = [r for r in rows if r["flash_point_c"] is not None and r["flash_point_c"] <= 60]
    # Earlier clauses win over a flammable liquid, and flammable wins over corrosive.
    assert {r["hazard_class"] for r in flammable} >= {"class_9", "class_2", "class_3"}
    assert any(
        r["hazard_class"] == "class_3" and r["ph"] is not None and r["ph"] <= 2 for r in rows
    )
    # Class 9 does not need certified packaging: some fly in uncertified boxes.
    assert any(r["hazard_class"] == "class_9" and not r["un_certified"] for r in rows)
    at_limit = [r for r in rows if r["net_quantity_kg"] == r["passenger_aircraft_max_kg"]]
    assert any(r["air_transport"] == "passenger_and_cargo" for r in at_limit)
    assert any(r["flash_point_c"] == 60.0 and r["hazard_class"] == "class_3" for r in rows)


def test_hazmat__a_wrongly_spelled_class_gets_a_helpful_error():
    suite = load("hazmat")
    agent = Agent(suite, suite.rows[0])
    with pytest.raises(ToolError, match="class_2, class_3, class_8, class_9, not_regulated"):
        agent.call("get_transport_limits", hazard_class="Class 3")
