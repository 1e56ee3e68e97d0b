"""Seeded generator of the ``refunds`` SOP suite (refund eligibility at an online retailer).

Run ``python -m mtrl_envs.suites.refunds.generate [--seed S] [--train N] [--val N] [--test N]
[--out DIR]`` to rewrite (or rescale) ``data/``; the same arguments always give byte-identical
files. Each row is built to reach one rule of the SOP (rules are scheduled in fixed proportions so
that no decision exceeds half of a split), then :func:`decide`, a direct transcription of the SOP,
computes the answer and must land on that rule.

Non-goals: serving or scoring the suite (``mtrl_envs.sop`` does that from the files alone).
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import NamedTuple

from mtrl_envs.suites.builder import (
    SPLITS,
    Column,
    Param,
    Row,
    Suite,
    balanced_schedule,
    key_columns,
    lookup_tool,
    messy_variant,
    recovery_steps,
    render_suite,
    run_cli,
    step,
)

NAME = "refunds"
DEFAULT_SIZES = (200, 50, 50)
MESSY_RATE = 0.3


class Policy(NamedTuple):
    """A product category's return policy, as ``get_category_policy`` reports it."""

    window: int
    fee_pct: int
    opened_ok: bool
    final_sale: bool


CATEGORIES: dict[str, Policy] = {
    "electronics": Policy(30, 15, True, False),
    "apparel": Policy(45, 0, True, False),
    "home_goods": Policy(30, 10, True, False),
    "beauty": Policy(30, 0, False, False),
    "toys": Policy(60, 20, True, False),
    "clearance": Policy(14, 0, True, True),
    "gift_cards": Policy(0, 0, False, True),
}
TIER_BONUS = {"standard": 0, "plus": 15, "premier": 30}
SELLER_FAULT = ("damaged", "wrong_item")
BUYER_REASONS = ("changed_mind", "ordered_by_mistake", "better_price_found")
# Rule -> share of each split. Decisions: deny 35%, escalate 27%, approve 38%.
RULES = {
    "account_hold": 0.10,
    "not_delivered": 0.09,
    "seller_fault": 0.13,
    "final_sale": 0.08,
    "outside_window": 0.11,
    "opened_not_returnable": 0.07,
    "frequent_refunds": 0.17,
    "approve_with_fee": 0.12,
    "approve_full": 0.13,
}
FIRST_REQUEST = dt.date(2026, 1, 5)

SOP = """
REFUND ELIGIBILITY PROCEDURE - online store returns desk

Purpose: decide whether a customer's refund request is approved, denied or escalated to a human
reviewer, and how many dollars are refunded. Use only the request fields you are given
(request_date, order_ref, reason, item_opened) and the results of the tools below.

Tools:
- lookup_order(order_id): the order's customer, category, item price, status and delivery date.
- get_customer_profile(customer_id): loyalty tier, account hold flag, refunds in the last 90 days.
- get_category_policy(category): return window, restocking fee, opened-item and final-sale rules.

Follow the steps in order. The first step that reaches a decision ends the procedure.

1. Call lookup_order with the order reference. Order ids have the canonical form ORD-NNNNNN
   (upper-case "ORD", a dash, six digits). Customers often type them differently; if the tool
   answers with a format error, rewrite the same id in the canonical form and call it again.
   Never change the digits.
2. Call get_customer_profile with the customer_id returned by lookup_order.
3. If account_hold is true: decision = "escalate", refund_amount = item_price. Stop.
4. If order_status is not "delivered": decision = "deny", refund_amount = 0. Stop.
5. If reason is "damaged" or "wrong_item" (the store's fault): decision = "approve",
   refund_amount = item_price. No window, fee or history check applies. Stop.
6. Call get_category_policy with the order's category.
   If final_sale is true: decision = "deny", refund_amount = 0. Stop.
7. Compute days_since_delivery = request_date minus delivered_on, in calendar days.
   The allowed window is return_window_days plus the tier bonus: standard +0, plus +15,
   premier +30 days. If days_since_delivery is greater than the allowed window:
   decision = "deny", refund_amount = 0. Stop. (A request on the last day of the window is in time.)
8. If item_opened is true and opened_returnable is false: decision = "deny",
   refund_amount = 0. Stop.
9. If refunds_last_90_days is 3 or more: decision = "escalate", refund_amount = item_price. Stop.
10. Otherwise decision = "approve". If item_opened is true, refund_amount = item_price minus the
    restocking fee (item_price * restocking_fee_pct / 100); if it is false, refund_amount =
    item_price.

Answer with two fields: decision (one of approve, deny, escalate) and refund_amount (a whole number
of dollars, digits only, no currency sign and no decimals).
"""


