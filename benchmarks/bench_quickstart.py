"""The quickstart over seed pairs: held-out success before and after RL, per class and phase.

Each seed pair (``seed``, ``model.seed``) runs the shipped quickstart config in a fresh process
(so every run pays its own imports and compilation, as ``bash scripts/quickstart.sh`` does) in a
run folder of its own. Recorded per run: held-out success after the warm start and after RL,
success per answer class of the procedure (``lost``, ``moving``, ``late-gold``, ``late-basic``:
which of refund / wait / credit / sorry is right), the wall clock of every phase, and the
machine. The goal it checks is the quickstart's: at least ``--goal`` points gained on every seed
pair (exit status 1 otherwise). Exact figures depend on the CPU (float rounding changes sampled
tokens), so compare gains, not digits.

Run: ``.venv/bin/python benchmarks/bench_quickstart.py`` (about 10 minutes per seed pair on a
2-core CPU; last stdout line: JSON, also written to ``benchmarks/results/quickstart_cpu.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLASS_OF = {"refund": "lost", "wait": "moving", "credit": "late-gold", "sorry": "late-basic"}


def per_class(summary: dict[str, Any], split: str = "test") -> dict[str, str]:
    """``class: "successes/tasks"`` from an evaluation summary's per-task rows."""
    import gymnasium as gym

    import mtrl_gym  # noqa: F401 - registers the environments

    env = gym.make("mtrl/SopQuickstart-v0", split=split).unwrapped
    truth = {t.id: CLASS_OF[t.answer["action"]] for t in env.tasks()}
    env.close()
    right, total = Counter(), Counter()
    for row in summary["per_task"]:
        cls = truth[row["task_id"]]
        total[cls] += 1
        right[cls] += row["successes"] == row["n"] > 0
    return {cls: f"{right[cls]}/{total[cls]}" for cls in sorted(total)}


def worker(seed: int, model_seed: int, out_dir: Path, extra: list[str]) -> dict[str, Any]:
    """One quickstart run in this process; returns its record."""
    from mtrl_jax.config import load_config
    from mtrl_jax.trainer import Trainer

    overrides = [
        f"seed={seed}",
        f"model.seed={model_seed}",
        f"name=quickstart_s{seed}_m{model_seed}",
        f"out_dir={out_dir}",
        *extra,
    ]
    start = time.perf_counter()
    out = Trainer(load_config("quickstart", overrides), progress=True, resume="fresh").run()
    wall = time.perf_counter() - start
    before, after = out["before"], out["after"]
    return {
        "seed": seed,
        "model_seed": model_seed,
        "before": before["success_rate"],
        "after": after["success_rate"],
        "gain_points": round(100 * (after["success_rate"] - before["success_rate"]), 1),
        "per_class_before": per_class(before),
        "per_class_after": per_class(after),
        "phases_s": out["phases"],
        "wall_s": round(wall, 1),
        "overrides": overrides,
    }


def main() -> None:
    """Runs every seed pair in its own process and saves the record."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default="0:0,1:0,1:1", help="seed:model_seed, comma-separated")
    parser.add_argument("--goal", type=float, default=30.0, help="points gained, every pair")
    parser.add_argument("--runs", type=Path, default=None, help="run folders (default: a tmp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/quickstart_cpu.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args()
    runs = args.runs or Path(tempfile.mkdtemp(prefix="mtrl-quickstart-"))
    if args.worker is not None:
        seed, model_seed = (int(x) for x in args.worker.split(":"))
        print(json.dumps(worker(seed, model_seed, runs, args.overrides)), flush=True)
        return

    from _record import git_commit, hardware, save

    results = []
    for pair in args.pairs.split(","):
        cmd = [sys.executable, __file__, "--worker", pair, "--runs", str(runs), *args.overrides]
        env = {**os.environ, "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"seed pair {pair} failed (exit {proc.returncode})")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    gains = [r["gain_points"] for r in results]
    record = {
        "benchmark": "quickstart",
        "hardware": hardware(),
        "commit": git_commit(),
        "config": "quickstart",
        "overrides": args.overrides,
        "runs": results,
        "before_range": [min(r["before"] for r in results), max(r["before"] for r in results)],
        "after_range": [min(r["after"] for r in results), max(r["after"] for r in results)],
        "gain_points_range": [min(gains), max(gains)],
        "wall_s_range": [min(r["wall_s"] for r in results), max(r["wall_s"] for r in results)],
        "goal_points": args.goal,
        "goal_met": all(g >= args.goal for g in gains),
        "note": "exact figures depend on the CPU (float rounding changes the sampled tokens)",
    }
    save(record, args.out)
    if not record["goal_met"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
