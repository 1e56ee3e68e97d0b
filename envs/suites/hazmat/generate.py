"""Seeded generator of the ``hazmat`` SOP suite (hazard class and air eligibility of a package).

Run ``python -m mtrl_envs.suites.hazmat.generate [--seed S] [--train N] [--val N] [--test N]
[--out DIR]`` to rewrite (or rescale) ``data/``; the same arguments always give byte-identical
files. Each row is drawn for one ``(hazard class, air rule)`` pair, scheduled in fixed proportions;
:func:`decide`, a direct transcription of the SOP, must then reach that pair.

The classes, limits and packaging codes are simplified inventions for training agents; they are
not a statement of any real dangerous-goods regulation.

Non-goals: serving or scoring the suite (``mtrl_envs.sop`` does that from the files alone).
"""

from __future__ import annotations

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

NAME = "hazmat"
DEFAULT_SIZES = (200, 50, 50)
MESSY_RATE = 0.3


class Limits(NamedTuple):
    """Per-package air limits of a hazard class (None: no limit)."""

    passenger_kg: float | None
    cargo_kg: float | None
    certified_packaging: bool


LIMITS: dict[str, Limits] = {
    "class_2": Limits(75.0, 150.0, True),
    "class_3": Limits(5.0, 60.0, True),
    "class_8": Limits(1.0, 30.0, True),
    "class_9": Limits(10.0, 35.0, False),
    "not_regulated": Limits(None, None, False),
}
PACKAGING: dict[str, tuple[str, bool]] = {
    "4G-Y": ("fibreboard box, performance-tested and marked", True),
    "1A1-X": ("closed-head steel drum, performance-tested and marked", True),
    "3H1-Y": ("plastic jerrican, performance-tested and marked", True),
    "4H2-Z": ("solid plastic box, performance-tested and marked", True),
    "RETAIL-BOX": ("single-wall retail carton, no test marks", False),
    "POLY-BAG": ("plastic mailer bag, no test marks", False),
    "REUSED-DRUM": ("reused drum with test marks removed", False),
}
NAMES = {
    "class_9": ("Cordless drill battery", "E-bike battery module", "Power bank", "Jump starter"),
    "class_2": ("Compressed air duster", "Nitrogen cylinder", "Aerosol lubricant", "CO2 cartridge"),
    "class_3": ("Paint thinner", "Lamp oil", "Wood stain", "Nail polish remover"),
    "class_8": ("Drain opener gel", "Rust remover", "Descaling liquid", "Oven cleaner"),
    "not_regulated": ("Dish soap", "Latex wall paint", "Hand lotion", "Glass cleaner"),
}
# Air rule -> share among the rows of one regulated class; class_9 never needs certified packaging.
AIR_RULES = {
    "passenger_ok": 0.21,
    "cargo_only": 0.42,
    "over_cargo_limit": 0.22,
    "uncertified": 0.15,
}
CLASS9_AIR_RULES = {"passenger_ok": 0.25, "cargo_only": 0.45, "over_cargo_limit": 0.30}

