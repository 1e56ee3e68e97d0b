"""Seeded generator of the ``quickstart`` SOP suite: a parcel help desk sized for a tiny model.

The suite exists so that a model trained from scratch on two CPU cores can learn the whole loop
(read a procedure, call a tool, read a short JSON result, maybe call a second tool, answer) in
minutes: a seven-line SOP, one or two tool calls, results of a few tokens, one output field with
four values in equal shares, short ids, and 400/50/100 tasks by default.

Run ``python -m mtrl_envs.suites.quickstart.generate [--seed S] [--train N] [--val N] [--test N]
[--out DIR]`` to rewrite (or rescale) ``data/``; the same arguments give byte-identical files.

Non-goals: realism, format recovery (the larger suites train that), serving or scoring the suite
(``mtrl_envs.sop`` does that from the files alone).
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
    render_suite,
    run_cli,
    step,
)

NAME = "quickstart"
DEFAULT_SIZES = (400, 50, 100)
N_USERS = 40
# Action -> share: every answer is equally likely, so a constant answer scores 25%.
ACTIONS = {"refund": 0.25, "credit": 0.25, "sorry": 0.25, "wait": 0.25}

SOP = """
Parcel help desk. Input: parcel (a parcel id such as P17).
1. Call get_parcel with the parcel id.
2. If status is "lost": action = "refund". Stop.
3. If status is "late": call get_user with the parcel's user.
   action = "credit" if tier is "gold", otherwise "sorry". Stop.
4. Otherwise (status "moving"): action = "wait".
Answer with one field: action (refund, credit, sorry or wait).
"""


def decide(row: Row) -> str:
    """Applies the SOP to a row; returns the action."""
    if row["status"] == "lost":
        return "refund"
    if row["status"] == "late":
        return "credit" if row["tier"] == "gold" else "sorry"
    return "wait"


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
    # Users recur across parcels with a fixed tier; the first two fix one user of each tier.
    tiers = ["gold", "basic"] + [rng.choice(("gold", "basic")) for _ in range(N_USERS - 2)]
    users = {f"U{i + 1}": tier for i, tier in enumerate(tiers)}
    by_tier = {t: [u for u, ut in users.items() if ut == t] for t in ("gold", "basic")}
    # Parcel numbers stay short (at most four digits for the default sizes).
    parcels = rng.sample(range(1, max(1000, 2 * total)), total)
    rows: list[Row] = []
    for split, n in zip(SPLITS, sizes, strict=True):
        for action in balanced_schedule(ACTIONS, n, rng):
            i = len(rows)
            status = {"refund": "lost", "wait": "moving"}.get(action, "late")
            if action == "credit":
                user = rng.choice(by_tier["gold"])
            elif action == "sorry":
                user = rng.choice(by_tier["basic"])
            else:  # lost and moving parcels belong to anyone
                user = rng.choice(tuple(users))
            row: Row = {
                "id": f"q{i:03d}",
                "split": split,
                "parcel": f"P{parcels[i]}",
                "status": status,
                "user": user,
                "tier": users[user],
            }
            row["action"] = decide(row)
            if row["action"] != action:  # a generator bug, not a data property: fail loudly
                raise AssertionError(f"row {row['id']} drawn for {action}, SOP gives another")
            rows.append(row)
    return render_suite(_suite(), rows, seed, sizes)


def _suite() -> Suite:
    cols = (
        *key_columns(),
        Column("parcel", "str", "input"),
        Column("status", "str", "hidden"),
        Column("user", "str", "hidden"),
        Column("tier", "str", "hidden"),
        Column("action", "str", "output"),
    )
    tools = (
        lookup_tool(
            "get_parcel",
            "Returns a parcel's status (lost, late, moving) and its user.",
            [Param("parcel_id", "Parcel id, e.g. P17.", "parcel")],
            [("status", "status"), ("user", "user")],
            cols,
            "No parcel {parcel_id}.",
        ),
        lookup_tool(
            "get_user",
            "Returns a user's tier (gold or basic).",
            [Param("user_id", "User id, e.g. U4.", "user")],
            [("tier", "tier")],
            cols,
            "No user {user_id}.",
        ),
    )
    late = {"not": {"row_ne": ["status", "late"]}}
    plan = (
        step("get_parcel", {"parcel_id": {"input": "parcel"}}),
        step("get_user", {"user_id": {"out": "get_parcel", "key": "user"}}, when=late),
    )
    return Suite(
        name=NAME,
        description="Answer parcel claims with one of four actions (tiny-model starter suite).",
        sop=SOP,
        columns=cols,
        tools=tools,
        oracle_plan=plan,
        notes=(
            "Users recur across parcels with a fixed tier. The oracle plan calls get_user only "
            "for late parcels, as the SOP does."
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
