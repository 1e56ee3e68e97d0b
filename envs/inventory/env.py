"""Inventory: stateful tools over a per-episode sqlite database.

Each episode gets its own warehouse database (a real sqlite file in a private temporary
directory, created at reset and deleted at the next reset or close). The agent applies a list of
stock movements with ``adjust_stock`` and reports the final levels. The reward checks the answer;
the external evaluation checks the *database*: success means the movements were really applied
and the reported levels are right, which a reward on the answer alone cannot tell.

Non-goals: concurrency control between agents (one episode owns one database).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mtrl_gym import EpisodeResources, EpisodeSummary, Task, TextEnv, Tool, ToolError
from mtrl_gym.evaluation import field_matches

SYSTEM = """You are a warehouse assistant. Apply every stock movement in the request with
adjust_stock (positive quantities for receipts, negative for shipments), then report the final
stock of every SKU you changed as <final_output>{"<sku>": <units>, ...}</final_output>.
A shipment larger than the stock on hand is rejected by the system; report the level as it is."""

SKUS = ("BOLT-M4", "NUT-M4", "WASHER-8", "GEAR-12T", "BELT-300", "SPRING-S", "CLIP-A", "PIN-3")


def make_task(index: int) -> Task:
    """Builds task ``index`` deterministically (its initial stock and its movements)."""
    rng = np.random.default_rng(10_000 + index)
    skus = [SKUS[i] for i in rng.choice(len(SKUS), size=4, replace=False)]
    stock = {s: int(rng.integers(0, 50)) for s in skus}
    moves = []
    for sku in rng.choice(skus, size=int(rng.integers(2, 4)), replace=False):
        qty = int(rng.integers(1, 40)) * (1 if rng.random() < 0.5 else -1)
        moves.append((str(sku), qty))
    final = dict(stock)
    for sku, qty in moves:
        if final[sku] + qty >= 0:  # oversized shipments are rejected, as the SOP says
            final[sku] += qty
    lines = "\n".join(f"- {'receive' if q > 0 else 'ship'} {abs(q)} x {s}" for s, q in moves)
    return Task(
        id=f"inventory-{index:03d}",
        prompt=f"Apply these stock movements:\n{lines}",
        system=SYSTEM,
        answer={s: final[s] for s, _ in moves},
        metadata={"initial": stock, "moves": moves},
    )


class InventoryEnv(TextEnv):
    """Stock movements against a private sqlite database per episode.

    Args:
        num_tasks: How many deterministic tasks the environment serves.
        **kwargs: Passed to :class:`~mtrl_gym.TextEnv`.
    """

    def __init__(self, *, num_tasks: int = 32, **kwargs: Any):
        kwargs.setdefault("evaluator", self._evaluate)
        super().__init__(**kwargs)
        self._tasks = tuple(make_task(i) for i in range(num_tasks))
        self._db: Any = None

    def tasks(self) -> Sequence[Task]:
        """The deterministic task list."""
        return self._tasks

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """Creates the episode's database and the tools bound to it."""
        path = resources.tempdir(prefix="mtrl-inventory-") / "warehouse.db"
        db = resources.sqlite(path)
        db.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, units INTEGER NOT NULL)")
        db.execute("CREATE TABLE movements (id TEXT, sku TEXT, delta INTEGER, reason TEXT)")
        db.executemany("INSERT INTO stock VALUES (?, ?)", sorted(task.metadata["initial"].items()))
        db.commit()
        self._db = db

        def get_stock(sku: str) -> dict[str, Any]:
            """Returns the units on hand for a SKU.

            Args:
                sku: The stock-keeping unit, e.g. BOLT-M4.
            """
            row = db.execute("SELECT units FROM stock WHERE sku = ?", (sku,)).fetchone()
            if row is None:
                raise ToolError(f"unknown SKU {sku!r}")
            return {"sku": sku, "units": row[0]}

        def adjust_stock(sku: str, delta: int, reason: str = "") -> dict[str, Any]:
            """Adds (positive) or removes (negative) units of a SKU and records the movement.

            Args:
                sku: The stock-keeping unit.
                delta: Units to add (receipt) or remove (shipment, negative).
                reason: Free-text reason for the audit log.
            """
            units = get_stock(sku)["units"]
            if units + delta < 0:
                raise ToolError(f"cannot ship {-delta} x {sku}: only {units} on hand")
            movement_id = resources.new_id("mv-")
            db.execute("UPDATE stock SET units = ? WHERE sku = ?", (units + delta, sku))
            db.execute(
                "INSERT INTO movements VALUES (?, ?, ?, ?)", (movement_id, sku, delta, reason)
            )
            db.commit()
            return {"movement_id": movement_id, "sku": sku, "units": units + delta}

        return [Tool.from_function(get_stock), Tool.from_function(adjust_stock)]

    def _evaluate(self, episode: EpisodeSummary) -> dict[str, Any]:
        """Success = the database holds the expected levels and the answer reports them."""
        expected = episode.task.answer
        levels = dict(self._db.execute("SELECT sku, units FROM stock").fetchall())
        db_ok = all(levels.get(s) == u for s, u in expected.items())
        fields = field_matches(episode.answer_value, expected)
        answered = str(episode.status) == "ok" and all(fields.values())
        return {
            "success": db_ok and answered,
            "database_correct": db_ok,
            "answer_correct": answered,
        }

    def oracle_policy(self) -> Callable[[str, dict[str, Any]], str]:
        """Applies each movement, then reports the levels it read back from the tools."""
        assert self.task is not None
        moves = list(self.task.metadata["moves"])
        levels = dict(self.task.metadata["initial"])
        fmt = self.format
        pending = list(moves)

        def policy(observation: str, info: dict[str, Any]) -> str:
            for m in info.get("messages", []):
                if m["role"] == "tool" and not m["content"].startswith("Error:"):
                    out = json.loads(m["content"])
                    levels[out["sku"]] = out["units"]
            if pending:
                sku, qty = pending.pop(0)
                return fmt.render_calls([("adjust_stock", {"sku": sku, "delta": qty})])
            answer = {s: levels[s] for s, _ in moves}
            return f"<final_output>{json.dumps(answer)}</final_output>"

        return policy
