"""Seeded generator of the ``kyb`` SOP suite (know-your-business checks for new merchant accounts).

Run ``python -m mtrl_envs.suites.kyb.generate [--seed S] [--train N] [--val N] [--test N]
[--out DIR]`` to rewrite (or rescale) ``data/``; the same arguments always give byte-identical
files. Each row is drawn for one rule of the SOP (in fixed proportions); its risk facts are redrawn
until they reach the row's target risk level, and :func:`decide`, a direct transcription of the
SOP, must then agree.

Jurisdictions, companies and people are invented; the risk tiers say nothing about real places.

Non-goals: serving or scoring the suite (``mtrl_envs.sop`` does that from the files alone).
"""

from __future__ import annotations

import datetime as dt
import itertools
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

NAME = "kyb"
DEFAULT_SIZES = (200, 50, 50)
MESSY_RATE = 0.3
# Jurisdiction -> (registration prefix, risk tier).
JURISDICTIONS = {
    "Avaloria": ("AV", "standard"),
    "Brenmark": ("BR", "standard"),
    "Castelia": ("CS", "standard"),
    "Fennwick": ("FW", "standard"),
    "Eskaria": ("ES", "elevated"),
    "Galvia": ("GV", "elevated"),
    "Dunmore Isles": ("DI", "high"),
    "Harrowgate Free Zone": ("HG", "high"),
}
TIER_POINTS = {"standard": 0, "elevated": 1, "high": 3}
COMPANY_WORDS = (
    ("Northwind", "Bluehaven", "Silverline", "Redcliff", "Oakridge", "Brightwater"),
    ("Ironbridge", "Greenfield", "Stonegate", "Clearpoint", "Highmoor", "Westbrook"),
)
SECTORS = ("Logistics", "Trading", "Foods", "Textiles", "Analytics", "Marine", "Builders", "Energy")
SUFFIXES = ("Ltd", "LLC", "GmbH", "Holdings", "Group")
FIRST = ("Ada", "Bruno", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas")
FIRST += ("Keiko", "Luis", "Mira", "Nils", "Olga", "Pavel", "Rosa", "Sami", "Tara", "Viktor")
LAST = ("Adler", "Brandt", "Costa", "Duval", "Engel", "Fischer", "Garcia", "Horvat", "Ivanov")
LAST += ("Jansen", "Kowalski", "Lind", "Moreau", "Novak", "Ortiz", "Petrov", "Quinn", "Rossi")
# Rule -> share of each split. Status: rejected 22%, manual_review 36%, verified 42%;
# risk: high about 44%, low and medium about 28% each.
RULES = {
    "registry_inactive": 0.11,
    "sanctions_confirmed": 0.11,
    "bank_problem": 0.21,
    "high_risk": 0.15,
    "verified_low": 0.21,
    "verified_medium": 0.21,
}
FIRST_APPLICATION = dt.date(2026, 1, 5)

SOP = """
BUSINESS ACCOUNT VERIFICATION PROCEDURE (KYB) - merchant onboarding team

Purpose: decide whether a business may open a merchant account (verification_status) and how
risky it is (risk_level). Inputs: application_date, registration_ref (the company registration
number as the applicant typed it) and bank_account_number.

Tools:
- lookup_registry(registration_number): registered name, status, incorporation date, jurisdiction.
- get_ownership(registration_number): beneficial owner, ownership layers, nominee shareholders.
- screen_sanctions(full_name): sanctions screening result for a person.
- get_jurisdiction_risk(jurisdiction): the risk tier of a jurisdiction.
- verify_bank_account(account_number): account holder name and account status.

1. Call lookup_registry with the registration number. Registration numbers have the canonical form
   XX-NNNNNNN (two upper-case letters, a dash, seven digits). If the tool answers with a format
   error, rewrite the same number in that form and call it again. Never change letters or digits.
2. Call get_ownership with the canonical registration number.
3. If registry_status is not "active": verification_status = "rejected", risk_level = "high".
   Stop.
4. Call screen_sanctions with the beneficial_owner name exactly as get_ownership returned it.
   If screening_result is "confirmed_match": verification_status = "rejected",
   risk_level = "high". Stop.
5. Call get_jurisdiction_risk with the jurisdiction from lookup_registry, then add up risk points:
   - risk_tier "elevated": 1 point; risk_tier "high": 3 points; "standard": 0 points;
   - ownership_layers is 3 or more: 2 points;
   - nominee_shareholders is true: 1 point;
   - the company is young: application_date minus incorporated_on is less than 365 days: 1 point;
   - screening_result is "potential_match": 2 points.
   risk_level is "low" for 0 or 1 point, "medium" for 2 or 3 points, "high" for 4 or more.
6. Call verify_bank_account with bank_account_number. If account_status is not "open", or
   account_holder differs from registered_name (ignoring upper and lower case):
   verification_status = "manual_review", with the risk_level from step 5. Stop.
7. If risk_level is "high": verification_status = "manual_review".
   Otherwise verification_status = "verified".

Answer with two fields: verification_status (verified, manual_review or rejected) and risk_level
(low, medium or high).
"""


def risk_points(row: Row) -> int:
    """Step 5 of the SOP: the risk points of an active, unsanctioned business."""
    age = dt.date.fromisoformat(row["application_date"]) - dt.date.fromisoformat(
        row["incorporated_on"]
    )
    return (
        TIER_POINTS[row["risk_tier"]]
        + 2 * (row["ownership_layers"] >= 3)
        + row["nominee_shareholders"]
        + (age.days < 365)
        + 2 * (row["screening_result"] == "potential_match")
    )


def decide(row: Row) -> tuple[str, str, str]:
    """Applies the SOP to a row; returns ``(rule, verification_status, risk_level)``."""
    if row["registry_status"] != "active":
        return "registry_inactive", "rejected", "high"
    if row["screening_result"] == "confirmed_match":
        return "sanctions_confirmed", "rejected", "high"
    points = risk_points(row)
    level = "low" if points <= 1 else "medium" if points <= 3 else "high"
    holder_ok = row["account_holder"].lower() == row["registered_name"].lower()
    if row["account_status"] != "open" or not holder_ok:
        return "bank_problem", "manual_review", level
    if level == "high":
        return "high_risk", "manual_review", level
    return f"verified_{level}", "verified", level


def _risk_facts(rng: random.Random, application: dt.date) -> Row:
    jurisdiction = rng.choice(tuple(JURISDICTIONS))
    young = rng.random() < 0.3
    # Put one company in ten right on the 365-day line (364 is young, 365 is not).
    edge = rng.random() < 0.1
    if young:
        age = 364 if edge else rng.randint(20, 364)
    else:
        age = 365 if edge else rng.randint(365, 9000)
    return {
        "jurisdiction": jurisdiction,
        "risk_tier": JURISDICTIONS[jurisdiction][1],
        "incorporated_on": (application - dt.timedelta(days=age)).isoformat(),
        "ownership_layers": rng.choice((1, 1, 2, 2, 3, 4, 5)),
        "nominee_shareholders": rng.random() < 0.3,
        "screening_result": "potential_match" if rng.random() < 0.2 else "clear",
    }


def _draw(rule: str, rng: random.Random, company: str, other: str) -> Row:
    """Draws the facts of one application so that the SOP ends at ``rule``."""
    application = FIRST_APPLICATION + dt.timedelta(days=rng.randint(0, 175))
    target = {"high_risk": "high", "verified_low": "low", "verified_medium": "medium"}.get(
        rule, rng.choice(("low", "medium", "high"))
    )
    row: Row = {"application_date": application.isoformat(), "registered_name": company}
    while True:  # redraw until the facts reach the target level (a few tries on average)
        row.update(_risk_facts(rng, application))
        points = risk_points(row)
        if target == ("low" if points <= 1 else "medium" if points <= 3 else "high"):
            break
    row.update(
        registry_status="active",
        account_status="open",
        # The SOP ignores case; a third of the banks spell the holder in capitals.
        account_holder=company.upper() if rng.random() < 0.3 else company,
    )
    if rule == "registry_inactive":
        row["registry_status"] = rng.choice(("dissolved", "suspended"))
        row["screening_result"] = rng.choice(("clear", "potential_match", "confirmed_match"))
    elif rule == "sanctions_confirmed":
        row["screening_result"] = "confirmed_match"
    if rule in ("registry_inactive", "sanctions_confirmed", "bank_problem"):
        if rng.random() < 0.5:
            row["account_status"] = rng.choice(("closed", "frozen"))
        elif rule == "bank_problem" or rng.random() < 0.5:
            row["account_holder"] = other
    return row


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
    prefixes = COMPANY_WORDS[0] + COMPANY_WORDS[1]
    companies = [" ".join(p) for p in itertools.product(prefixes, SECTORS, SUFFIXES)]
    people = [" ".join(p) for p in itertools.product(FIRST, LAST)]
    if total > min(len(companies), len(people)):
        raise ValueError(f"at most {min(len(companies), len(people))} rows: names must be unique")
    companies = rng.sample(companies, total)
    people = rng.sample(people, total)
    numbers = rng.sample(range(10_000_000), total)
    accounts = rng.sample(range(10**10), total)
    rows: list[Row] = []
    for split, n in zip(SPLITS, sizes, strict=True):
        for rule in balanced_schedule(RULES, n, rng):
            i = len(rows)
            row = _draw(rule, rng, companies[i], companies[(i + 1) % total])
            number = f"{JURISDICTIONS[row['jurisdiction']][0]}-{numbers[i]:07d}"
            messy = rng.random() < MESSY_RATE
            row.update(
                id=f"{NAME}-{i:04d}",
                split=split,
                registration_ref=messy_variant(number, rng) if messy else number,
                registration_ref_is_messy=messy,
                registration_number=number,
                bank_account_number=f"BA{accounts[i]:010d}",
                beneficial_owner=people[i],
            )
            got, row["verification_status"], row["risk_level"] = decide(row)
            if got != rule:  # a generator bug, not a data property: fail loudly
                raise AssertionError(f"row {row['id']} drawn for {rule} but the SOP gives {got}")
            row["rule"] = rule
            rows.append(row)
    return render_suite(_suite(), rows, seed, sizes)


def _suite() -> Suite:
    cols = (
        *key_columns(),
        Column("application_date", "str", "input"),
        Column("registration_ref", "str", "input"),
        Column("bank_account_number", "str", "input"),
        Column("registration_ref_is_messy", "bool", "hidden"),
        Column("registration_number", "str", "hidden"),
        Column("registered_name", "str", "hidden"),
        Column("registry_status", "str", "hidden"),
        Column("incorporated_on", "str", "hidden"),
        Column("jurisdiction", "str", "hidden"),
        Column("beneficial_owner", "str", "hidden"),
        Column("ownership_layers", "int", "hidden"),
        Column("nominee_shareholders", "bool", "hidden"),
        Column("screening_result", "str", "hidden"),
        Column("risk_tier", "str", "hidden"),
        Column("account_holder", "str", "hidden"),
        Column("account_status", "str", "hidden"),
        Column("rule", "str", "hidden"),
        Column("verification_status", "str", "output"),
        Column("risk_level", "str", "output"),
    )
    registration = Param(
        "registration_number",
        "Company registration number in canonical form XX-NNNNNNN (two upper-case letters, a "
        "dash, seven digits).",
        "registration_number",
        r"^[A-Z]{2}-[0-9]{7}$",
        "Invalid registration_number '{registration_number}': expected the canonical form "
        "XX-NNNNNNN (two upper-case letters, a dash, then seven digits), e.g. AV-0042817.",
    )
    account = Param(
        "account_number",
        "Bank account number: BA followed by ten digits.",
        "bank_account_number",
        r"^BA[0-9]{10}$",
        "Invalid account_number '{account_number}': expected BA followed by ten digits.",
    )
    name = Param("full_name", "The person's full name, exactly as on record.", "beneficial_owner")
    jurisdiction = Param("jurisdiction", "Jurisdiction name from the registry.", "jurisdiction")
    registry = ("registration_number", "registered_name", "registry_status", "incorporated_on")
    ownership = ("registration_number", "beneficial_owner", "ownership_layers")
    tools = (
        lookup_tool(
            "lookup_registry",
            "Looks a company up in the business registry: registered name, registry status "
            "(active, dissolved, suspended), incorporation date and jurisdiction.",
            [registration],
            [(c, c) for c in (*registry, "jurisdiction")],
            cols,
            "No company registered under {registration_number}.",
        ),
        lookup_tool(
            "get_ownership",
            "Returns a company's ultimate beneficial owner, the number of ownership layers between "
            "the company and that owner, and whether nominee shareholders are on record.",
            [registration],
            [(c, c) for c in (*ownership, "nominee_shareholders")],
            cols,
            "No ownership record for {registration_number}.",
        ),
        lookup_tool(
            "screen_sanctions",
            "Screens a person's name against sanctions lists: clear, potential_match or "
            "confirmed_match.",
            [name],
            [("full_name", "beneficial_owner"), ("screening_result", "screening_result")],
            cols,
            "No screening record for '{full_name}'; pass the name exactly as on record.",
        ),
        lookup_tool(
            "get_jurisdiction_risk",
            "Returns the risk tier (standard, elevated, high) of a jurisdiction.",
            [jurisdiction],
            [("jurisdiction", "jurisdiction"), ("risk_tier", "risk_tier")],
            cols,
            "Unknown jurisdiction '{jurisdiction}'.",
        ),
        lookup_tool(
            "verify_bank_account",
            "Returns the holder name and status (open, closed, frozen) of a bank account.",
            [account],
            [
                ("account_number", "bank_account_number"),
                ("account_holder", "account_holder"),
                ("account_status", "account_status"),
            ],
            cols,
            "No bank account {account_number}.",
        ),
    )
    registry_out = {"out": "lookup_registry", "key": "registration_number"}
    plan = (
        *recovery_steps(
            "lookup_registry",
            "registration_number",
            "registration_ref",
            "registration_number",
            "registration_ref_is_messy",
        ),
        step("get_ownership", {"registration_number": registry_out}),
        step(
            "screen_sanctions", {"full_name": {"out": "get_ownership", "key": "beneficial_owner"}}
        ),
        step(
            "get_jurisdiction_risk",
            {"jurisdiction": {"out": "lookup_registry", "key": "jurisdiction"}},
        ),
        step("verify_bank_account", {"account_number": {"input": "bank_account_number"}}),
    )
    return Suite(
        name=NAME,
        description="Verify new merchant businesses (verified, manual_review, rejected) and rate "
        "their risk (low, medium, high).",
        sop=SOP,
        columns=cols,
        tools=tools,
        oracle_plan=plan,
        notes=(
            "registration_ref is the registration number as the applicant typed it; when "
            "registration_ref_is_messy it breaks the XX-NNNNNNN format and lookup_registry "
            "rejects it until the agent rewrites it (registration_number holds the canonical "
            "number). Names are unique per row, so screen_sanctions is keyed by the owner's name. "
            "The oracle plan calls every tool; the SOP lets an agent stop earlier. 'rule' names "
            "the SOP step that decides the row (bookkeeping, never returned by a tool)."
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
