"""Shared building blocks of the authored SOP suite generators.

A generator describes its suite as plain data (columns, tools, oracle plan, SOP text) plus the task
rows, and :func:`render_suite` turns that into the six files of the suite folder in one canonical
form. Keeping the rendering here means every suite follows the same ``sop-tool-behavior/1``
conventions (lookup tools over the task table with ``pandas_eq``, ``on_multiple: "first"``, casts
that match the column types) and the same seed always gives byte-identical files.

Cells are written so that pandas, reading them with the suite's ``column_types``, prints them back
unchanged (``True``, ``12``, ``2.5``): the engine presents inputs as ``str(value)``.

Non-goals: domain logic (each generator owns its procedure and its rows) and reading suites back
(the engine ``mtrl_envs.sop`` does that).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ColumnType = Literal["str", "int", "float", "bool"]
Role = Literal["key", "input", "hidden", "output"]
Row = dict[str, Any]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Only an empty cell is missing. No cell in any suite spells a pandas default NA token ("NA",
# "None", "null", ...), so a reader that keeps pandas' defaults sees the same table.
NA_VALUES: tuple[str, ...] = ("",)
MANIFEST: dict[str, str] = {
    "format": "mtrl-sop-suite/1",
    "sop": "sop.txt",
    "toolspecs": "tools.json",
    "metadata": "metadata.json",
    "behavior": "behavior.json",
}
TASKS_CSV = "tasks.csv"
_RENDERING = {
    "ok": "json.dumps(result) with Python defaults (', ' and ': ' separators, NaN as NaN), keys in "
    "the order the fields are listed",
    "error": "'Error: ' + message",
}


@dataclass(frozen=True)
class Column:
    """One column of the task table.

    Attributes:
        name: Column name in ``tasks.csv``.
        type: The ``column_types`` entry (``str``, ``int``, ``float`` or ``bool``).
        role: ``key`` (``id``/``split``), ``input`` (shown to the agent), ``hidden`` (only
            reachable through tools, or bookkeeping) or ``output`` (the answer).
    """

    name: str
    type: ColumnType
    role: Role


@dataclass(frozen=True)
class Param:
    """A string argument of a lookup tool, matched against one column.

    Attributes:
        name: Argument name.
        description: What the argument is, for the tool spec (state the canonical format here).
        column: The table column the argument must equal.
        pattern: A full-match regex checked before the lookup, or None for no check.
        format_error: The message (``{name}`` placeholders allowed) when ``pattern`` fails.
    """

    name: str
    description: str
    column: str
    pattern: str | None = None
    format_error: str = ""


@dataclass(frozen=True, kw_only=True)
class Suite:
    """Everything a suite's files are rendered from, except the rows.

    Attributes:
        name: Suite name (the folder name).
        description: One sentence for ``metadata.json``.
        sop: The procedure text, written to ``sop.txt``.
        columns: Every column of ``tasks.csv``, in file order (``id`` and ``split`` first).
        tools: ``(toolSpec, behaviour)`` pairs, as :func:`lookup_tool` returns them.
        oracle_plan: Steps as :func:`step` returns them.
        notes: Free text for ``behavior.json``'s ``task.notes``.
    """

    name: str
    description: str
    sop: str
    columns: tuple[Column, ...]
    tools: tuple[tuple[dict[str, Any], dict[str, Any]], ...]
    oracle_plan: tuple[dict[str, Any], ...]
    notes: str

    def names(self, role: Role) -> list[str]:
        """Returns the column names with ``role``, in file order."""
        return [c.name for c in self.columns if c.role == role]


def key_columns() -> tuple[Column, Column]:
    """Returns the ``id`` and ``split`` columns every suite starts with."""
    return Column("id", "str", "key"), Column("split", "str", "key")


def lookup_tool(
    name: str,
    description: str,
    params: Sequence[Param],
    returns: Sequence[tuple[str, str]],
    columns: Sequence[Column],
    not_found: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Builds the tool spec and the ``lookup`` behaviour of a tool that reads one table row.

    Args:
        name: Tool name.
        description: Tool description shown to the agent.
        params: The arguments, all required strings, each matched to a column.
        returns: ``(key, column)`` pairs of the result object, in order.
        columns: The suite's columns (their types pick each field's cast).
        not_found: Error message when no row matches (``{arg}`` placeholders allowed).

    Returns:
        ``(tool_spec, behaviour)``.
    """
    types = {c.name: c.type for c in columns}
    spec = {
        "toolSpec": {
            "name": name,
            "description": description,
            "inputSchema": {
                "json": {
                    "type": "object",
                    "properties": {
                        p.name: {"type": "string", "description": p.description} for p in params
                    },
                    "required": [p.name for p in params],
                }
            },
        }
    }
    validate: list[dict[str, Any]] = [
        {"rule": "truthy", "args": [p.name], "error": f"Missing required parameter: {p.name}"}
        for p in params
    ]
    validate += [
        {"rule": "regex", "arg": p.name, "pattern": p.pattern, "error": p.format_error}
        for p in params
        if p.pattern is not None
    ]
    behaviour = {
        "kind": "lookup",
        "params": {"required": [p.name for p in params], "optional": {}, "reject_unknown": True},
        "validate": validate,
        "lookup": {
            "table": "main",
            "compare": "pandas_eq",
            "match": [{"column": p.column, "arg": p.name} for p in params],
            "on_none": {"error": not_found},
            # Rows sharing a key (a category, a plan) carry identical values, so "first" is exact.
            "on_multiple": "first",
        },
        # Every field may be null in principle; "null" renders a missing cell as JSON null.
        "returns": {
            "shape": "object",
            "fields": [
                {"key": key, "column": col, "cast": types[col], "on_null": "null"}
                for key, col in returns
            ],
        },
    }
    return spec, behaviour


