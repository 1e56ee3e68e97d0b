"""The helpdesk's world: shop data generated from a seed, its sqlite schema, and state snapshots.

A *world* is every row of one episode's database: customers, their orders (status, shipping
address, amount) and order lines, support tickets, refunds and escalations. :func:`random_world`
draws a plausible shop from a seed; :mod:`mtrl_envs.helpdesk.scenarios` then plants the order and
ticket a request is about. The same seed always gives the same rows, which is what lets the
evaluation rebuild the expected final state from the task alone.

:func:`snapshot` reads a database back in the form the evaluation compares: every table's rows as
sorted canonical JSON, restricted to the columns whose values a correct agent determines (ids the
system assigns and free-text notes are left out, so two correct runs compare equal).

Non-goals: a realistic catalogue or address book (short fixed lists keep the tasks readable).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TODAY = dt.date(2026, 3, 1)
COUNTRIES = ("US", "CA", "DE", "NL")
TEAMS = ("billing", "shipping", "technical", "fraud")
RESOLUTIONS = ("answered", "address_changed", "refund_issued", "declined")
# Refunds above this need the billing team's approval (the refund tool enforces it).
REFUND_LIMIT_CENTS = 20_000

SCHEMA = """
CREATE TABLE customers (
    customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL);
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers,
    status TEXT NOT NULL, placed_on TEXT NOT NULL, street TEXT NOT NULL, city TEXT NOT NULL,
    postcode TEXT NOT NULL, country TEXT NOT NULL, amount_cents INTEGER NOT NULL);
CREATE TABLE order_items (
    order_id TEXT NOT NULL REFERENCES orders, sku TEXT NOT NULL, name TEXT NOT NULL,
    quantity INTEGER NOT NULL, unit_price_cents INTEGER NOT NULL);
CREATE TABLE tickets (
    ticket_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers,
    order_id TEXT REFERENCES orders, subject TEXT NOT NULL, status TEXT NOT NULL,
    resolution TEXT);
CREATE TABLE refunds (
    refund_id TEXT PRIMARY KEY, order_id TEXT NOT NULL REFERENCES orders,
    amount_cents INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE escalations (
    escalation_id TEXT PRIMARY KEY, ticket_id TEXT NOT NULL REFERENCES tickets,
    team TEXT NOT NULL, note TEXT NOT NULL);
"""

# Columns each table is compared on. System-assigned ids (refund_id, escalation_id) and free
# text (reason, note) are excluded: they differ between equally correct runs.
COMPARED_COLUMNS: dict[str, tuple[str, ...]] = {
    "customers": ("customer_id", "name", "email", "tier"),
    "orders": (
        "order_id",
        "customer_id",
        "status",
        "placed_on",
        "street",
        "city",
        "postcode",
        "country",
        "amount_cents",
    ),
    "order_items": ("order_id", "sku", "name", "quantity", "unit_price_cents"),
    "tickets": ("ticket_id", "customer_id", "order_id", "subject", "status", "resolution"),
    "refunds": ("order_id", "amount_cents"),
    "escalations": ("ticket_id", "team"),
}

FIRST_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Greta", "Hugo", "Iris", "Jonas")
LAST_NAMES = ("Okafor", "Lindqvist", "Moreau", "Tanaka", "Silva", "Novak", "Byrne", "Haddad")
# (sku, name, unit price in cents); the last two cost more than the refund limit on their own.
CATALOG = (
    ("MS-220", "wireless mouse", 2499),
    ("KB-101", "mechanical keyboard", 8999),
    ("HD-310", "headset", 5950),
    ("CB-005", "USB-C cable", 1299),
    ("LM-044", "desk lamp", 3475),
    ("WC-900", "webcam", 6900),
    ("MN-270", "27-inch monitor", 32900),
    ("CH-800", "office chair", 24500),
)
CHEAP_ITEMS = tuple(range(6))
EXPENSIVE_ITEMS = (6, 7)
STREETS = ("Maple Street", "Canal Road", "Harbour Lane", "Birch Avenue", "Mill Road", "Park Row")
CITIES = {
    "US": ("Portland", "Austin", "Madison"),
    "CA": ("Ottawa", "Halifax", "Victoria"),
    "DE": ("Leipzig", "Bremen", "Freiburg"),
    "NL": ("Utrecht", "Leiden", "Delft"),
}
SUBJECTS = ("Question about my order", "Order issue", "Need help", "Problem with delivery")


@dataclass
class World:
    """All rows of one episode's database, table by table (each row a column -> value dict)."""

    tables: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {name: [] for name in COMPARED_COLUMNS}
    )

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The rows of ``table`` (mutable: scenarios edit them in place)."""
        return self.tables[table]

    def find(self, table: str, **where: Any) -> dict[str, Any]:
        """The single row of ``table`` matching every ``column=value`` in ``where``."""
        hits = [r for r in self.tables[table] if all(r[k] == v for k, v in where.items())]
        if len(hits) != 1:
            raise LookupError(f"{len(hits)} rows of {table} match {where}")
        return hits[0]


class IdPool:
    """Distinct four-digit identifiers with a prefix, drawn from the scenario's generator."""

    def __init__(self, rng: np.random.Generator):
        self._numbers = [int(n) for n in rng.permutation(np.arange(1000, 10_000))[:200]]

    def take(self, prefix: str) -> str:
        """The next unused identifier, e.g. ``O-4821``."""
        return f"{prefix}{self._numbers.pop()}"


