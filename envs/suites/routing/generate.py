"""Seeded generator of the ``routing`` SOP suite (support ticket triage: queue and priority).

Run ``python -m mtrl_envs.suites.routing.generate [--seed S] [--train N] [--val N] [--test N]
[--out DIR]`` to rewrite (or rescale) ``data/``; the same arguments always give byte-identical
files. The generator first draws a small world (accounts with plans and regions, open incidents per
product and region), then one ticket per row for a scheduled ``(queue rule, priority)`` pair;
:func:`decide`, a direct transcription of the SOP, must reach that pair.

Non-goals: serving or scoring the suite (``mtrl_envs.sop`` does that from the files alone).
"""

from __future__ import annotations

import random
from pathlib import Path

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

NAME = "routing"
DEFAULT_SIZES = (200, 50, 50)
MESSY_RATE = 0.3
N_ACCOUNTS = 90
PRODUCTS = ("storage", "compute", "analytics", "messaging")
REGIONS = ("eu", "us", "apac", "latam")
# Plan -> (response_target_hours, priority_boost).
SLA = {"free": (72, 0), "pro": (24, 0), "enterprise": (4, 1)}
IMPACT_BASE = {"organization": 2, "team": 3, "single_user": 4}
CATEGORY_QUEUE = {"billing": "billing", "technical": "tech_support", "account_access": "accounts"}
RULE_CATEGORY = {
    "active_incident": "technical",
    "tech_support": "technical",
    "accounts": "account_access",
}
SUBJECTS = {
    "billing": ("Charged twice this month", "Invoice shows the wrong amount", "Refund missing"),
    "technical": ("API returns 500 errors", "Dashboard will not load", "Uploads keep failing"),
    "security": ("Suspicious login from unknown IP", "Possible leaked API key", "Unknown admin"),
    "account_access": ("Cannot reset my password", "Locked out after 2FA change", "SSO loop"),
}
ACCOUNT_WORDS = ("Acme", "Birch", "Cobalt", "Delta", "Ember", "Fjord", "Glade", "Harbor", "Iris")
ACCOUNT_KINDS = ("Studios", "Retail", "Labs", "Clinic", "Freight", "Bank", "School", "Games")
# Queue rule -> share; tickets routed by category get a priority in these proportions, so that
# overall P1 and P2 (security, incidents) and P3, P4 each hold about a quarter of the rows.
QUEUE_RULES = {"security": 0.20, "active_incident": 0.18}
ROUTED = {"billing": 0.21, "tech_support": 0.20, "accounts": 0.21}
ROUTED_PRIORITY = {1: 5, 2: 9, 3: 24, 4: 24}

SOP = """
SUPPORT TICKET ROUTING PROCEDURE - customer support triage

Purpose: send each new ticket to the right queue with the right priority. Inputs: ticket_ref (the
ticket number as the customer quoted it) and subject (the customer's subject line, for context
only: route on the category that get_ticket returns).

Tools:
- get_ticket(ticket_id): account, category, product, impact and hours the ticket has been open.
- get_account(account_id): account name, plan and region.
- check_incidents(product, region): whether an incident is open for a product in a region.
- get_sla_policy(plan): the response target in hours and the priority boost of a plan.

1. Call get_ticket with the ticket number. Ticket numbers have the canonical form TKT-NNNNNN
   (upper-case "TKT", a dash, six digits). If the tool answers with a format error, rewrite the
   same number in that form and call it again. Never change the digits.
2. Call get_account with the account_id from the ticket.
3. If category is "security": queue = "security", priority = "P1". Stop.
4. If category is "technical", call check_incidents with the ticket's product and the account's
   region. If incident_open is true: queue = "incident_response", priority = "P2". Stop.
5. Pick the queue from the category: "billing" -> "billing", "technical" -> "tech_support",
   "account_access" -> "accounts".
6. Call get_sla_policy with the account's plan and compute the priority number:
   a. start from the impact: "organization" 2, "team" 3, "single_user" 4;
   b. subtract priority_boost;
   c. subtract 1 more if hours_open is greater than response_target_hours (SLA already breached);
   d. never go below 1.
   priority = "P" followed by the number, for example "P3".

Answer with two fields: queue (security, incident_response, billing, tech_support or accounts) and
priority (P1, P2, P3 or P4).
"""


def priority_number(row: Row) -> int:
    """Step 6 of the SOP."""
    breached = row["hours_open"] > row["response_target_hours"]
    return max(1, IMPACT_BASE[row["impact"]] - row["priority_boost"] - breached)


