"""Shared-prefix packing vs whole trajectories: slots computed and train fwd+bwd wall-clock.

A GRPO round of an agent environment: ``--tasks`` tasks x ``--group`` episodes, every episode
starting with the same system prompt (procedure and tool schemas), then its task line, then its
own turns (sampled messages and tool results). Packed whole, every row re-reads the system
prompt; with ``PackingConfig.share_prefix`` the prompt a row's trajectories share is stored once
and attended to through ``parent_ids`` (``mtrl_jax.packing``). Both batches go through the
jitted gradient of ``mtrl_jax.train_step.make_grad_fn`` on the quickstart's default model
(``mtrl_jax.models.make_default``); the gradients agree (checked here, tested in
``tests/mtrl_jax/test_decoder_training.py``), only the work differs.

    python benchmarks/bench_shared_prefix.py [--tasks 8] [--group 8] [--repeats 3]

The last stdout line is JSON (hardware named); it is also saved under
``benchmarks/results/shared_prefix_<platform>.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
from _record import best_seconds, git_commit, hardware, save
from flax import nnx

from mtrl_jax.models import Decoder
from mtrl_jax.models.make_default import default_config
from mtrl_jax.packing import PackingConfig, pack_trajectories
from mtrl_jax.train_step import TrainConfig, init_train_state, make_grad_fn
from mtrl_jax.types import Trajectory

VOCAB = 2048
# Lengths of the quickstart's episodes (tokens): the system prompt, the task line, and per
# episode 2-3 turns of an assistant message and a tool result.
SYSTEM, TASK, OWN = 436, 10, (60, 200)


def round_trajectories(rng: np.random.Generator, tasks: int, group: int) -> list[Trajectory]:
    """One round: ``tasks`` groups of ``group`` episodes sharing the system prompt."""
    system = rng.integers(3, VOCAB, SYSTEM)
    out = []
    for _ in range(tasks):
        task = rng.integers(3, VOCAB, TASK)
        advantages = rng.normal(size=group)
        for k in range(group):
            own = int(rng.integers(*OWN))
            tokens = np.concatenate([system, task, rng.integers(3, VOCAB, own)])
            mask = np.zeros(len(tokens), np.float32)
            mask[SYSTEM + TASK :] = (rng.random(own) < 0.6).astype(np.float32)  # sampled turns
            mask[SYSTEM + TASK] = 1.0
            out.append(
                Trajectory(
                    tokens=tokens,
                    loss_mask=mask,
                    behaviour_logp=-rng.gamma(2.0, 1.0, len(tokens)).astype(np.float32) * mask,
                    advantages=float(advantages[k]),
                    policy_version=0,
                )
            )
    return out


def main() -> dict:
    """Runs the benchmark; prints and saves the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    trajectories = round_trajectories(np.random.default_rng(0), args.tasks, args.group)
    model = Decoder(default_config(VOCAB, eos_token_id=1, pad_token_id=0), rngs=nnx.Rngs(0))
    cfg = TrainConfig(chunk_size=512)
    graphdef, state = init_train_state(model, cfg)
    grad_fn = make_grad_fn(graphdef, cfg)
    layouts = {
        # The quickstart's layouts: one trajectory per row, and shared prompts in long rows.
        "whole": PackingConfig(seq_len=768, rows_multiple=8),
        "shared": PackingConfig(seq_len=2048, rows_multiple=8, share_prefix=32),
    }
    result: dict = {}
    grads = {}
    for name, packing in layouts.items():
        batch, info = pack_trajectories(trajectories, packing)
        batch = jax.tree.map(jax.numpy.asarray, batch)
        grads[name] = jax.block_until_ready(grad_fn(state, batch))
        result[name] = {
            "batch_shape": list(batch.tokens.shape),
            "slots_computed": int((np.asarray(batch.segment_ids) > 0).sum()),
            "packing_efficiency": round(info.metrics["packing/efficiency"], 4),
            "fwd_bwd_s": round(best_seconds(lambda b=batch: grad_fn(state, b), args.repeats), 4),
        }
    diffs = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(
            jax.tree.leaves(grads["whole"][0]), jax.tree.leaves(grads["shared"][0]), strict=True
        )
    ]
    whole, shared = result["whole"], result["shared"]
    record = {
        "benchmark": "shared_prefix",
        "tasks": args.tasks,
        "group": args.group,
        "lengths": {"system": SYSTEM, "task": TASK, "own": list(OWN)},
        "model": "make_default.default_config (the quickstart's model), vocab 2048",
        **result,
        "slot_ratio": round(whole["slots_computed"] / shared["slots_computed"], 2),
        "speedup": round(whole["fwd_bwd_s"] / shared["fwd_bwd_s"], 2),
        "max_abs_grad_diff": max(diffs),
        "hardware": hardware(),
        "commit": git_commit(),
    }
    platform_name = jax.devices()[0].platform
    return save(record, Path(__file__).parent / "results" / f"shared_prefix_{platform_name}.json")


if __name__ == "__main__":
    main()
