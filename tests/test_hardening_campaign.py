"""The adversarial campaign (``benchmarks/bench_hardening.py``) finds nothing.

CI runs a bounded campaign (a few hundred actions across every built-in environment, and a
served one); the ``slow`` test runs the full one. The per-defect regression tests live beside
the code they cover (``tests/mtrl_gym/test_agent_mistakes.py``, ``test_sandbox_hardening.py``,
``remote/test_limits.py``, ``remote/test_reliability.py``, ``mtrl_jax/test_trainer.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _campaign(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "hardening.json"
    proc = subprocess.run(
        [sys.executable, "bench_hardening.py", "--out", str(out), *args],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _assert_clean(record: dict) -> None:
    summary = record["summary"]
    assert summary["episodes_fuzzed"] > 0 and summary["tool_calls_ran"] > 0
    for key in (
        "exceptions_escaped",
        "misattributed_infra_errors",
        "unencodable_infos",
        "remote_5xx",
        "remote_exceptions",
        "remote_sessions_lost",
        "remote_server_tracebacks",
        "remote_tmp_dirs_leaked",
    ):
        assert summary[key] == 0, (key, record["local"], record["remote"])
    assert summary["resources_leaked"] == dict.fromkeys(summary["resources_leaked"], 0)
    assert summary["remote_server_alive_after"]


def test_hardening_campaign__bounded_run_finds_nothing(tmp_path: Path) -> None:
    _assert_clean(_campaign(tmp_path, "--actions", "400", "--remote-actions", "80", "--seed", "1"))


@pytest.mark.slow
def test_hardening_campaign__full_run_finds_nothing(tmp_path: Path) -> None:
    _assert_clean(_campaign(tmp_path))
