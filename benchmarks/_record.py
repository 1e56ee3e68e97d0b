"""Helpers every benchmark script shares: timing, the hardware record, saving the result.

Scripts run as ``python benchmarks/<name>.py``, so this module is imported by its bare name.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn`` (its result blocked on, so JAX work counts)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def git_commit() -> str:
    """The checkout's short commit id ("" outside a git checkout), so a result names its code."""
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent,
    )
    return out.stdout.strip()


def hardware(**extra: Any) -> dict[str, Any]:
    """What the numbers were measured on, plus ``extra`` entries (e.g. the torch version)."""
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        # The machine is shared: a load average near the core count means noisy timings.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        **extra,
    }


def save(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """Writes ``record`` to ``out`` (indented JSON) and prints it as the last stdout line."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return record