def decide(row: Row) -> tuple[str, str, str]:
    """Applies the SOP to a row; returns ``(rule, queue, priority)``."""
    if row["category"] == "security":
        return "security", "security", "P1"
    if row["category"] == "technical" and row["incident_open"]:
        return "active_incident", "incident_response", "P2"
    queue = CATEGORY_QUEUE[row["category"]]
    return queue, queue, f"P{priority_number(row)}"


def _world(rng: random.Random) -> tuple[list[Row], dict[tuple[str, str], str | None]]:
    """Draws the accounts and the open incidents (``(product, region) -> incident id``)."""
    numbers = rng.sample(range(10_000), N_ACCOUNTS)
    # The first twelve accounts cover every (plan, region) pair, so any draw finds an account.
    pairs = [(plan, region) for plan in SLA for region in REGIONS]
    pairs += [(rng.choice(tuple(SLA)), rng.choice(REGIONS)) for _ in range(N_ACCOUNTS - len(pairs))]
    accounts = [
        {
            "account_id": f"ACC-{n:04d}",
            "account_name": f"{rng.choice(ACCOUNT_WORDS)} {rng.choice(ACCOUNT_KINDS)}",
            "plan": plan,
            "region": region,
        }
        for n, (plan, region) in zip(numbers, pairs, strict=True)
    ]
    incidents: dict[tuple[str, str], str | None] = {}
    for region in REGIONS:
        # One or two products per region have an incident, so both branches exist everywhere.
        broken = set(rng.sample(PRODUCTS, rng.randint(1, 2)))
        for product in PRODUCTS:
            incident = f"INC-{rng.randint(1000, 9999)}" if product in broken else None
            incidents[(product, region)] = incident
    return accounts, incidents


def _draw(label: str, rng: random.Random, accounts: list[Row], incidents: dict) -> Row:
    """Draws one ticket so that the SOP ends at ``label`` (``rule`` or ``rule:priority``)."""
    rule, _, target = label.partition(":")
    category = RULE_CATEGORY.get(rule, rule)
    while True:  # redraw until the priority facts give the target (a few tries on average)
        row: Row = {
            "impact": rng.choice(tuple(IMPACT_BASE)),
            "plan": rng.choice(tuple(SLA)),
            "hours_open": rng.randint(0, 96),
        }
        row["response_target_hours"], row["priority_boost"] = SLA[row["plan"]]
        if rng.random() < 0.1:  # exactly on the target is not yet a breach
            row["hours_open"] = row["response_target_hours"]
        if not target or priority_number(row) == int(target):
            break
    account = rng.choice([a for a in accounts if a["plan"] == row["plan"]])
    open_products = [p for p in PRODUCTS if incidents[(p, account["region"])]]
    if rule == "active_incident":
        product = rng.choice(open_products)
    elif rule == "tech_support":
        product = rng.choice([p for p in PRODUCTS if p not in open_products])
    else:  # billing, access and security tickets ignore incidents: any product
        product = rng.choice(PRODUCTS)
    incident = incidents[(product, account["region"])]
    row.update(account)
    row.update(
        category=category,
        subject=rng.choice(SUBJECTS[category]),
        product=product,
        incident_open=incident is not None,
        incident_id=incident,
    )
    return row


def _labels() -> dict[str, float]:
    labels = dict(QUEUE_RULES)
    total = sum(ROUTED_PRIORITY.values())
    for rule, w in ROUTED.items():
        labels.update({f"{rule}:{p}": w * n / total for p, n in ROUTED_PRIORITY.items()})
    return labels


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
    accounts, incidents = _world(rng)
    tickets = rng.sample(range(1_000_000), sum(sizes))
    rows: list[Row] = []
    for split, n in zip(SPLITS, sizes, strict=True):
        for label in balanced_schedule(_labels(), n, rng):
            i = len(rows)
            row = _draw(label, rng, accounts, incidents)
            ticket = f"TKT-{tickets[i]:06d}"
            messy = rng.random() < MESSY_RATE
            row.update(
                id=f"{NAME}-{i:04d}",
                split=split,
                ticket_ref=messy_variant(ticket, rng) if messy else ticket,
                ticket_ref_is_messy=messy,
                ticket_id=ticket,
            )
            row["rule"], row["queue"], row["priority"] = decide(row)
            rule, _, target = label.partition(":")
            if row["rule"] != rule or (target and row["priority"] != f"P{target}"):
                raise AssertionError(f"row {row['id']} drawn for {label}, SOP gives {row['rule']}")
            rows.append(row)
    return render_suite(_suite(), rows, seed, sizes)


