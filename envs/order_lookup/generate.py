"""Deterministic generator of the OrderLookup recordings and tasks.

Run ``python -m mtrl_envs.order_lookup.generate [--seed S] [--tasks N] [--out DIR]`` to regenerate
(or scale) the shipped files in ``data/``. The same seed always writes byte-identical files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np

TODAY = dt.date(2026, 3, 1)
STATUSES = ("delivered", "delivered", "shipped", "processing", "cancelled")
TIERS = ("standard", "standard", "gold")


def return_allowed(order: dict, customer: dict, today: dt.date = TODAY) -> bool:
    """The returns policy the SOP states (the oracle and the answers use this one function)."""
    if order["status"] != "delivered" or customer["returns_blocked"]:
        return False
    window = 60 if customer["tier"] == "gold" else 30
    delivered = dt.date.fromisoformat(order["delivered_on"])
    return (today - delivered).days <= window


def generate(seed: int = 0, n_tasks: int = 12) -> tuple[list[dict], list[dict]]:
    """Returns ``(recordings, tasks)`` as JSON-ready dicts."""
    rng = np.random.default_rng(seed)
    recordings: list[dict] = []
    tasks: list[dict] = []
    for i in range(n_tasks):
        order_id = f"O-{1000 + i * 7}"
        customer_id = f"C-{300 + i * 11}"
        status = STATUSES[int(rng.integers(len(STATUSES)))]
        delivered = TODAY - dt.timedelta(days=int(rng.integers(1, 90)))
        order = {
            "order_id": order_id,
            "customer_id": customer_id,
            "status": status,
            "delivered_on": delivered.isoformat() if status == "delivered" else None,
            "total": round(float(rng.uniform(5, 500)), 2),
        }
        customer = {
            "customer_id": customer_id,
            "tier": TIERS[int(rng.integers(len(TIERS)))],
            "returns_blocked": bool(rng.random() < 0.15),
        }
        order_rec = {"tool": "get_order", "arguments": {"order_id": order_id}}
        if i % 4 == 3:  # every fourth order needs a retry: the service fails once
            order_rec["sequence"] = [
                {"error": "upstream order service timed out; retry the same request"},
                {"response": order},
            ]
        else:
            order_rec["response"] = order
        recordings.append(order_rec)
        recordings.append(
            {
                "tool": "get_customer",
                "arguments": {"customer_id": customer_id},
                "response": customer,
            }
        )
        allowed = order["status"] == "delivered" and return_allowed(order, customer)
        tasks.append(
            {
                "id": f"order-{i:03d}",
                "prompt": (
                    f"A customer asks about order {order_id}: what is its status, and can "
                    "they return it?"
                ),
                "answer": {"order_status": status, "return_allowed": allowed},
            }
        )
    return recordings, tasks


def main() -> None:
    """Writes ``recordings.jsonl`` and ``tasks.jsonl``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    recordings, tasks = generate(args.seed, args.tasks)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("recordings.jsonl", recordings), ("tasks.jsonl", tasks)):
        with open(args.out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)


if __name__ == "__main__":
    main()