def decide(row: Row) -> tuple[str, str, int]:
    """Applies the SOP to a row; returns ``(rule, decision, refund_amount)``."""
    price = row["item_price"]
    if row["account_hold"]:
        return "account_hold", "escalate", price
    if row["order_status"] != "delivered":
        return "not_delivered", "deny", 0
    if row["reason"] in SELLER_FAULT:
        return "seller_fault", "approve", price
    if row["final_sale"]:
        return "final_sale", "deny", 0
    days = (
        dt.date.fromisoformat(row["request_date"]) - dt.date.fromisoformat(row["delivered_on"])
    ).days
    if days > row["return_window_days"] + TIER_BONUS[row["tier"]]:
        return "outside_window", "deny", 0
    if row["item_opened"] and not row["opened_returnable"]:
        return "opened_not_returnable", "deny", 0
    if row["refunds_last_90_days"] >= 3:
        return "frequent_refunds", "escalate", price
    if row["item_opened"] and row["restocking_fee_pct"]:
        return "approve_with_fee", "approve", price - price * row["restocking_fee_pct"] // 100
    return "approve_full", "approve", price


def _categories(*, final_sale: bool | None = None, opened_ok: bool | None = None) -> list[str]:
    return [
        name
        for name, p in CATEGORIES.items()
        if final_sale in (None, p.final_sale) and opened_ok in (None, p.opened_ok)
    ]


def _draw(rule: str, rng: random.Random) -> Row:
    """Draws the facts of one request so that the SOP ends at ``rule``."""
    r: Row = {
        "tier": rng.choice(tuple(TIER_BONUS)),
        "account_hold": False,
        "order_status": "delivered",
        "reason": rng.choice(BUYER_REASONS),
        "category": rng.choice(_categories(final_sale=False)),
        "refunds_last_90_days": rng.randint(0, 2),
        "item_opened": rng.random() < 0.5,
        # Multiples of 20 dollars keep every restocking fee (10/15/20%) a whole number.
        "item_price": 20 * rng.randint(1, 60),
    }
    late = False
    # Rules reached early draw the later facts freely, so the data also tests the step order.
    if rule in ("account_hold", "not_delivered", "seller_fault", "final_sale"):
        r["refunds_last_90_days"] = rng.randint(0, 5)
        r["category"] = rng.choice(tuple(CATEGORIES))
        late = rng.random() < 0.3
    if rule == "account_hold":
        r["account_hold"] = True
        r["order_status"] = rng.choice(("delivered", "delivered", "in_transit"))
        r["reason"] = rng.choice(SELLER_FAULT + BUYER_REASONS)
    elif rule == "not_delivered":
        r["order_status"] = rng.choice(("in_transit", "processing"))
        r["reason"] = rng.choice(SELLER_FAULT + BUYER_REASONS)
    elif rule == "seller_fault":
        r["reason"] = rng.choice(SELLER_FAULT)
    elif rule == "final_sale":
        r["category"] = rng.choice(_categories(final_sale=True))
    elif rule == "outside_window":
        r["refunds_last_90_days"] = rng.randint(0, 5)
        late = True
    elif rule == "opened_not_returnable":
        r["category"] = rng.choice(_categories(final_sale=False, opened_ok=False))
        r["item_opened"] = True
        r["refunds_last_90_days"] = rng.randint(0, 5)
    elif rule == "frequent_refunds":
        r["refunds_last_90_days"] = rng.randint(3, 6)
        r["category"] = rng.choice(_categories(final_sale=False, opened_ok=True))
    elif rule == "approve_with_fee":
        fees = [c for c in _categories(final_sale=False, opened_ok=True) if CATEGORIES[c].fee_pct]
        r["category"] = rng.choice(fees)
        r["item_opened"] = True
    elif rule == "approve_full" and r["item_opened"]:
        r["category"] = "apparel"  # the only category that takes opened items back without a fee
    policy = CATEGORIES[r["category"]]
    window = policy.window + TIER_BONUS[r["tier"]]
    # The last day of the window is in time; put one request in ten exactly there.
    if late:
        days = window + rng.randint(1, 40)
    else:
        days = window if rng.random() < 0.1 else rng.randint(0, window)
    request = FIRST_REQUEST + dt.timedelta(days=rng.randint(0, 175))
    r["request_date"] = request.isoformat()
    delivered = r["order_status"] == "delivered"
    r["delivered_on"] = (request - dt.timedelta(days=days)).isoformat() if delivered else None
    r.update(
        return_window_days=policy.window,
        restocking_fee_pct=policy.fee_pct,
        opened_returnable=policy.opened_ok,
        final_sale=policy.final_sale,
    )
    return r