def _suite() -> Suite:
    cols = (
        *key_columns(),
        Column("ticket_ref", "str", "input"),
        Column("subject", "str", "input"),
        Column("ticket_ref_is_messy", "bool", "hidden"),
        Column("ticket_id", "str", "hidden"),
        Column("account_id", "str", "hidden"),
        Column("category", "str", "hidden"),
        Column("product", "str", "hidden"),
        Column("impact", "str", "hidden"),
        Column("hours_open", "int", "hidden"),
        Column("account_name", "str", "hidden"),
        Column("plan", "str", "hidden"),
        Column("region", "str", "hidden"),
        Column("incident_open", "bool", "hidden"),
        Column("incident_id", "str", "hidden"),
        Column("response_target_hours", "int", "hidden"),
        Column("priority_boost", "int", "hidden"),
        Column("rule", "str", "hidden"),
        Column("queue", "str", "output"),
        Column("priority", "str", "output"),
    )
    ticket = Param(
        "ticket_id",
        "Ticket number in canonical form TKT-NNNNNN (upper-case TKT, a dash, six digits).",
        "ticket_id",
        r"^TKT-[0-9]{6}$",
        "Invalid ticket_id '{ticket_id}': expected the canonical form TKT-NNNNNN (upper-case "
        "'TKT', a dash, then six digits), e.g. TKT-048213.",
    )
    account = Param(
        "account_id",
        "Account id as returned by get_ticket, e.g. ACC-0421.",
        "account_id",
        r"^ACC-[0-9]{4}$",
        "Invalid account_id '{account_id}': expected ACC- followed by four digits.",
    )
    product = Param("product", "Product name as returned by get_ticket.", "product")
    region = Param("region", "Region code as returned by get_account.", "region")
    plan = Param("plan", "Plan name as returned by get_account.", "plan")
    ticket_fields = ("ticket_id", "account_id", "category", "product", "impact", "hours_open")
    tools = (
        lookup_tool(
            "get_ticket",
            "Returns a support ticket: account id, category (billing, technical, security, "
            "account_access), product, impact (single_user, team, organization) and the hours it "
            "has been open.",
            [ticket],
            [(c, c) for c in ticket_fields],
            cols,
            "No ticket {ticket_id}.",
        ),
        lookup_tool(
            "get_account",
            "Returns a customer account's name, plan (free, pro, enterprise) and region.",
            [account],
            [(c, c) for c in ("account_id", "account_name", "plan", "region")],
            cols,
            "No account {account_id}.",
        ),
        lookup_tool(
            "check_incidents",
            "Says whether an incident is open for a product in a region, and its id (null when "
            "there is none).",
            [product, region],
            [(c, c) for c in ("product", "region", "incident_open", "incident_id")],
            cols,
            "No incident feed for product '{product}' in region '{region}'.",
        ),
        lookup_tool(
            "get_sla_policy",
            "Returns a plan's first-response target in hours and its priority boost.",
            [plan],
            [(c, c) for c in ("plan", "response_target_hours", "priority_boost")],
            cols,
            "Unknown plan '{plan}'.",
        ),
    )
    from_ticket = {"out": "get_ticket", "key": "account_id"}
    oracle = (
        *recovery_steps(
            "get_ticket", "ticket_id", "ticket_ref", "ticket_id", "ticket_ref_is_messy"
        ),
        step("get_account", {"account_id": from_ticket}),
        step(
            "check_incidents",
            {
                "product": {"out": "get_ticket", "key": "product"},
                "region": {"out": "get_account", "key": "region"},
            },
        ),
        step("get_sla_policy", {"plan": {"out": "get_account", "key": "plan"}}),
    )
    return Suite(
        name=NAME,
        description="Route support tickets to a queue with a priority (P1-P4).",
        sop=SOP,
        columns=cols,
        tools=tools,
        oracle_plan=oracle,
        notes=(
            "ticket_ref is the ticket number as the customer quoted it; when ticket_ref_is_messy "
            "it breaks the TKT-NNNNNN format and get_ticket rejects it until the agent rewrites it "
            "(ticket_id holds the canonical number). Accounts recur across rows with identical "
            "plan and region; incidents are fixed per (product, region). The oracle plan calls "
            "every tool; the SOP lets an agent stop earlier. 'rule' names the SOP step that sets "
            "the queue (bookkeeping, never returned by a tool)."
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
