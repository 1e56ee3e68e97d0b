"""Test configuration shared by the whole suite.

Fakes 8 CPU devices for JAX, once and before anything can import JAX, so sharding tests run on
this 2-core machine. Tests that need them use ``skip_if_not_enough_devices``. Also says, once,
where the tests look for the SOP-Bench data.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SOP_BENCH_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "sop_bench").resolve()
"""The SOP-Bench folder: ``../shared/sop_bench`` beside the repository, never inside it."""

SOP_BENCH_MISSING = (
    f"SOP-Bench data not found at {SOP_BENCH_DATA} (evaluation-only data, CC BY-NC 4.0, "
    "kept outside the repository)"
)
"""The skip reason of every test that needs the SOP-Bench data."""


def skip_if_not_enough_devices(n: int) -> None:
    """Skips the calling test when JAX sees fewer than ``n`` devices."""
    import jax

    if jax.device_count() < n:
        pytest.skip(f"needs {n} devices, JAX sees {jax.device_count()}")