def generate(
    seed: int = 0,
    n_train: int = DEFAULT_SIZES[0],
    n_val: int = DEFAULT_SIZES[1],
    n_test: int = DEFAULT_SIZES[2],
) -> dict[str, str]:
    """Generates the suite's files.

    Args:
        seed: Seed of the only random stream used.
        n_train: Rows in the train split.
        n_val: Rows in the validation split.
        n_test: Rows in the test split.

    Returns:
        File name -> exact file text (``sop.txt``, ``tools.json``, ``metadata.json``,
        ``tasks.csv``, ``behavior.json``, ``suite.json``).
    """
    rng = random.Random(seed)
    sizes = (n_train, n_val, n_test)
    total = sum(sizes)
    order_numbers = rng.sample(range(1_000_000), total)
    customer_numbers = rng.sample(range(100_000), total)
    rows: list[Row] = []
    for split, n in zip(SPLITS, sizes, strict=True):
        for rule in balanced_schedule(RULES, n, rng):
            i = len(rows)
            row = _draw(rule, rng)
            order_id = f"ORD-{order_numbers[i]:06d}"
            messy = rng.random() < MESSY_RATE
            row.update(
                id=f"{NAME}-{i:04d}",
                split=split,
                order_ref=messy_variant(order_id, rng) if messy else order_id,
                order_ref_is_messy=messy,
                order_id=order_id,
                customer_id=f"CUS-{customer_numbers[i]:05d}",
            )
            got, row["decision"], row["refund_amount"] = decide(row)
            if got != rule:  # a generator bug, not a data property: fail loudly
                raise AssertionError(f"row {row['id']} drawn for {rule} but the SOP gives {got}")
            row["rule"] = rule
            rows.append(row)
    return render_suite(_suite(), rows, seed, sizes)


