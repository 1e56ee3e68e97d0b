"""The helpdesk's tools: read and change one episode's order/ticket database.

Every tool validates like a production back office would, and a rejected request is a
:class:`~mtrl_gym.ToolError` (the agent reads ``Error: ...`` and can recover), never a silent
no-op. The rules the tools enforce:

- ``update_shipping_address``: only while the order is ``processing``; street, city and the
  country's postcode format are checked.
- ``issue_refund``: only for ``delivered`` orders, at most the order amount, at most two
  decimals, at most the approval limit, and once per order (a second refund is an error, so a
  retried call can never pay twice).
- ``escalate_ticket`` / ``close_ticket``: only on open tickets; teams and resolutions are enums.

What the tools do *not* enforce is left to the policy the agent follows (which team, which
resolution, which amount), and checked by the evaluation against the goal state.

Identifiers the system assigns count up per episode (``RF-10001``, ``ES-10001``), never random,
so that replaying the same actions gives the same observations.

Non-goals: authentication, concurrency between agents (one episode owns one database).
"""

from __future__ import annotations

import math
import re
import sqlite3
from typing import Any, Literal

from mtrl_envs.helpdesk.world import REFUND_LIMIT_CENTS
from mtrl_gym import Tool, ToolError

Country = Literal["US", "CA", "DE", "NL"]
Team = Literal["billing", "shipping", "technical", "fraud"]
Resolution = Literal["answered", "address_changed", "refund_issued", "declined"]

# Postcode patterns with the hint the error shows: the hint is what makes recovery possible.
POSTCODES: dict[str, tuple[re.Pattern[str], str]] = {
    "US": (re.compile(r"\d{5}"), "five digits, e.g. '97201'"),
    "DE": (re.compile(r"\d{5}"), "five digits, e.g. '04109'"),
    "NL": (re.compile(r"\d{4} [A-Z]{2}"), "four digits, a space and two capitals, e.g. '3511 AB'"),
    "CA": (re.compile(r"[A-Z]\d[A-Z] \d[A-Z]\d"), "'A1A 1A1' in capitals with a space"),
}
_CITY_RE = re.compile(r"[^\W\d_][^\W\d_' .-]*(?:[' .-][^\W\d_]+)*")


def _money(cents: int) -> float:
    return cents / 100


