"""Async vs sync RL steps per hour on the same workload, and the reward each reaches.

Both runs start from the same warm-started weights (a short SFT of the quickstart's default
model, done once here and exported) and run the same number of RL steps of the quickstart
config; the only difference is ``async.mode``. In async mode the producer samples round
``r + 1`` while the learner trains on round ``r`` (``max_staleness`` 1, ``pause``). Reported:
wall-clock per step (after the first, which compiles), steps per hour, the speedup, the mean
training reward over the last half of the steps and the held-out success after training.

Usage: ``.venv/bin/python benchmarks/bench_async.py [--steps 12] [--sft-steps 200]``; the last
stdout line is JSON, also written to ``benchmarks/results/async_vs_sync_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import jax

from mtrl_jax.config import load_config
from mtrl_jax.tracking import NullTracker
from mtrl_jax.trainer import Trainer


class _StepTimes(NullTracker):
    """Records when each RL step's metrics arrive, and the metrics."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.steps: list[dict[str, float]] = []

    def log_metrics(self, metrics, step):  # noqa: D102
        if "rollout/return_mean" in metrics:
            self.times.append(time.perf_counter())
            self.steps.append(dict(metrics))


def _run(mode: str, model: Path, steps: int, out: Path) -> dict[str, float]:
    overrides = [
        f"out_dir={out}",
        f"name={mode}",
        f"model.path={model}",
        "sft.steps=0",
        f"steps={steps}",
        f"async.mode={mode}",
        "tracking.enabled=false",
    ]
    tracker = _StepTimes()
    trainer = Trainer(load_config("quickstart", overrides), tracker=tracker, progress=False)
    result = trainer.run()
    gaps = [b - a for a, b in zip(tracker.times[1:], tracker.times[2:], strict=False)]
    per_step = sum(gaps) / len(gaps)
    rewards = [m["rollout/return_mean"] for m in tracker.steps[steps // 2 :]]
    return {
        "seconds_per_step": round(per_step, 3),
        "steps_per_hour": round(3600.0 / per_step, 1),
        "train_reward_last_half": round(sum(rewards) / len(rewards), 4),
        "eval_success_after": result["after"]["success_rate"],
        "eval_success_before": result["before"]["success_rate"],
        "staleness_max": max(m.get("staleness/max", 0.0) for m in tracker.steps),
    }


def main() -> dict:
    """Runs the benchmark and prints / saves the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--sft-steps", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/async_vs_sync_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm = Trainer(
            load_config(
                "quickstart",
                [
                    f"out_dir={tmp}",
                    "name=warm",
                    f"sft.steps={args.sft_steps}",
                    "tracking.enabled=false",
                ],
            ),
            progress=False,
        )
        warm.warm_start()
        model = warm.export(tmp / "warm_model")
        sync = _run("sync", model, args.steps, tmp)
        async_ = _run("async", model, args.steps, tmp)
    result = {
        "benchmark": "async_vs_sync",
        "workload": "quickstart config, tiny default model warm-started by SFT, "
        f"{args.steps} RL steps of 8 tasks x 8 episodes",
        "sync": sync,
        "async": async_,
        "speedup_steps_per_hour": round(sync["seconds_per_step"] / async_["seconds_per_step"], 3),
        "hardware": {
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "jax": jax.__version__,
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
