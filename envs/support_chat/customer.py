"""SupportChat's customers: seeded scenarios and a scripted customer who answers only what is asked.

A scenario is one customer with one order (among decoy orders of other customers) and one request.
Its *kind* fixes what the policy in :data:`SYSTEM` demands:

================  ==========================================  ================================
kind              the order                                   resolution
================  ==========================================  ================================
status            processing or shipped                       answer the status
refund            delivered <= 30 days ago, item damaged      answer a refund of the amount
refund_late       delivered 31-90 days ago, item damaged      transfer to a human
cancel            processing                                  answer the cancellation
cancel_shipped    shipped or delivered                        transfer to a human
================  ==========================================  ================================

:func:`customer_reply` is the scripted user (a function of the conversation only, so it is
reproducible and needs no per-episode state). The customer's opening message says nothing useful;
they give their order number, their email and their request each only when the agent's latest
message asks for it, and give up (ending the conversation) after three messages they cannot
answer.

Non-goals: free-form customer language (the customer recognises a few phrasings of each question;
the system prompt says what to ask), and negotiation (a customer never argues with a transfer).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mtrl_gym import Task, UserReply

KINDS = ("status", "refund", "refund_late", "cancel", "cancel_shipped")

OPENING = "Hi, I need some help with an order."
CONFUSED = "Sorry, I'm not sure what you mean. Can you help me with my order?"
GIVE_UP = "Never mind, I'll call the shop instead. Bye."
PATIENCE = 3  # messages the customer cannot answer before giving up

SYSTEM = """You are a support agent for an online shop, chatting with a customer. A message with
neither a tool call nor a final answer is sent to the customer, and their reply comes back as the
next message. Customers only tell you what you ask them for.

Procedure:
1. Ask the customer for their order number, the email address on the order, and what they need.
2. Look the order up with lookup_order(order_id, email).
3. Resolve the request by the order's details:
   - "where is my order": answer {"order_id": ..., "action": "status", "status": <the status>}.
   - a refund for a damaged item: allowed only if the order is "delivered" and was delivered at
     most 30 days ago; answer {"order_id": ..., "action": "refund", "amount": <the amount>}.
   - a cancellation: allowed only while the order is "processing"; answer
     {"order_id": ..., "action": "cancel"}.
   - anything the rules above do not allow (a late refund, cancelling a shipped order): call
     transfer_to_human(reason) instead of answering.
Answer with <final_output>{...}</final_output>."""

_REQUESTS = {
    "status": "I haven't received my order yet. Where is it?",
    "refund": "One of the items arrived broken. I'd like a refund, please.",
    "refund_late": "One of the items arrived broken. I'd like a refund, please.",
    "cancel": "I'd like to cancel my order, please.",
    "cancel_shipped": "I'd like to cancel my order, please.",
}
_FIRST = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun")
_LAST = ("Silva", "Okafor", "Novak", "Kim", "Larsen", "Moreau", "Tanaka", "Weber")
_ITEMS = ("desk lamp", "kettle", "backpack", "headphones", "mug set", "rain jacket", "blender")

# What the customer recognises as a question for each fact (on the lower-cased message).
_ASKS = {
    "order_id": re.compile(r"order\s*(?:id|number|no\.?|#)"),
    "email": re.compile(r"e-?mail"),
    "request": re.compile(
        r"how can i help|what can i (?:do|help)|what do you need"
        r"|what (?:is|was) the (?:issue|problem)|what(?:'s| is) wrong|what happened"
        r"|help you with|your (?:issue|problem|request)"
    ),
}


def _order(rng: random.Random, order_id: str, email: str, status: str, days: int | None) -> dict:
    return {
        "order_id": order_id,
        "email": email,
        "status": status,
        "items": sorted(rng.sample(_ITEMS, rng.randint(1, 3))),
        "amount": round(rng.randint(1500, 25000) / 100, 2),
        "delivered_days_ago": days,
    }


def _order_for(kind: str, rng: random.Random, order_id: str, email: str) -> dict[str, Any]:
    if kind in ("status", "cancel_shipped"):
        status = rng.choice(("processing", "shipped") if kind == "status" else ("shipped",))
        if kind == "cancel_shipped" and rng.random() < 0.5:
            return _order(rng, order_id, email, "delivered", rng.randint(1, 60))
        return _order(rng, order_id, email, status, None)
    if kind == "cancel":
        return _order(rng, order_id, email, "processing", None)
    days = rng.randint(1, 30) if kind == "refund" else rng.randint(31, 90)
    return _order(rng, order_id, email, "delivered", days)


def _answer(kind: str, order: Mapping[str, Any]) -> dict[str, Any]:
    if kind in ("refund_late", "cancel_shipped"):
        return {"action": "transfer"}
    answer: dict[str, Any] = {"order_id": order["order_id"], "action": kind}
    if kind == "status":
        answer["status"] = order["status"]
    elif kind == "refund":
        answer["amount"] = order["amount"]
    return answer


def make_task(task_id: str, seed: int, kind: str) -> Task:
    """One seeded scenario of ``kind`` as a task (the order table lives in its metadata)."""
    rng = random.Random(seed)
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    email = f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@example.com"
    ids = [f"O-{n}" for n in rng.sample(range(1000, 9999), 4)]
    order = _order_for(kind, rng, ids[0], email)
    decoys = [
        _order(rng, oid, f"customer{rng.randint(100, 999)}@example.com", "shipped", None)
        for oid in ids[1:]
    ]
    request = _REQUESTS[kind]
    customer = {"name": f"{first} {last}", "order_id": ids[0], "email": email, "request": request}
    instructions = (
        f"You are {first} {last}, a customer of an online shop. {request} Your order number is "
        f"{ids[0]} and the email on the order is {email}. Give your order number, your email or "
        "your request only when the agent asks for it."
    )
    return Task(
        id=task_id,
        prompt=OPENING,
        system=SYSTEM,
        answer=_answer(kind, order),
        metadata={
            "kind": kind,
            "customer": customer,
            "orders": sorted([order, *decoys], key=lambda o: o["order_id"]),
            "user_instructions": instructions,
        },
    )


def customer_reply(conversation: Sequence[Mapping[str, str]], task: Task) -> UserReply:
    """The scripted customer: tells what the agent's latest message asks for, nothing more."""
    facts = task.metadata["customer"]
    asked = conversation[-1]["content"].lower() if conversation else ""
    said = []
    if _ASKS["order_id"].search(asked):
        said.append(f"My order number is {facts['order_id']}.")
    if _ASKS["email"].search(asked):
        said.append(f"The email on the order is {facts['email']}.")
    if _ASKS["request"].search(asked):
        said.append(facts["request"])
    if said:
        return UserReply(" ".join(said))
    confused = sum(m["role"] == "user" and m["content"] == CONFUSED for m in conversation)
    if confused + 1 >= PATIENCE:
        return UserReply(GIVE_UP, done=True)
    return UserReply(CONFUSED)