SOP = """
AIR SHIPMENT HAZARD SCREENING PROCEDURE - outbound dangerous-goods desk

Purpose: give each outbound package a hazard class and decide whether it may travel by air, and
on which aircraft. Inputs: product_ref (the product code as written on the shipping request),
packaging_code, and net_quantity_kg (net quantity of product in one package, in kilograms).

Tools:
- get_safety_data(product_code): the data-sheet facts of a product.
- get_transport_limits(hazard_class): per-package air limits of a hazard class, and whether the
  class needs certified packaging.
- check_packaging(packaging_code): what a packaging code is and whether it is UN-certified.

1. Call get_safety_data with the product code. Product codes have the canonical form HZ-NNNNN
   (upper-case "HZ", a dash, five digits). If the tool answers with a format error, rewrite the
   same code in that form and call it again. Never change the digits.
2. Classify the product. Take the FIRST rule that applies:
   a. contains_lithium_cells is true -> hazard_class = "class_9".
   b. is_compressed_gas is true -> hazard_class = "class_2".
   c. flash_point_c is not null and is 60.0 or lower -> hazard_class = "class_3".
   d. ph is not null and is 2.0 or lower, or 12.5 or higher -> hazard_class = "class_8".
   e. Otherwise -> hazard_class = "not_regulated".
   A null value means the property does not apply to the product.
3. Call get_transport_limits with the hazard_class from step 2.
4. If hazard_class is "not_regulated": air_transport = "passenger_and_cargo". Stop.
5. If requires_certified_packaging is true, call check_packaging with the packaging_code.
   If un_certified is false: air_transport = "forbidden". Stop.
   When requires_certified_packaging is false, the packaging does not matter.
6. Compare net_quantity_kg with the limits from step 3:
   - at most passenger_aircraft_max_kg -> air_transport = "passenger_and_cargo";
   - otherwise at most cargo_aircraft_max_kg -> air_transport = "cargo_only";
   - otherwise -> air_transport = "forbidden".

Answer with two fields: hazard_class (class_2, class_3, class_8, class_9 or not_regulated) and
air_transport (passenger_and_cargo, cargo_only or forbidden).
"""


def classify(row: Row) -> str:
    """Step 2 of the SOP: the first matching rule gives the hazard class."""
    if row["contains_lithium_cells"]:
        return "class_9"
    if row["is_compressed_gas"]:
        return "class_2"
    if row["flash_point_c"] is not None and row["flash_point_c"] <= 60.0:
        return "class_3"
    if row["ph"] is not None and (row["ph"] <= 2.0 or row["ph"] >= 12.5):
        return "class_8"
    return "not_regulated"


def decide(row: Row) -> tuple[str, str, str]:
    """Applies the SOP to a row; returns ``(rule, hazard_class, air_transport)``."""
    hazard_class = classify(row)
    if hazard_class == "not_regulated":
        return "not_regulated", hazard_class, "passenger_and_cargo"
    limits = LIMITS[hazard_class]
    if limits.certified_packaging and not row["un_certified"]:
        return "uncertified", hazard_class, "forbidden"
    assert limits.passenger_kg is not None and limits.cargo_kg is not None  # regulated classes
    if row["net_quantity_kg"] <= limits.passenger_kg:
        return "passenger_ok", hazard_class, "passenger_and_cargo"
    if row["net_quantity_kg"] <= limits.cargo_kg:
        return "cargo_only", hazard_class, "cargo_only"
    return "over_cargo_limit", hazard_class, "forbidden"


def _maybe(rng: random.Random, lo: float, hi: float, p_null: float = 0.5) -> float | None:
    return None if rng.random() < p_null else round(rng.uniform(lo, hi), 1)


def _safety(hazard_class: str, rng: random.Random) -> Row:
    """Draws data-sheet facts whose first matching rule is ``hazard_class``.

    Classes decided early also draw the later properties freely (a flammable aerosol, a corrosive
    battery electrolyte), so the rows test the rule order, not just each rule.
    """
    early = hazard_class in ("class_9", "class_2")
    flash = _maybe(rng, -30.0, 150.0) if early else _maybe(rng, 60.1, 200.0)
    ph = _maybe(rng, 0.0, 14.0) if early or hazard_class == "class_3" else None
    if hazard_class == "class_3":
        flash = 60.0 if rng.random() < 0.1 else round(rng.uniform(-30.0, 60.0), 1)
    elif hazard_class == "class_8":
        acid = rng.random() < 0.5
        if rng.random() < 0.1:  # the limits themselves count as corrosive
            ph = 2.0 if acid else 12.5
        else:
            ph = round(rng.uniform(0.0, 2.0) if acid else rng.uniform(12.5, 14.0), 1)
    elif hazard_class == "not_regulated":
        ph = _maybe(rng, 2.1, 12.4, p_null=0.4)
    return {
        "contains_lithium_cells": hazard_class == "class_9",
        "is_compressed_gas": hazard_class == "class_2"
        or (hazard_class == "class_9" and rng.random() < 0.2),
        "flash_point_c": flash,
        "ph": ph,
    }