def random_postcode(rng: np.random.Generator, country: str) -> str:
    """A postcode in the country's canonical format (the one the address tool accepts)."""
    digits = "0123456789"
    letters = "ABCEGHJKLMNPRSTVXY"  # no letters that read like digits (I, O, ...)

    def pick(alphabet: str) -> str:
        return alphabet[int(rng.integers(len(alphabet)))]

    if country in ("US", "DE"):
        return str(int(rng.integers(10_000, 100_000)))
    if country == "NL":
        return f"{int(rng.integers(1000, 10_000))} {pick(letters)}{pick(letters)}"
    return (
        f"{pick(letters)}{pick(digits)}{pick(letters)} {pick(digits)}{pick(letters)}{pick(digits)}"
    )


def random_address(rng: np.random.Generator, country: str | None = None) -> dict[str, str]:
    """A valid shipping address (``street``, ``city``, ``postcode``, ``country``)."""
    country = country or COUNTRIES[int(rng.integers(len(COUNTRIES)))]
    return {
        "street": f"{int(rng.integers(1, 200))} {STREETS[int(rng.integers(len(STREETS)))]}",
        "city": CITIES[country][int(rng.integers(len(CITIES[country])))],
        "postcode": random_postcode(rng, country),
        "country": country,
    }


def add_order(
    world: World,
    rng: np.random.Generator,
    *,
    order_id: str,
    customer_id: str,
    status: str,
    placed_on: dt.date,
    items: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    """Adds an order with lines ``(catalog index, quantity)``; its amount is their sum."""
    amount = 0
    for index, quantity in items:
        sku, name, price = CATALOG[index]
        world.rows("order_items").append(
            {
                "order_id": order_id,
                "sku": sku,
                "name": name,
                "quantity": quantity,
                "unit_price_cents": price,
            }
        )
        amount += quantity * price
    order = {
        "order_id": order_id,
        "customer_id": customer_id,
        "status": status,
        "placed_on": placed_on.isoformat(),
        **random_address(rng),
        "amount_cents": amount,
    }
    world.rows("orders").append(order)
    return order


def random_items(rng: np.random.Generator, choices: Sequence[int] = CHEAP_ITEMS) -> list[tuple]:
    """One to three distinct order lines of one or two units each."""
    n = int(rng.integers(1, 4))
    picked = rng.choice(len(choices), size=n, replace=False)
    return [(choices[int(i)], int(rng.integers(1, 3))) for i in picked]


def random_world(rng: np.random.Generator, ids: IdPool) -> World:
    """Four to six customers with one to three orders each, some refunds and old tickets."""
    world = World()
    n_customers = int(rng.integers(4, 7))
    first = rng.choice(len(FIRST_NAMES), size=n_customers, replace=False)
    for i in range(n_customers):
        name = f"{FIRST_NAMES[int(first[i])]} {LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]}"
        customer_id = ids.take("C-")
        world.rows("customers").append(
            {
                "customer_id": customer_id,
                "name": name,
                "email": f"{name.lower().replace(' ', '.')}@example.com",
                "tier": "gold" if rng.random() < 0.25 else "standard",
            }
        )
        for _ in range(int(rng.integers(1, 4))):
            status = ("processing", "shipped", "delivered", "cancelled")[int(rng.integers(4))]
            order = add_order(
                world,
                rng,
                order_id=ids.take("O-"),
                customer_id=customer_id,
                status=status,
                placed_on=TODAY - dt.timedelta(days=int(rng.integers(10, 120))),
                items=random_items(rng),
            )
            if status == "delivered" and rng.random() < 0.3:
                world.rows("refunds").append(
                    {
                        "refund_id": ids.take("RF-"),
                        "order_id": order["order_id"],
                        "amount_cents": order["amount_cents"],
                        "reason": "earlier refund",
                    }
                )
            if rng.random() < 0.3:
                world.rows("tickets").append(
                    {
                        "ticket_id": ids.take("T-"),
                        "customer_id": customer_id,
                        "order_id": order["order_id"],
                        "subject": SUBJECTS[int(rng.integers(len(SUBJECTS)))],
                        "status": "closed",
                        "resolution": "answered",
                    }
                )
    return world


def create_database(conn: sqlite3.Connection, world: World) -> None:
    """Creates the schema and inserts every row of ``world``."""
    conn.executescript(SCHEMA)
    for table, rows in world.tables.items():
        for row in rows:
            columns = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))
    conn.commit()


