"""Multi-process (multi-host) JAX from environment variables, and a check that it trains right.

One process runs per host (or per GPU). Each calls :func:`initialize_from_env` before any other
JAX call; ``jax.devices()`` then lists the devices of *every* process, and a
``mtrl_jax.sharding`` mesh over them spans hosts. The variables::

    MTRL_COORDINATOR     host:port of process 0's coordinator service (reachable by all)
    MTRL_NUM_PROCESSES   number of processes
    MTRL_PROCESS_ID      this process's rank, 0 .. MTRL_NUM_PROCESSES - 1
    MTRL_LOCAL_DEVICE_IDS  optional, e.g. "0,1": the local devices this process uses

With none of them set, :func:`initialize_from_env` does nothing (one process), so callers can
call it unconditionally. On CPU, cross-process collectives use gloo over TCP (jax's default,
set explicitly here so an older default of "none" cannot silently break them).

``python -m mtrl_jax.distributed train-step-check --steps 3 --out result.npz`` builds a tiny
decoder and batches from fixed seeds, runs sharded train steps on a mesh over all global devices
(``fsdp`` = every device not used by ``--data``/``--tensor``), and process 0 writes the gathered
parameters and per-step losses. The same command run as one process with as many local devices
must write the same numbers (``tests/mtrl_jax/test_distributed.py``).

Non-goals: launching processes (use your cluster's launcher, or set the variables by hand),
cluster auto-detection (SLURM, Kubernetes; ``jax.distributed.initialize()`` with no arguments
does that), fault tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from mtrl_jax.losses import LossConfig
from mtrl_jax.models import Decoder, DecoderConfig
from mtrl_jax.sharding import (
    ShardingConfig,
    make_mesh,
    make_sharded_train_step,
    shard_batch,
    shard_train_state,
)
from mtrl_jax.train_step import OptimizerConfig, TrainConfig, init_train_state
from mtrl_jax.types import TrainBatch

ENV_COORDINATOR = "MTRL_COORDINATOR"
ENV_NUM_PROCESSES = "MTRL_NUM_PROCESSES"
ENV_PROCESS_ID = "MTRL_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "MTRL_LOCAL_DEVICE_IDS"
_REQUIRED = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """Where this process sits in a multi-process run.

    Attributes:
        coordinator: ``host:port`` of process 0's coordinator service.
        num_processes: number of processes, >= 1.
        process_id: this process's rank in ``[0, num_processes)``.
        local_device_ids: local devices to use (None: all of them).
    """

    coordinator: str
    num_processes: int
    process_id: int
    local_device_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        host, sep, port = self.coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"coordinator must be host:port, got {self.coordinator!r}")
        if self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process_id must be in [0, {self.num_processes}), got {self.process_id}"
            )
        if self.local_device_ids is not None and not self.local_device_ids:
            raise ValueError("local_device_ids must be None or non-empty")


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {environ[name]!r}") from None


def config_from_env(environ: Mapping[str, str] | None = None) -> DistributedConfig | None:
    """Reads the ``MTRL_*`` variables; None when none of the three required ones is set.

    Raises:
        ValueError: some but not all required variables are set, or a value is malformed.
    """
    environ = os.environ if environ is None else environ
    present = [name for name in _REQUIRED if environ.get(name)]
    if not present:
        return None
    if len(present) < len(_REQUIRED):
        missing = [name for name in _REQUIRED if name not in present]
        raise ValueError(f"multi-process run needs {', '.join(_REQUIRED)}; missing {missing}")
    ids = environ.get(ENV_LOCAL_DEVICE_IDS)
    try:
        local = tuple(int(i) for i in ids.split(",")) if ids else None
    except ValueError:
        raise ValueError(f"{ENV_LOCAL_DEVICE_IDS} must be like '0,1', got {ids!r}") from None
    return DistributedConfig(
        coordinator=environ[ENV_COORDINATOR],
        num_processes=_int(environ, ENV_NUM_PROCESSES),
        process_id=_int(environ, ENV_PROCESS_ID),
        local_device_ids=local,
    )


def initialize_from_env(environ: Mapping[str, str] | None = None, *, timeout_s: int = 300) -> bool:
    """Calls ``jax.distributed.initialize`` from the ``MTRL_*`` variables, if they are set.

    Must run before anything touches a JAX device (creating an array included).

    Args:
        environ: the variables (default ``os.environ``).
        timeout_s: how long to wait for every process to connect.

    Returns:
        True if this is a multi-process run (now initialized), False if the variables are
        unset (nothing done).

    Raises:
        ValueError: malformed or partial variables (see :func:`config_from_env`).
    """
    cfg = config_from_env(environ)
    if cfg is None:
        return False
    # Only read by the CPU client; harmless on GPU/TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
        local_device_ids=list(cfg.local_device_ids) if cfg.local_device_ids else None,
        initialization_timeout=timeout_s,
    )
    return True


# ------------------------------------------------------------------------ train-step check

# The check's model and train config (public so tests can build an unsharded reference).
CHECK_MODEL = DecoderConfig(
    architecture="Qwen3ForCausalLM",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qk_norm=True,
)
# lr 1e-3: 3 AdamW steps move every weight by ~3e-3, far beyond the comparison tolerance.
CHECK_TRAIN = TrainConfig(
    loss=LossConfig(policy_loss="cispo", is_correction="token"),
    optimizer=OptimizerConfig(learning_rate=1e-3),
    chunk_size=8,
)
_CHECK_ROWS, _CHECK_LEN = 8, 16


def check_batch(step: int, seed: int = 0) -> TrainBatch:
    """The check's deterministic ``[8, 16]`` batch of one step: two packed sequences per row."""
    rng = np.random.default_rng([seed, step])
    b, t, v = _CHECK_ROWS, _CHECK_LEN, CHECK_MODEL.vocab_size
    split = rng.integers(4, 10, size=b)
    end = rng.integers(12, t + 1, size=b)
    idx = np.arange(t)[None, :]
    segment = np.where(idx < split[:, None], 1, 2) * (idx < end[:, None])
    start = np.where(segment == 2, split[:, None], 0)
    positions = np.where(segment > 0, idx - start, 0).astype(np.int32)
    tokens = rng.integers(1, v, size=(b, t)) * (segment > 0)
    same_next = np.zeros_like(segment, bool)
    same_next[:, :-1] = (segment[:, 1:] == segment[:, :-1]) & (segment[:, :-1] > 0)
    targets = np.where(same_next, np.roll(tokens, -1, axis=1), 0)
    mask = (same_next & (rng.random((b, t)) < 0.7)).astype(np.float32)
    advantages = rng.normal(size=(b, 1)).astype(np.float32) * mask
    # Near the uniform policy's log-prob, so importance ratios start near 1.
    behaviour = (-np.log(v) + 0.1 * rng.normal(size=(b, t))).astype(np.float32) * mask
    return TrainBatch(
        tokens=tokens.astype(np.int32),
        targets=targets.astype(np.int32),
        positions=positions,
        segment_ids=segment.astype(np.int32),
        loss_mask=mask,
        advantages=advantages,
        behaviour_logp=behaviour,
        old_logp=behaviour,
        policy_version=np.where(segment > 0, 0, -1).astype(np.int32),
    )


