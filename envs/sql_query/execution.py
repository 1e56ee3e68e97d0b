"""Running SQL for SqlQuery in the sandbox, and comparing result sets.

Every query, the agent's and the gold one alike, runs through ``mtrl_gym.sandbox.run_sql``: on a
private copy of the episode's database, opened read-only, in a subprocess with a wall clock and
memory, CPU and output limits. Fault assignment follows the framework's rule:

- the query failed, ran too long or returned too much: the agent's mistake, a
  :class:`~mtrl_gym.ToolError` (``Error: ...``, the episode goes on);
- the sandbox could not run at all: :class:`~mtrl_gym.sandbox.SandboxInfraError` propagates, and
  the episode ends with status ``infra_error`` (excluded from training, not scored 0).

Result sets compare by value, ignoring column names: numbers compare numerically (``3`` equals
``3.0``; other floats to six decimals), rows as multisets unless the question fixes their order.

Non-goals: SQL dialects other than SQLite, and semantic query equivalence (results decide).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtrl_gym import ToolError
from mtrl_gym.sandbox import SandboxLimits, run_sql

# Output up to 1 MiB: far above any honest answer here, small enough to bound a cross join.
DEFAULT_LIMITS = SandboxLimits(timeout_s=5.0, memory_mb=256, max_output_bytes=1 << 20)

_HINTS = {
    "timeout": "the query ran too long; simplify it",
    "output_limit": "the result is too large; aggregate or add a LIMIT",
    "memory_limit": "the query used too much memory",
    "cpu_limit": "the query used too much CPU time",
}


@dataclass(frozen=True)
class ResultSet:
    """Columns and rows returned by one query (cells as JSON values)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


def execute(sql: str, database: Path, limits: SandboxLimits = DEFAULT_LIMITS) -> ResultSet:
    """Runs one read-only statement on a copy of ``database`` in the sandbox.

    Raises:
        ToolError: The statement failed or exceeded a limit (the author's mistake).
        SandboxInfraError: The sandbox could not run it.
    """
    result = run_sql(sql, database=database, read_only=True, limits=limits)
    if result.status == "error":
        raise ToolError(result.stderr.strip() or result.detail or "the query failed")
    if not result.ok:
        raise ToolError(f"{result.detail or result.status}: {_HINTS.get(result.status, '')}")
    # The runner prints exactly one JSON line on success; anything else is the runner's bug (the
    # plain exception becomes status infra_error in a tool call, and propagates from grading).
    payload = json.loads(result.stdout)
    return ResultSet(tuple(payload["columns"]), tuple(tuple(row) for row in payload["rows"]))


def render(result: ResultSet, max_rows: int) -> str:
    """The observation for a query result: JSON with at most ``max_rows`` rows."""
    shown: dict[str, Any] = {
        "columns": list(result.columns),
        "rows": [list(r) for r in result.rows[:max_rows]],
        "row_count": len(result.rows),
    }
    if len(result.rows) > max_rows:
        shown["note"] = f"only the first {max_rows} of {len(result.rows)} rows are shown"
    return json.dumps(shown, ensure_ascii=False)


def _normal_cell(value: Any) -> Any:
    if isinstance(value, bool):  # not produced by SQLite, but never let True equal 1
        return value
    if isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
            return int(number)
        return round(number, 6) if math.isfinite(number) else str(number)
    return value


def _normal_rows(result: ResultSet) -> list[str]:
    return [json.dumps([_normal_cell(c) for c in row]) for row in result.rows]


def compare(expected: ResultSet, actual: ResultSet, *, ordered: bool) -> str | None:
    """Why ``actual`` is not the expected result, or ``None`` when it is.

    >>> gold = ResultSet(("n",), ((3,), (1,)))
    >>> compare(gold, ResultSet(("count",), ((1.0,), (3,))), ordered=False) is None
    True
    >>> compare(gold, ResultSet(("n",), ((1,), (3,))), ordered=True)
    'the rows are right but in the wrong order'
    """
    if len(expected.columns) != len(actual.columns):
        return f"expected {len(expected.columns)} column(s), got {len(actual.columns)}"
    want, got = _normal_rows(expected), _normal_rows(actual)
    if len(want) != len(got):
        return f"expected {len(want)} row(s), got {len(got)}"
    if sorted(want) != sorted(got):
        return "the rows differ from the expected result"
    if ordered and want != got:
        return "the rows are right but in the wrong order"
    return None
