"""Supervised warm start: behaviour cloning on demonstration trajectories.

``mtrl sft`` (and the trainer's optional warm start) minimises the negative log-likelihood of the
sampled-mask tokens of demonstration records (:mod:`mtrl_jax.demonstrations` for oracle
episodes, or any JSONL of :class:`~mtrl_jax.trajectory.TrajectoryRecord`). The records go
through the same path as RL data: ``to_learner`` (advantage 1; the ``nll`` objective ignores it),
``pack_trajectories`` and the jitted train step with ``LossConfig(policy_loss="nll")``, so the
packing and loss code that RL trusts is what SFT uses.

Batches: every epoch visits the records in a fresh order drawn from ``seed`` and the epoch
number; ``batch_size`` records per step (the last partial batch of an epoch is dropped, so every
step sees the same number of episodes and compiles at most one program per row bucket).

Non-goals: a separate optimiser state carried into RL (the trainer starts RL with a fresh one:
the objectives and learning rates differ), evaluation (the trainer or ``mtrl eval`` does it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtrl_jax.losses import LossConfig
from mtrl_jax.packing import PackingConfig, pack_trajectories
from mtrl_jax.train_step import (
    OptimizerConfig,
    TrainConfig,
    TrainState,
    init_train_state,
    make_train_step,
)
from mtrl_jax.trajectory import TrajectoryRecord
from mtrl_jax.types import TrainBatch


def sft_train_config(learning_rate: float, *, steps: int, chunk_size: int = 512) -> TrainConfig:
    """The SFT objective: token-mean NLL, AdamW with a short warmup and cosine decay."""
    warmup = min(10, max(steps // 10, 0))
    return TrainConfig(
        loss=LossConfig(policy_loss="nll", aggregation="token-mean"),
        optimizer=OptimizerConfig(
            learning_rate=learning_rate,
            schedule="cosine" if steps > warmup else "constant",
            warmup_steps=warmup,
            decay_steps=max(steps - warmup, 1),
            end_lr_ratio=0.1,
            weight_decay=0.0,
            max_grad_norm=1.0,
        ),
        chunk_size=chunk_size,
    )


def demo_batches(
    records: Sequence[TrajectoryRecord], batch_size: int, packing: PackingConfig, *, seed: int
) -> Iterator[TrainBatch]:
    """Endless packed batches of ``batch_size`` records, reshuffled every epoch."""
    if not records:
        raise ValueError("no demonstration records")
    batch_size = min(batch_size, len(records))
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(records))
        for begin in range(0, len(order) - batch_size + 1, batch_size):
            chosen = [records[i] for i in order[begin : begin + batch_size]]
            trajectories = []
            for record in chosen:
                trajectories += dataclasses.replace(record, advantage=1.0).to_learner()
            batch, _ = pack_trajectories(trajectories, packing)
            yield batch
        epoch += 1


def run_sft(
    model: nnx.Module,
    records: Sequence[TrajectoryRecord],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    packing: PackingConfig,
    seed: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[nnx.GraphDef, TrainState, list[dict[str, float]]]:
    """Trains ``model`` on the demonstrations for ``steps`` updates.

    Args:
        model: The decoder to warm-start (its weights are the starting point; not mutated).
        records: Demonstration records (loss mask 1 on the tokens to imitate).
        steps: Updates.
        batch_size: Records per update.
        learning_rate: Peak learning rate (cosine decay to a tenth of it).
        packing: Row length and buckets of the packed batches.
        seed: Order of the records.
        on_step: Called with ``(step, metrics)`` after each update (progress, logging).

    Returns:
        The graphdef, the trained state (its ``params`` are the warm-started weights) and the
        per-step metrics (``sft/loss``, ``sft/grad_norm``, ``sft/tokens``).
    """
    cfg = sft_train_config(learning_rate, steps=steps)
    # The train step donates its state: train on copies so ``model`` stays usable.
    graphdef, state = init_train_state(model, cfg)
    state = state.replace(params=jax.tree.map(jnp.copy, state.params))
    train_step = make_train_step(graphdef, cfg)
    history: list[dict[str, float]] = []
    batches = demo_batches(records, batch_size, packing, seed=seed)
    for step in range(steps):
        state, raw = train_step(state, jax.tree.map(np.asarray, next(batches)))
        metrics = _sft_metrics(jax.device_get(raw))
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
    return graphdef, state, history


def _sft_metrics(raw: dict[str, Any]) -> dict[str, float]:
    return {
        "sft/loss": float(raw["loss/total"]),
        "sft/grad_norm": float(raw["optim/grad_norm"]),
        "sft/lr": float(raw["optim/lr"]),
        "sft/tokens": float(raw["tokens/loss"]),
        "sft/skipped": float(raw["optim/skipped"]),
    }