State = dict[str, list[str]]


def _canonical(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    return sorted(json.dumps([row[c] for c in columns]) for row in rows)


def snapshot(conn: sqlite3.Connection) -> State:
    """The database's compared state: per table, its rows as sorted canonical JSON lists."""
    state: State = {}
    for table, columns in COMPARED_COLUMNS.items():
        cursor = conn.execute(f"SELECT {', '.join(columns)} FROM {table}")
        state[table] = _canonical([dict(zip(columns, r, strict=True)) for r in cursor], columns)
    return state


def apply_changes(state: State, changes: Sequence[Mapping[str, Any]]) -> State:
    """The state after a task's goal ``changes`` (``update`` by key, or ``insert``).

    An update names its row by ``key`` (column -> value) and gives the new values in ``set``; an
    insert gives the compared columns of the new row in ``row``.
    """
    tables = {t: [json.loads(r) for r in rows] for t, rows in state.items()}
    for change in changes:
        table, columns = change["table"], COMPARED_COLUMNS[change["table"]]
        if change["op"] == "insert":
            tables[table].append([change["row"][c] for c in columns])
            continue
        key = change["key"]
        hits = [r for r in tables[table] if all(r[columns.index(k)] == v for k, v in key.items())]
        if len(hits) != 1:
            raise LookupError(f"goal update of {table} {key} matches {len(hits)} rows")
        for column, value in change["set"].items():
            hits[0][columns.index(column)] = value
    return {t: sorted(json.dumps(r) for r in rows) for t, rows in tables.items()}


def diff_states(expected: State, actual: State, limit: int = 5) -> dict[str, dict[str, list]]:
    """Per table, rows the goal has and the database lacks (``missing``) and the reverse."""
    out: dict[str, dict[str, list]] = {}
    for table in expected:
        want, have = list(expected[table]), list(actual.get(table, []))
        for row in list(want):
            if row in have:
                have.remove(row)
                want.remove(row)
        if want or have:
            out[table] = {
                "missing": [json.loads(r) for r in want[:limit]],
                "unexpected": [json.loads(r) for r in have[:limit]],
            }
    return out