class HelpdeskTools:
    """The tools, bound to one episode's sqlite connection.

    Args:
        conn: The episode's database (schema of ``world.SCHEMA``).
    """

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._issued = {"RF-": 0, "ES-": 0}

    def tools(self) -> list[Tool]:
        """The six tools, declared from the methods' signatures and docstrings."""
        methods = (
            self.get_order,
            self.find_customer,
            self.update_shipping_address,
            self.issue_refund,
            self.escalate_ticket,
            self.close_ticket,
        )
        return [Tool.from_function(m) for m in methods]

    # ---- reads -----------------------------------------------------------------------------

    def get_order(self, order_id: str) -> dict[str, Any]:
        """Fetches an order: status, shipping address, amount, items and refunds.

        Args:
            order_id: The order id, e.g. O-4821.
        """
        row = self._order(order_id)
        items = self.conn.execute(
            "SELECT sku, name, quantity, unit_price_cents FROM order_items WHERE order_id = ?"
            " ORDER BY rowid",
            (row["order_id"],),
        ).fetchall()
        refunds = self.conn.execute(
            "SELECT refund_id, amount_cents FROM refunds WHERE order_id = ? ORDER BY rowid",
            (row["order_id"],),
        ).fetchall()
        return {
            "order_id": row["order_id"],
            "customer_id": row["customer_id"],
            "status": row["status"],
            "placed_on": row["placed_on"],
            "shipping_address": {k: row[k] for k in ("street", "city", "postcode", "country")},
            "amount": _money(row["amount_cents"]),
            "items": [
                {"sku": s, "name": n, "quantity": q, "unit_price": _money(p)}
                for s, n, q, p in items
            ],
            "refunds": [{"refund_id": r, "amount": _money(a)} for r, a in refunds],
        }

    def find_customer(self, email: str) -> dict[str, Any]:
        """Finds a customer by email, with their orders, most recent first.

        Args:
            email: The customer's email address.
        """
        row = self.conn.execute(
            "SELECT customer_id, name, email, tier FROM customers WHERE lower(email) = ?",
            (email.strip().lower(),),
        ).fetchone()
        if row is None:
            raise ToolError(f"no customer with email {email!r}")
        orders = self.conn.execute(
            "SELECT order_id, placed_on, status FROM orders WHERE customer_id = ?"
            " ORDER BY placed_on DESC, order_id",
            (row[0],),
        ).fetchall()
        return {
            "customer_id": row[0],
            "name": row[1],
            "email": row[2],
            "tier": row[3],
            "orders": [{"order_id": o, "placed_on": d, "status": s} for o, d, s in orders],
        }

    # ---- changes ---------------------------------------------------------------------------

    def update_shipping_address(
        self, order_id: str, street: str, city: str, postcode: str, country: Country
    ) -> dict[str, Any]:
        """Changes the shipping address of an order that has not shipped yet.

        Args:
            order_id: The order id.
            street: House number and street, e.g. 12 Canal Road.
            city: City name.
            postcode: Postcode in the country's format.
            country: Two-letter country code.
        """
        row = self._order(order_id)
        if row["status"] != "processing":
            raise ToolError(
                f"cannot change the address of order {row['order_id']}: it is {row['status']}; "
                "only processing orders can be changed"
            )
        street, city, postcode = street.strip(), city.strip(), postcode.strip()
        if not (
            3 <= len(street) <= 80 and re.search(r"\d", street) and re.search(r"[^\W\d_]", street)
        ):
            raise ToolError(f"invalid street {street!r}: give a house number and a street name")
        if not (2 <= len(city) <= 40 and _CITY_RE.fullmatch(city)):
            raise ToolError(f"invalid city {city!r}: letters, spaces, hyphens and apostrophes only")
        pattern, hint = POSTCODES[country]
        if not pattern.fullmatch(postcode):
            raise ToolError(f"invalid postcode {postcode!r} for {country}: expected {hint}")
        self.conn.execute(
            "UPDATE orders SET street = ?, city = ?, postcode = ?, country = ? WHERE order_id = ?",
            (street, city, postcode, country, row["order_id"]),
        )
        self.conn.commit()
        return {
            "order_id": row["order_id"],
            "shipping_address": {
                "street": street,
                "city": city,
                "postcode": postcode,
                "country": country,
            },
        }

    def issue_refund(self, order_id: str, amount: float, reason: str) -> dict[str, Any]:
        """Refunds money on a delivered order (one refund per order).

        Args:
            order_id: The order id.
            amount: Amount in dollars, at most two decimals, e.g. 24.99.
            reason: Short reason for the refund, e.g. item damaged.
        """
        row = self._order(order_id)
        earlier = self.conn.execute(
            "SELECT refund_id FROM refunds WHERE order_id = ?", (row["order_id"],)
        ).fetchone()
        if earlier is not None:
            raise ToolError(f"order {row['order_id']} was already refunded ({earlier[0]})")
        if row["status"] != "delivered":
            raise ToolError(
                f"order {row['order_id']} is not eligible for a refund: it is {row['status']}; "
                "only delivered orders can be refunded"
            )
        if not math.isfinite(amount):  # json.loads accepts NaN and Infinity
            raise ToolError(f"invalid amount {amount!r}")
        cents = round(amount * 100)
        if abs(amount * 100 - cents) > 1e-6 or cents <= 0:
            raise ToolError(f"invalid amount {amount!r}: a positive amount with at most 2 decimals")
        if cents > row["amount_cents"]:
            limit = _money(row["amount_cents"])
            raise ToolError(f"amount {amount} exceeds the order amount {limit}")
        if cents > REFUND_LIMIT_CENTS:
            raise ToolError(
                f"refunds above {_money(REFUND_LIMIT_CENTS)} need approval by the billing team"
            )
        if not reason.strip():
            raise ToolError("give a reason for the refund")
        refund_id = self._next_id("RF-")
        self.conn.execute(
            "INSERT INTO refunds (refund_id, order_id, amount_cents, reason) VALUES (?, ?, ?, ?)",
            (refund_id, row["order_id"], cents, reason.strip()),
        )
        self.conn.commit()
        return {"refund_id": refund_id, "order_id": row["order_id"], "amount": _money(cents)}

    def escalate_ticket(self, ticket_id: str, team: Team, note: str) -> dict[str, Any]:
        """Hands an open ticket over to another team.

        Args:
            ticket_id: The ticket id, e.g. T-1234.
            team: The team that takes the ticket over.
            note: What the team needs to know.
        """
        self._open_ticket(ticket_id)
        if not note.strip():
            raise ToolError("give the team a note")
        escalation_id = self._next_id("ES-")
        self.conn.execute(
            "INSERT INTO escalations (escalation_id, ticket_id, team, note) VALUES (?, ?, ?, ?)",
            (escalation_id, ticket_id, team, note.strip()),
        )
        self.conn.execute(
            "UPDATE tickets SET status = 'escalated' WHERE ticket_id = ?", (ticket_id,)
        )
        self.conn.commit()
        return {"escalation_id": escalation_id, "ticket_id": ticket_id, "team": team}

    def close_ticket(self, ticket_id: str, resolution: Resolution) -> dict[str, Any]:
        """Closes an open ticket with its resolution.

        Args:
            ticket_id: The ticket id.
            resolution: How the request was resolved.
        """
        self._open_ticket(ticket_id)
        self.conn.execute(
            "UPDATE tickets SET status = 'closed', resolution = ? WHERE ticket_id = ?",
            (resolution, ticket_id),
        )
        self.conn.commit()
        return {"ticket_id": ticket_id, "status": "closed", "resolution": resolution}

    # ---- helpers ---------------------------------------------------------------------------

    def _order(self, order_id: str) -> dict[str, Any]:
        cursor = self.conn.execute("SELECT * FROM orders WHERE order_id = ?", (order_id.strip(),))
        row = cursor.fetchone()
        if row is None:
            raise ToolError(f"no order {order_id!r}")
        return dict(zip([d[0] for d in cursor.description], row, strict=True))

    def _open_ticket(self, ticket_id: str) -> None:
        row = self.conn.execute(
            "SELECT status FROM tickets WHERE ticket_id = ?", (ticket_id,)
        ).fetchone()
        if row is None:
            raise ToolError(f"no ticket {ticket_id!r}")
        if row[0] != "open":
            owner = "" if row[0] == "closed" else " (the team it went to owns it now)"
            raise ToolError(f"ticket {ticket_id} is {row[0]}{owner}")

    def _next_id(self, prefix: str) -> str:
        # Above the four-digit ids of the initial data, so new ids never collide with them.
        self._issued[prefix] += 1
        return f"{prefix}{10_000 + self._issued[prefix]}"
