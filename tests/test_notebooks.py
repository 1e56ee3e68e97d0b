"""Every notebook runs end to end as a script, shrunk to seconds (``MTRL_NOTEBOOK_SMOKE=1``).

Notebooks use public APIs only; this catches one that drifted from them. Each writes its results
under ``MTRL_NOTEBOOK_OUT``, which the test reads back.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[1]


def test_kl_ablation_notebook__runs_and_writes_its_table_and_plot(tmp_path):
    env = dict(os.environ, MTRL_NOTEBOOK_SMOKE="1", MTRL_NOTEBOOK_OUT=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "notebooks" / "01_kl_ablation.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "kl_ablation.json").read_text())
    assert [(r["kl_coef"], r["seed"]) for r in results] == [(0.0, 0), (2.0, 0)]
    for r in results:
        assert all(math.isfinite(r[k]) and 0.0 <= r[k] <= 1.0 for k in ("before", "after"))
    assert (tmp_path / "warm" / "warm_start" / "config.json").is_file()
    assert (tmp_path / "kl_ablation.png").stat().st_size > 0