def _suite() -> Suite:
    cols = (
        *key_columns(),
        Column("request_date", "str", "input"),
        Column("order_ref", "str", "input"),
        Column("reason", "str", "input"),
        Column("item_opened", "bool", "input"),
        Column("order_ref_is_messy", "bool", "hidden"),
        Column("order_id", "str", "hidden"),
        Column("customer_id", "str", "hidden"),
        Column("category", "str", "hidden"),
        Column("item_price", "int", "hidden"),
        Column("order_status", "str", "hidden"),
        Column("delivered_on", "str", "hidden"),
        Column("tier", "str", "hidden"),
        Column("account_hold", "bool", "hidden"),
        Column("refunds_last_90_days", "int", "hidden"),
        Column("return_window_days", "int", "hidden"),
        Column("restocking_fee_pct", "int", "hidden"),
        Column("opened_returnable", "bool", "hidden"),
        Column("final_sale", "bool", "hidden"),
        Column("rule", "str", "hidden"),
        Column("decision", "str", "output"),
        Column("refund_amount", "int", "output"),
    )
    order_id = Param(
        "order_id",
        "Order id in canonical form ORD-NNNNNN (upper-case ORD, a dash, six digits).",
        "order_id",
        r"^ORD-[0-9]{6}$",
        "Invalid order_id '{order_id}': expected the canonical form ORD-NNNNNN (upper-case "
        "'ORD', a dash, then six digits), e.g. ORD-004217.",
    )
    customer_id = Param(
        "customer_id",
        "Customer id as returned by lookup_order, e.g. CUS-01234.",
        "customer_id",
        r"^CUS-[0-9]{5}$",
        "Invalid customer_id '{customer_id}': expected CUS- followed by five digits.",
    )
    category = Param("category", "Product category as returned by lookup_order.", "category")
    order_fields = ("order_id", "customer_id", "category", "item_price", "order_status")
    tools = (
        lookup_tool(
            "lookup_order",
            "Looks up an order: customer, product category, item price in dollars, order status "
            "and delivery date (null when not delivered).",
            [order_id],
            [(c, c) for c in (*order_fields, "delivered_on")],
            cols,
            "No order found with id {order_id}.",
        ),
        lookup_tool(
            "get_customer_profile",
            "Returns a customer's loyalty tier (standard, plus, premier), whether the account is "
            "on hold, and how many refunds they received in the last 90 days.",
            [customer_id],
            [(c, c) for c in ("customer_id", "tier", "account_hold", "refunds_last_90_days")],
            cols,
            "No customer found with id {customer_id}.",
        ),
        lookup_tool(
            "get_category_policy",
            "Returns the return policy of a product category: return window in days, restocking "
            "fee percent for opened items, whether opened items may be returned, and whether the "
            "category is final sale.",
            [category],
            [
                ("category", "category"),
                ("return_window_days", "return_window_days"),
                ("restocking_fee_pct", "restocking_fee_pct"),
                ("opened_returnable", "opened_returnable"),
                ("final_sale", "final_sale"),
            ],
            cols,
            "Unknown category '{category}'.",
        ),
    )
    plan = (
        *recovery_steps("lookup_order", "order_id", "order_ref", "order_id", "order_ref_is_messy"),
        step(
            "get_customer_profile", {"customer_id": {"out": "lookup_order", "key": "customer_id"}}
        ),
        step("get_category_policy", {"category": {"out": "lookup_order", "key": "category"}}),
    )
    return Suite(
        name=NAME,
        description="Decide refund requests (approve, deny, escalate) and the refunded amount.",
        sop=SOP,
        columns=cols,
        tools=tools,
        oracle_plan=plan,
        notes=(
            "order_ref is the order id as the customer typed it; when order_ref_is_messy it breaks "
            "the ORD-NNNNNN format and lookup_order rejects it until the agent rewrites it "
            "(order_id holds the canonical id). The oracle plan calls every tool; the SOP lets an "
            "agent stop earlier. 'rule' names the SOP step that decides the row (bookkeeping, "
            "never returned by a tool). 'out' steps read the latest successful result of a tool."
        ),
    )


def main() -> None:
    """Command-line entry: writes the suite files (default: this package's ``data/``)."""
    run_cli(
        generate,
        description=__doc__.splitlines()[0],
        defaults=DEFAULT_SIZES,
        out=Path(__file__).parent / "data",
    )


if __name__ == "__main__":
    main()