def step(
    tool: str,
    args: Mapping[str, Mapping[str, Any]],
    *,
    when: Mapping[str, Any] | None = None,
    expect: str | Mapping[str, Any] = "ok",
) -> dict[str, Any]:
    """Returns one oracle-plan step (``when`` is left out when None)."""
    out: dict[str, Any] = {"tool": tool, "args": dict(args)}
    if when is not None:
        out["when"] = dict(when)
    out["expect"] = expect if isinstance(expect, str) else dict(expect)
    return out


def recovery_steps(
    tool: str, param: str, raw_column: str, clean_column: str, messy_column: str
) -> list[dict[str, Any]]:
    """Returns the two oracle steps of a format recovery: raw call (fails when messy), then retry.

    Args:
        tool: The tool whose argument has a ``regex`` rule.
        param: That argument.
        raw_column: Input column holding the id as the customer typed it.
        clean_column: Hidden column holding the canonical id.
        messy_column: Hidden bool column, true when the raw id breaks the format.

    Returns:
        Two steps; the retry runs only on messy rows.
    """
    messy = {"row_truthy": messy_column}
    return [
        step(tool, {param: {"input": raw_column}}, expect={"error_when": messy}),
        step(tool, {param: {"hidden": clean_column}}, when=messy),
    ]


def messy_variant(canonical: str, rng: random.Random) -> str:
    """Returns ``canonical`` (``PREFIX-DIGITS``) as a person might type it; never canonical.

    >>> sorted({messy_variant("ORD-000123", random.Random(s)) for s in range(40)})
    ['ORD 000123', 'ORD000123', 'ord-000123', 'ord000123']
    """
    prefix, digits = canonical.split("-")
    return rng.choice(
        (
            f"{prefix.lower()}-{digits}",
            f"{prefix}{digits}",
            f"{prefix} {digits}",
            f"{prefix.lower()}{digits}",
        )
    )