def _flat(params: Any) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        if names[-1] == "value":  # the nnx.Variable's own field, not part of the param's name
            names.pop()
        out["params." + ".".join(names)] = np.asarray(leaf)
    return out


def train_step_check(
    steps: int, *, data: int = 1, tensor: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Runs ``steps`` sharded train steps of the tiny check model over all global devices.

    Every process builds the same model and batches from ``seed``; the mesh is
    ``data x fsdp x tensor`` with ``fsdp = jax.device_count() // (data * tensor)``.

    Returns:
        On every process: ``params.<path>`` (gathered, float32) and ``loss`` (``[steps]``).

    Raises:
        ValueError: ``data * tensor`` does not divide the device count.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    count = jax.device_count()
    if count % (data * tensor):
        raise ValueError(f"data*tensor = {data * tensor} does not divide {count} devices")
    mesh = make_mesh(ShardingConfig(data=data, fsdp=count // (data * tensor), tensor=tensor))
    graphdef, state = init_train_state(Decoder(CHECK_MODEL, rngs=nnx.Rngs(seed)), CHECK_TRAIN)
    state = shard_train_state(state, mesh)
    step = make_sharded_train_step(graphdef, CHECK_TRAIN, mesh)
    losses = []
    for i in range(steps):
        state, metrics = step(state, shard_batch(check_batch(i, seed), mesh))
        losses.append(float(metrics["loss/total"]))  # replicated: readable on every process
    out = _flat(multihost_utils.process_allgather(state.params, tiled=True))
    out["loss"] = np.asarray(losses, np.float32)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mtrl_jax.distributed train-step-check --steps N --out FILE.npz``."""
    parser = argparse.ArgumentParser(prog="python -m mtrl_jax.distributed")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("train-step-check", help="sharded train steps over all processes")
    check.add_argument("--steps", type=int, default=3)
    check.add_argument("--out", required=True, help=".npz written by process 0")
    check.add_argument("--data", type=int, default=1)
    check.add_argument("--tensor", type=int, default=1)
    check.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    initialize_from_env()
    result = train_step_check(args.steps, data=args.data, tensor=args.tensor, seed=args.seed)
    if jax.process_index() == 0:
        np.savez(args.out, **result)
    print(
        f"process {jax.process_index()}/{jax.process_count()}: {jax.device_count()} devices, "
        f"losses {result['loss'].tolist()}",
        flush=True,
    )


if __name__ == "__main__":
    main()
