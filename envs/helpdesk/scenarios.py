"""Customer requests for the helpdesk, each with the goal state and answer that resolve it.

A scenario is one seeded world (:mod:`mtrl_envs.helpdesk.world`) plus one open ticket. Its *kind*
fixes what the policy in :data:`SYSTEM` demands, and so the goal: which rows must change (and how)
and what the agent must report. Kinds are chosen so that the right action depends on the order's
state, and several start with a wrong-but-plausible call the system rejects:

==============================  =====================================  =========================
kind                            the order                              resolution
==============================  =====================================  =========================
status_inquiry[_by_email]       any open status                        close "answered"
address_change                  processing, valid new address          update, close
address_change_bad_postcode     processing, postcode mis-typed         fix postcode, update
address_change_shipped          shipped (update is rejected)           escalate to shipping
refund_damaged[_by_email]       delivered, line <= $200                refund line, close
refund_in_transit               shipped (refund is rejected)           escalate to shipping
refund_over_limit               delivered, line > $200 (rejected)      escalate to billing
refund_duplicate                delivered, already refunded (rejected) close "declined"
==============================  =====================================  =========================

"_by_email" requests name no order: the agent must find the customer's most recent order.

:func:`oracle_script` is the scripted agent for these requests. It knows what a careful human
reads from the ticket (the kind, the order id or email, the address as written, the damaged item)
and nothing of the goal state, and acts as a plausible first attempt would: it submits the
address as written and asks for the refund before knowing whether the order qualifies, then
reacts to the system's answer. Its episodes therefore show the recovery the tasks are built for.

Non-goals: free-form customer language (two phrasings per kind keep grading exact), and an
oracle robust to tool failures the tasks never produce.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtrl_envs.helpdesk.world import (
    CATALOG,
    EXPENSIVE_ITEMS,
    REFUND_LIMIT_CENTS,
    SUBJECTS,
    TODAY,
    IdPool,
    World,
    add_order,
    random_address,
    random_items,
    random_world,
)
from mtrl_gym.formats import ToolCallFormat

KINDS = (
    "status_inquiry",
    "status_inquiry_by_email",
    "address_change",
    "address_change_bad_postcode",
    "address_change_shipped",
    "refund_damaged",
    "refund_damaged_by_email",
    "refund_in_transit",
    "refund_over_limit",
    "refund_duplicate",
)

SYSTEM = f"""You are a helpdesk agent for an online shop. Today is {TODAY.isoformat()}. Resolve the
customer's ticket with the tools, following this policy exactly.

1. Find the order. Use the order id the customer gives. If they give none, look the customer up
   by email (find_customer) and use their most recent order.
2. Status questions: read the order's status, then close the ticket with resolution "answered".
3. Address changes: submit the new address the customer gives with update_shipping_address. If
   the system rejects a field's format, correct the format and submit again. Addresses can only
   change while the order is "processing"; if it has shipped, escalate the ticket to the
   "shipping" team instead. After a successful change, close the ticket as "address_changed".
