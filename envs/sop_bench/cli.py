"""``mtrl sop-bench``: evaluate an agent on SOP-Bench domains and write a JSON report.

Usage::

    mtrl sop-bench --data DIR [--specs DIR] [--domains a,b] [--limit N]
                   --agent oracle|random --out report.json

Every run prints the licence notice first: SOP-Bench is CC BY-NC 4.0, evaluation only. The
report is always written, with every domain; when any domain failed (could not be loaded, or its
run raised) the command then exits with status 1.
Non-goals: model agents (they join when the learner's eval job exists).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtrl_envs.sop_bench.adapter import LICENCE_NOTICE, run_benchmark
from mtrl_gym.cli import AGENTS


def build_parser() -> argparse.ArgumentParser:
    """The ``sop-bench`` argument parser."""
    p = argparse.ArgumentParser(prog="mtrl sop-bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="folder of <domain>/ folders (upstream data; with tool_behavior.json "
        "unless --specs is given)",
    )
    p.add_argument(
        "--specs", type=Path, default=None, help="folder of <domain>/tool_behavior.json specs"
    )
    p.add_argument("--domains", default=None, help="comma-separated domain names (default: all)")
    p.add_argument("--limit", type=int, default=None, help="at most N tasks per domain")
    p.add_argument("--agent", choices=sorted(AGENTS), required=True)
    p.add_argument("--tool-format", default="hermes")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="where to write the JSON report")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the report.

    Returns:
        The report, when every domain ran.

    Raises:
        SystemExit: With status 1 after writing the report, when a domain failed.
    """
    args = build_parser().parse_args(argv)
    print(f"NOTICE: {LICENCE_NOTICE}", file=sys.stderr)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    report = run_benchmark(
        args.data,
        specs=args.specs,
        domains=domains,
        limit=args.limit,
        agent=AGENTS[args.agent],
        agent_name=args.agent,
        tool_format=args.tool_format,
        concurrency=args.concurrency,
        seed=args.seed,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name, metrics in sorted(report["domains"].items()):
        if metrics["error"] is not None:
            continue  # printed with the errors below
        print(
            f"{name:32s} tasks={metrics['tasks']:4d} TSR={metrics['tsr']:.3f} "
            f"TSR(compat)={metrics['tsr_compatible']:.3f} ECR={metrics['ecr']:.3f}"
        )
    for name, error in sorted(report["errors"].items()):
        print(f"{name:32s} ERROR: {error}")
    macro = report["macro"]
    if macro:
        print(f"{'macro':32s} TSR={macro['tsr']:.3f} TSR(compat)={macro['tsr_compatible']:.3f}")
    print(f"report written to {args.out}")
    if report["errors"]:
        failed = ", ".join(sorted(report["errors"]))
        print(
            f"mtrl sop-bench: {len(report['errors'])} domain(s) failed: {failed}", file=sys.stderr
        )
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
