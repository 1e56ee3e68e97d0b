"""The quickstart's goal, rerun: at least +30 points of held-out success on three seed pairs.

``slow`` (about half an hour on 2 cores): it runs ``benchmarks/bench_quickstart.py``, which
plays the shipped quickstart once per seed pair in a fresh process. It checks the goal, not the
exact figures: those depend on the CPU (float rounding changes the sampled tokens).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)
def test_quickstart__gains_at_least_30_points_on_three_seed_pairs(tmp_path: Path) -> None:
    out = tmp_path / "quickstart.json"
    cmd = [sys.executable, "benchmarks/bench_quickstart.py", "--out", str(out)]
    cmd += ["--runs", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.is_file(), proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert len(record["runs"]) == 3
    assert record["goal_met"], record["gain_points_range"]
    assert proc.returncode == 0