4. Refunds for damaged items: refund the affected order line (unit price x quantity) with
   issue_refund, then close the ticket as "refund_issued". Only delivered orders can be
   refunded: for an order still in transit, escalate to "shipping". Refunds above
   ${REFUND_LIMIT_CENTS // 100} need approval: escalate to "billing". An order is never refunded
   twice: if it already has a refund, close the ticket as "declined".
5. Change nothing else. An escalated ticket belongs to that team: do not close it.

When you are done, answer with <final_output>{{...}}</final_output> holding "outcome" (the
resolution you closed the ticket with, or "escalated"), "order_id", and also "order_status" for
status questions, "refund_amount" (in dollars) for refunds, "team" for escalations."""

_STATUS = {
    "status_inquiry": None,
    "status_inquiry_by_email": None,
    "address_change": "processing",
    "address_change_bad_postcode": "processing",
    "address_change_shipped": "shipped",
    "refund_damaged": "delivered",
    "refund_damaged_by_email": "delivered",
    "refund_in_transit": "shipped",
    "refund_over_limit": "delivered",
    "refund_duplicate": "delivered",
}


@dataclass(frozen=True)
class Scenario:
    """A world with one open ticket, and what resolving that ticket means.

    Attributes:
        world: Every row of the episode's initial database.
        ticket_id: The ticket the agent must resolve.
        prompt: The ticket as the agent reads it.
        answer: The expected final answer.
        changes: The goal, as changes to the initial state (see ``world.apply_changes``).
        hints: What the oracle "understands" from the ticket text (kind, ids, address, sku).
    """

    world: World
    ticket_id: str
    prompt: str
    answer: dict[str, Any]
    changes: list[dict[str, Any]]
    hints: dict[str, Any]


def mistype_postcode(postcode: str) -> str:
    """How customers write postcodes the system rejects: lower case, the space dropped."""
    return postcode.replace(" ", "").lower()


def _close(ticket_id: str, resolution: str) -> dict[str, Any]:
    return {
        "op": "update",
        "table": "tickets",
        "key": {"ticket_id": ticket_id},
        "set": {"status": "closed", "resolution": resolution},
    }


def _escalate(ticket_id: str, team: str) -> list[dict[str, Any]]:
    return [
        {"op": "insert", "table": "escalations", "row": {"ticket_id": ticket_id, "team": team}},
        {
            "op": "update",
            "table": "tickets",
            "key": {"ticket_id": ticket_id},
            "set": {"status": "escalated"},
        },
    ]


def _order_lines(kind: str, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The target order's lines; the first line is the one a refund request is about."""
    lines = random_items(rng)
    if kind == "refund_over_limit":
        expensive = EXPENSIVE_ITEMS[int(rng.integers(len(EXPENSIVE_ITEMS)))]
        lines = [(expensive, 1), *lines[:1]]
    return lines


def build_scenario(seed: int, kind: str) -> Scenario:
    """The scenario of ``kind`` drawn from ``seed`` (the same arguments give the same rows)."""
    if kind not in KINDS:
        raise ValueError(f"unknown scenario kind {kind!r}; known: {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    ids = IdPool(rng)
    world = random_world(rng, ids)
    customers = world.rows("customers")
    customer = customers[int(rng.integers(len(customers)))]
    status = _STATUS[kind] or ("processing", "shipped", "delivered")[int(rng.integers(3))]
    # One to nine days old, while background orders are at least ten: the target is always the
    # customer's most recent order, which "_by_email" requests rely on.
    order = add_order(
        world,
        rng,
        order_id=ids.take("O-"),
        customer_id=customer["customer_id"],
        status=status,
        placed_on=TODAY - dt.timedelta(days=int(rng.integers(1, 10))),
        items=_order_lines(kind, rng),
    )
    order_id = order["order_id"]
    line = [r for r in world.rows("order_items") if r["order_id"] == order_id][0]
    line_cents = line["quantity"] * line["unit_price_cents"]
    ticket_id = ids.take("T-")
    world.rows("tickets").append(
        {
            "ticket_id": ticket_id,
            "customer_id": customer["customer_id"],
            "order_id": None,
            "subject": SUBJECTS[int(rng.integers(len(SUBJECTS)))],
            "status": "open",
            "resolution": None,
        }
    )
    if kind == "refund_duplicate":
        world.rows("refunds").append(
            {
                "refund_id": ids.take("RF-"),
                "order_id": order_id,
                "amount_cents": line_cents,
                "reason": "item damaged",
            }
        )

    by_email = kind.endswith("_by_email")
    ref = "my most recent order" if by_email else f"order {order_id}"
    hints: dict[str, Any] = {
        "kind": kind,
        "ticket_id": ticket_id,
        "order_id": None if by_email else order_id,
        "email": customer["email"],
    }
    answer: dict[str, Any] = {"order_id": order_id}
    changes: list[dict[str, Any]] = []
    polite = ("Thanks!", "Thank you in advance.")[int(rng.integers(2))]

    if kind.startswith("status_inquiry"):
        message = f"Hi, could you tell me what is going on with {ref}? {polite}"
        answer |= {"outcome": "answered", "order_status": status}
        changes.append(_close(ticket_id, "answered"))
    elif kind.startswith("address_change"):
        country = ("NL", "CA")[int(rng.integers(2))] if kind.endswith("postcode") else None
        new = random_address(rng, country)
        while new["street"] == order["street"]:
            new = random_address(rng, country)
        written = dict(new)
        if kind.endswith("postcode"):
            written["postcode"] = mistype_postcode(new["postcode"])
        hints["address"] = written
        message = (
            f"Hello, please ship {ref} to my new address instead:\n"
            + "\n".join(f"  {k}: {v}" for k, v in written.items())
            + f"\n{polite}"
        )
        if kind == "address_change_shipped":
            answer |= {"outcome": "escalated", "team": "shipping"}
            changes += _escalate(ticket_id, "shipping")
        else:
            answer |= {"outcome": "address_changed"}
            changes.append(
                {"op": "update", "table": "orders", "key": {"order_id": order_id}, "set": new}
            )
            changes.append(_close(ticket_id, "address_changed"))
    elif kind == "refund_in_transit":
        message = f"{ref.capitalize()} still has not arrived. I want my money back. {polite}"
        hints["sku"] = None
        answer |= {"outcome": "escalated", "team": "shipping"}
        changes += _escalate(ticket_id, "shipping")
    else:
        name = CATALOG[[c[0] for c in CATALOG].index(line["sku"])][1]
        units = "The" if line["quantity"] == 1 else "Both units of the"
        message = f"{units} {name} from {ref} arrived damaged. Please refund it. {polite}"
        hints["sku"] = line["sku"]
        if kind == "refund_over_limit":
            answer |= {"outcome": "escalated", "team": "billing"}
            changes += _escalate(ticket_id, "billing")
        elif kind == "refund_duplicate":
            answer |= {"outcome": "declined"}
            changes.append(_close(ticket_id, "declined"))
        else:
            answer |= {"outcome": "refund_issued", "refund_amount": line_cents / 100}
            changes.append(
                {
                    "op": "insert",
                    "table": "refunds",
                    "row": {"order_id": order_id, "amount_cents": line_cents},
                }
            )
            changes.append(_close(ticket_id, "refund_issued"))

    ticket = world.find("tickets", ticket_id=ticket_id)
    prompt = (
        f"New ticket {ticket_id} from {customer['name']} <{customer['email']}>\n"
        f"Subject: {ticket['subject']}\n\n{message}"
    )
    return Scenario(world, ticket_id, prompt, answer, changes, hints)


# ---- the scripted agent -------------------------------------------------------------------------

Call = tuple[str, dict[str, Any]]
Script = Generator[Call, str, dict[str, Any]]
Policy = Callable[[str, dict[str, Any]], str]


def fix_postcode(postcode: str, country: str) -> str:
    """A postcode in the canonical format of ``country`` (capitals, the expected space)."""
    compact = postcode.replace(" ", "").upper()
    if country == "NL":
        return f"{compact[:4]} {compact[4:]}"
    if country == "CA":
        return f"{compact[:3]} {compact[3:]}"
    return compact


def _is_error(result: str) -> bool:
    return result.startswith("Error:")


def oracle_script(hints: Mapping[str, Any]) -> Script:
    """The policy for one ticket, as a generator of tool calls returning the final answer."""
    kind, ticket_id = hints["kind"], hints["ticket_id"]
    order_id = hints["order_id"]
    if order_id is None:  # "my most recent order": the customer's orders come newest first
        customer = json.loads((yield ("find_customer", {"email": hints["email"]})))
        order_id = customer["orders"][0]["order_id"]
    order = json.loads((yield ("get_order", {"order_id": order_id})))
    answer: dict[str, Any] = {"order_id": order_id}

    if kind.startswith("status_inquiry"):
        yield ("close_ticket", {"ticket_id": ticket_id, "resolution": "answered"})
        return answer | {"outcome": "answered", "order_status": order["status"]}

    if kind.startswith("address_change"):
        address = dict(hints["address"])
        result = yield ("update_shipping_address", {"order_id": order_id, **address})
        if _is_error(result) and "invalid postcode" in result:
            address["postcode"] = fix_postcode(address["postcode"], address["country"])
            result = yield ("update_shipping_address", {"order_id": order_id, **address})
        if _is_error(result):  # the order has shipped: the shipping team takes over
            note = "Customer asked for a new shipping address after the order shipped."
            yield ("escalate_ticket", {"ticket_id": ticket_id, "team": "shipping", "note": note})
            return answer | {"outcome": "escalated", "team": "shipping"}
        yield ("close_ticket", {"ticket_id": ticket_id, "resolution": "address_changed"})
        return answer | {"outcome": "address_changed"}

    # Refund requests: the affected line for a damaged item, else the whole order.
    lines = [i for i in order["items"] if i["sku"] == hints.get("sku")]
    if lines:
        cents = round(lines[0]["unit_price"] * 100) * lines[0]["quantity"]
    else:
        cents = round(order["amount"] * 100)
    arguments = {"order_id": order_id, "amount": cents / 100, "reason": "customer request"}
    result = yield ("issue_refund", arguments)
    if _is_error(result) and "already refunded" in result:
        yield ("close_ticket", {"ticket_id": ticket_id, "resolution": "declined"})
        return answer | {"outcome": "declined"}
    if _is_error(result):
        team = "billing" if "approval" in result else "shipping"
        note = f"Refund of {cents / 100:.2f} requested; the system said: {result}"
        yield ("escalate_ticket", {"ticket_id": ticket_id, "team": team, "note": note})
        return answer | {"outcome": "escalated", "team": team}
    yield ("close_ticket", {"ticket_id": ticket_id, "resolution": "refund_issued"})
    return answer | {"outcome": "refund_issued", "refund_amount": cents / 100}


def make_policy(hints: Mapping[str, Any], fmt: ToolCallFormat) -> Policy:
    """Wraps :func:`oracle_script` as a policy ``(observation, info) -> action text``.

    The script is a generator: it yields a tool call, receives the tool's result text, and
    finally returns the answer object, which keeps the branching readable top to bottom.
    """
    steps = oracle_script(hints)
    started = False

    def policy(observation: str, info: dict[str, Any]) -> str:
        nonlocal started
        try:
            if not started:
                started = True
                call = next(steps)
            else:
                results = [m for m in info.get("messages", []) if m["role"] == "tool"]
                call = steps.send(str(results[-1]["content"]) if results else "")
        except StopIteration as done:
            return f"<final_output>{json.dumps(done.value)}</final_output>"
        return fmt.render_calls([call])

    return policy