def _quantity(hazard_class: str, rule: str, rng: random.Random) -> float:
    limits = LIMITS[hazard_class]
    if limits.passenger_kg is None or limits.cargo_kg is None:
        return round(rng.uniform(0.1, 200.0), 1)
    low, high = limits.passenger_kg, limits.cargo_kg
    if rule == "passenger_ok":
        return low if rng.random() < 0.1 else round(rng.uniform(0.1, low), 1)
    if rule == "cargo_only":
        return high if rng.random() < 0.1 else round(rng.uniform(low + 0.1, high), 1)
    if rule == "over_cargo_limit":
        return round(rng.uniform(high + 0.1, 2 * high), 1)
    return round(rng.uniform(0.1, 1.5 * high), 1)  # uncertified: packaging decides first


def _draw(label: str, rng: random.Random) -> Row:
    hazard_class, rule = label.split(":")
    row = _safety(hazard_class, rng)
    certified = [code for code, (_, ok) in PACKAGING.items() if ok]
    if rule == "uncertified" or (
        hazard_class in ("class_9", "not_regulated") and rng.random() < 0.4
    ):
        code = rng.choice([code for code, (_, ok) in PACKAGING.items() if not ok])
    else:
        code = rng.choice(certified)
    limits = LIMITS[hazard_class]
    name = rng.choice(NAMES[hazard_class])
    row.update(
        product_name=f"{name}, model {rng.choice('ABCDEFGHJK')}{rng.randint(10, 99)}",
        packaging_code=code,
        packaging_description=PACKAGING[code][0],
        un_certified=PACKAGING[code][1],
        net_quantity_kg=_quantity(hazard_class, rule, rng),
        passenger_aircraft_max_kg=limits.passenger_kg,
        cargo_aircraft_max_kg=limits.cargo_kg,
        requires_certified_packaging=limits.certified_packaging,
    )
    return row


def _labels() -> dict[str, float]:
    labels = {"not_regulated:not_regulated": 0.2}
    for hazard_class in ("class_2", "class_3", "class_8", "class_9"):
        rules = CLASS9_AIR_RULES if hazard_class == "class_9" else AIR_RULES
        labels.update({f"{hazard_class}:{rule}": 0.2 * w for rule, w in rules.items()})
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
    codes = rng.sample(range(100_000), sum(sizes))
    rows: list[Row] = []
    for split, n in zip(SPLITS, sizes, strict=True):
        for label in balanced_schedule(_labels(), n, rng):
            i = len(rows)
            row = _draw(label, rng)
            code = f"HZ-{codes[i]:05d}"
            messy = rng.random() < MESSY_RATE
            row.update(
                id=f"{NAME}-{i:04d}",
                split=split,
                product_ref=messy_variant(code, rng) if messy else code,
                product_ref_is_messy=messy,
                product_code=code,
            )
            row["rule"], row["hazard_class"], row["air_transport"] = decide(row)
            if f"{row['hazard_class']}:{row['rule']}" != label:  # a generator bug: fail loudly
                raise AssertionError(f"row {row['id']} drawn for {label}, SOP gives {row['rule']}")
            rows.append(row)
    return render_suite(_suite(), rows, seed, sizes)