def balanced_schedule(weights: Mapping[str, float], n: int, rng: random.Random) -> list[str]:
    """Returns ``n`` labels in the given proportions (largest remainder), shuffled.

    Exact counts rather than sampling keep every branch present even in small splits.

    >>> sorted(balanced_schedule({"a": 0.5, "b": 0.3, "c": 0.2}, 10, random.Random(0)))
    ['a', 'a', 'a', 'a', 'a', 'b', 'b', 'b', 'c', 'c']
    """
    total = sum(weights.values())
    quotas = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(q) for k, q in quotas.items()}
    by_remainder = sorted(weights, key=lambda k: counts[k] - quotas[k])  # stable: key order
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    labels = [k for k in weights for _ in range(counts[k])]
    rng.shuffle(labels)
    return labels


def render_cell(value: Any) -> str:
    """Returns the CSV text of one value, as pandas would print it back (None is empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_json(obj: Any) -> str:
    """Returns ``obj`` as indented JSON text with a final newline."""
    return json.dumps(obj, indent=2) + "\n"


def render_suite(
    suite: Suite, rows: Sequence[Row], seed: int, sizes: Sequence[int]
) -> dict[str, str]:
    """Renders the six files of a suite folder.

    Args:
        suite: The suite description.
        rows: One dict per task, holding a value for every column.
        seed: The generator seed (recorded in ``behavior.json``).
        sizes: ``(n_train, n_val, n_test)`` (recorded in ``behavior.json``).

    Returns:
        File name -> exact file text.
    """
    names = [c.name for c in suite.columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([render_cell(row[n]) for n in names] for row in rows)
    inputs, outputs = suite.names("input"), suite.names("output")
    specs = [spec for spec, _ in suite.tools]
    behaviours = {spec["toolSpec"]["name"]: beh for spec, beh in suite.tools}
    behaviour = {
        "format": "sop-tool-behavior/1",
        "domain": suite.name,
        "supported": True,
        "source": {
            "benchmark": "mtrl authored SOP suites (written for mtrl, not derived from SOP-Bench)",
            "generator": f"mtrl_envs.suites.{suite.name}.generate",
            "seed": seed,
            "sizes": dict(zip(SPLITS, sizes, strict=True)),
            "license": "Apache-2.0",
        },
        "task": {
            "csv": TASKS_CSV,
            "split_column": "split",
            "id_column": "id",
            "official_loader_mode": "split",
            "input_columns": inputs,
            "output_columns": outputs,
            "notes": suite.notes,
        },
        "tables": {
            "main": {
                "csv": TASKS_CSV,
                "na_values": list(NA_VALUES),
                "column_types": {c.name: c.type for c in suite.columns},
            }
        },
        "tool_result_rendering": _RENDERING,
        "tools": behaviours,
        "oracle_plan": list(suite.oracle_plan),
    }
    metadata = {
        "name": suite.name,
        "description": suite.description,
        "num_tasks": len(rows),
        "num_tools": len(specs),
        "input_columns": inputs,
        "output_columns": outputs,
    }
    return {
        MANIFEST["sop"]: suite.sop.strip() + "\n",
        MANIFEST["toolspecs"]: render_json(specs),
        MANIFEST["metadata"]: render_json(metadata),
        TASKS_CSV: buf.getvalue(),
        MANIFEST["behavior"]: render_json(behaviour),
        "suite.json": render_json(MANIFEST),
    }


def run_cli(
    generate: Callable[[int, int, int, int], dict[str, str]],
    *,
    description: str,
    defaults: tuple[int, int, int],
    out: Path,
    argv: Sequence[str] | None = None,
) -> None:
    """Parses ``--seed --train --val --test --out`` and writes the generated files.

    Args:
        generate: The suite's ``generate(seed, n_train, n_val, n_test)``.
        description: Help text.
        defaults: Default ``(n_train, n_val, n_test)``.
        out: Default output folder (the committed ``data/``).
        argv: Arguments to parse instead of ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=defaults[0])
    parser.add_argument("--val", type=int, default=defaults[1])
    parser.add_argument("--test", type=int, default=defaults[2])
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args(argv)
    files = generate(args.seed, args.train, args.val, args.test)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        # newline="" keeps "\n" on every platform, so the bytes match the committed files.
        with open(args.out / name, "w", encoding="utf-8", newline="") as f:
            f.write(text)
