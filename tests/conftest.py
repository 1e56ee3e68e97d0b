"""Test configuration shared by the whole suite.

Fakes 8 CPU devices for JAX, once and before anything can import JAX, so sharding tests run on
this 2-core machine. Tests that need them use ``skip_if_not_enough_devices``.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402


def skip_if_not_enough_devices(n: int) -> None:
    """Skips the calling test when JAX sees fewer than ``n`` devices."""
    import jax

    if jax.device_count() < n:
        pytest.skip(f"needs {n} devices, JAX sees {jax.device_count()}")