def _suite() -> Suite:
    cols = (
        *key_columns(),
        Column("product_ref", "str", "input"),
        Column("packaging_code", "str", "input"),
        Column("net_quantity_kg", "float", "input"),
        Column("product_ref_is_messy", "bool", "hidden"),
        Column("product_code", "str", "hidden"),
        Column("product_name", "str", "hidden"),
        Column("contains_lithium_cells", "bool", "hidden"),
        Column("is_compressed_gas", "bool", "hidden"),
        Column("flash_point_c", "float", "hidden"),
        Column("ph", "float", "hidden"),
        Column("passenger_aircraft_max_kg", "float", "hidden"),
        Column("cargo_aircraft_max_kg", "float", "hidden"),
        Column("requires_certified_packaging", "bool", "hidden"),
        Column("packaging_description", "str", "hidden"),
        Column("un_certified", "bool", "hidden"),
        Column("rule", "str", "hidden"),
        Column("hazard_class", "str", "output"),
        Column("air_transport", "str", "output"),
    )
    product = Param(
        "product_code",
        "Product code in canonical form HZ-NNNNN (upper-case HZ, a dash, five digits).",
        "product_code",
        r"^HZ-[0-9]{5}$",
        "Invalid product_code '{product_code}': expected the canonical form HZ-NNNNN "
        "(upper-case 'HZ', a dash, then five digits), e.g. HZ-04821.",
    )
    hazard = Param(
        "hazard_class",
        "One of class_2, class_3, class_8, class_9, not_regulated.",
        "hazard_class",
        r"^(class_[2389]|not_regulated)$",
        "Invalid hazard_class '{hazard_class}': use one of class_2, class_3, class_8, class_9, "
        "not_regulated.",
    )
    packaging = Param(
        "packaging_code", "Packaging code from the shipping request.", "packaging_code"
    )
    safety = ("product_code", "product_name", "contains_lithium_cells", "is_compressed_gas")
    limits = ("hazard_class", "passenger_aircraft_max_kg", "cargo_aircraft_max_kg")
    tools = (
        lookup_tool(
            "get_safety_data",
            "Returns the safety data sheet facts of a product: name, whether it contains lithium "
            "cells, whether it is a compressed gas, flash point in degrees Celsius and pH (null "
            "when the property does not apply).",
            [product],
            [(c, c) for c in (*safety, "flash_point_c", "ph")],
            cols,
            "No safety data found for product {product_code}.",
        ),
        lookup_tool(
            "get_transport_limits",
            "Returns the per-package air limits of a hazard class in kilograms for passenger and "
            "for cargo aircraft (null: no limit) and whether the class needs UN-certified "
            "packaging.",
            [hazard],
            [(c, c) for c in (*limits, "requires_certified_packaging")],
            cols,
            "No transport limits recorded for hazard class {hazard_class}.",
        ),
        lookup_tool(
            "check_packaging",
            "Describes a packaging code and says whether it is UN-certified for dangerous goods.",
            [packaging],
            [
                ("packaging_code", "packaging_code"),
                ("description", "packaging_description"),
                ("un_certified", "un_certified"),
            ],
            cols,
            "Unknown packaging code '{packaging_code}'.",
        ),
    )
    plan = (
        *recovery_steps(
            "get_safety_data", "product_code", "product_ref", "product_code", "product_ref_is_messy"
        ),
        step("get_transport_limits", {"hazard_class": {"hidden": "hazard_class"}}),
        step("check_packaging", {"packaging_code": {"input": "packaging_code"}}),
    )
    return Suite(
        name=NAME,
        description="Classify outbound packages by hazard and decide which aircraft may take them.",
        sop=SOP,
        columns=cols,
        tools=tools,
        oracle_plan=plan,
        notes=(
            "product_ref is the product code as written on the request; when "
            "product_ref_is_messy it breaks the HZ-NNNNN format and get_safety_data rejects it "
            "until the agent rewrites it (product_code holds the canonical code). "
            "get_transport_limits is keyed by the hazard class the agent derives (an output "
            "column): every row of a class carries the same limits. The oracle plan calls every "
            "tool; the SOP skips check_packaging for classes without a packaging requirement. "
            "'rule' names the SOP step that sets air_transport (bookkeeping, never returned)."
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
