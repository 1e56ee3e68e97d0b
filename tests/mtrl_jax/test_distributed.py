"""Multi-process JAX: env parsing, and 2 processes x 2 CPU devices train exactly like 1 x 4.

The distributed test launches ``python -m mtrl_jax.distributed train-step-check`` three times:
twice as the two ranks of one run (gloo collectives over TCP on 127.0.0.1, 2 devices each) and
once as a single process with 4 devices. Both must write the same parameters, which must also
equal an unsharded single-device run of the same steps in this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from mtrl_jax.distributed import (
    CHECK_MODEL,
    CHECK_TRAIN,
    DistributedConfig,
    check_batch,
    config_from_env,
    initialize_from_env,
)
from mtrl_jax.models import Decoder
from mtrl_jax.train_step import init_train_state, make_train_step

STEPS = 3
TIMEOUT_S = 90
REPO = Path(__file__).resolve().parents[2]


def test_config_from_env__unset_is_single_process_and_parses_all_fields() -> None:
    assert config_from_env({}) is None
    assert initialize_from_env({}) is False
    env = {
        "MTRL_COORDINATOR": "10.0.0.1:1234",
        "MTRL_NUM_PROCESSES": "4",
        "MTRL_PROCESS_ID": "3",
        "MTRL_LOCAL_DEVICE_IDS": "0,1",
    }
    assert config_from_env(env) == DistributedConfig(
        coordinator="10.0.0.1:1234", num_processes=4, process_id=3, local_device_ids=(0, 1)
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MTRL_COORDINATOR": "h:1", "MTRL_PROCESS_ID": "0"}, "missing \\['MTRL_NUM_PROCESSES'\\]"),
        ({"MTRL_COORDINATOR": "h", "MTRL_NUM_PROCESSES": "2", "MTRL_PROCESS_ID": "0"}, "host:port"),
        (
            {"MTRL_COORDINATOR": "h:1", "MTRL_NUM_PROCESSES": "two", "MTRL_PROCESS_ID": "0"},
            "integer",
        ),
        (
            {"MTRL_COORDINATOR": "h:1", "MTRL_NUM_PROCESSES": "2", "MTRL_PROCESS_ID": "2"},
            "\\[0, 2\\)",
        ),
        (
            {
                "MTRL_COORDINATOR": "h:1",
                "MTRL_NUM_PROCESSES": "2",
                "MTRL_PROCESS_ID": "0",
                "MTRL_LOCAL_DEVICE_IDS": "0;1",
            },
            "like '0,1'",
        ),
    ],
    ids=["partial", "no-port", "not-int", "rank-range", "device-ids"],
)
def test_config_from_env__rejects_partial_or_malformed(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_env(env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, name: str, devices: int, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTRL_")}
    env.update(extra_env)
    # Overrides the 8 fake devices tests/conftest.py gives this process.
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "mtrl_jax.distributed", "train-step-check"]
    cmd += ["--steps", str(STEPS), "--out", str(tmp / f"{name}.npz")]
    # A file, not a pipe: an unread full pipe would block the child. Popen keeps its own handle.
    with open(tmp / f"{name}.log", "w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _unsharded_reference() -> dict[str, np.ndarray]:
    graphdef, state = init_train_state(Decoder(CHECK_MODEL, rngs=nnx.Rngs(0)), CHECK_TRAIN)
    step = make_train_step(graphdef, CHECK_TRAIN)
    initial = jax.tree.map(np.asarray, state.params)
    for i in range(STEPS):
        state, _ = step(state, jax.tree.map(jax.numpy.asarray, check_batch(i)))
    moved = max(
        float(np.max(np.abs(np.asarray(a) - b)))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(initial), strict=True)
    )
    assert moved > 1e-3  # the comparison below is not vacuous
    return {"params": jax.tree.map(np.asarray, state.params)}


def test_train_step_check__two_processes_equal_one_process_and_unsharded(tmp_path: Path) -> None:
    coordinator = f"127.0.0.1:{_free_port()}"
    ranks = {
        f"rank{i}": {
            "MTRL_COORDINATOR": coordinator,
            "MTRL_NUM_PROCESSES": "2",
            "MTRL_PROCESS_ID": str(i),
        }
        for i in range(2)
    }
    children = {name: _launch(tmp_path, name, 2, env) for name, env in ranks.items()}
    children["single"] = _launch(tmp_path, "single", 4, {})
    try:
        reference = _unsharded_reference()  # meanwhile, in this process
        for child in children.values():
            child.wait(timeout=TIMEOUT_S)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    logs = {name: (tmp_path / f"{name}.log").read_text()[-3000:] for name in children}
    for name, child in children.items():
        assert child.returncode == 0, f"{name} exited {child.returncode}:\n{logs[name]}"
    assert "process 1/2: 4 devices" in logs["rank1"], logs["rank1"]
    assert "process 0/1: 4 devices" in logs["single"], logs["single"]
    assert not (tmp_path / "rank1.npz").exists()  # only process 0 writes

    multi, single = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "single.npz")
    assert sorted(multi.files) == sorted(single.files)
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=1e-5)
    ref_flat = {
        "params." + ".".join(str(k.key) for k in path[:-1]): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(reference["params"])
    }
    assert sorted(ref_flat) == sorted(k for k in multi.files if k != "loss")
    for key, want in ref_flat.items():
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(multi[key], want, rtol=1e-5, atol=1e-6, err_msg=key)
