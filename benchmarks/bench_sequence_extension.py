"""Sequence extension vs per-turn samples: tokens processed and train fwd+bwd wall-clock.

An 8-turn agent episode with realistic lengths (a system prompt with tool schemas, then per turn
an assistant message and a tool result) is trained either as one extended sequence (every turn's
prompt extends the previous context, ``mode="extended"``) or as one sample per turn, each
re-reading the whole history (``mode="per_turn"``, what a history-rewriting chat template
forces). Both go through ``TrajectoryRecord.to_learner`` and ``pack_trajectories`` into the same
row length ``T`` (rows bucketed exactly, so neither pays padding rows), and through the jitted
gradient of ``mtrl_jax.train_step.make_grad_fn`` on a small ``mtrl_jax.models.Decoder``.

The sampled tokens (the loss) are the same in both modes; only the re-read context differs.

    python benchmarks/bench_sequence_extension.py [--episodes 2] [--repeats 3]

The last stdout line is JSON (hardware named); it is also saved under
``benchmarks/results/sequence_extension_<platform>.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np
from _record import git_commit, save
from flax import nnx

from mtrl_jax.models import Decoder
from mtrl_jax.models.make_default import default_config
from mtrl_jax.packing import PackingConfig, pack_trajectories
from mtrl_jax.train_step import TrainConfig, init_train_state, make_grad_fn
from mtrl_jax.trajectory import TrajectoryRecord

VOCAB = 2048
TURNS = 8
SYSTEM_TOKENS = 600  # system prompt + tool schemas + task
ASSISTANT_TOKENS = 120  # reasoning + one tool call
TOOL_TOKENS = 150  # one tool result in its template markup


def synthetic_records(rng: np.random.Generator) -> tuple[TrajectoryRecord, TrajectoryRecord]:
    """The same episode as one extended record and as a per-turn record."""
    system = rng.integers(3, VOCAB, SYSTEM_TOKENS).tolist()
    turns = [rng.integers(3, VOCAB, ASSISTANT_TOKENS).tolist() for _ in range(TURNS)]
    tools = [rng.integers(3, VOCAB, TOOL_TOKENS).tolist() for _ in range(TURNS - 1)]

    def build(parts: list[tuple[list[int], int]], starts: list[int], mode: str) -> TrajectoryRecord:
        tokens = [t for p, _ in parts for t in p]
        mask = [m for p, m in parts for _ in p]
        n = len(tokens)
        return TrajectoryRecord(
            task_id="synthetic",
            group_id="bench",
            tokens=tokens,
            loss_mask=mask,
            logprobs=np.where(np.asarray(mask) == 1, -1.0, 0.0),
            sampling_logprobs=np.zeros(n),
            policy_version=np.where(np.asarray(mask) == 1, 0, -1),
            sample_starts=starts,
            mode=mode,
            advantage=1.0,
        )

    extended = [(system, 0)]
    for k in range(TURNS):
        extended.append((turns[k], 1))
        if k < TURNS - 1:
            extended.append((tools[k], 0))
    per_turn, starts, history = [], [], list(system)
    for k in range(TURNS):
        starts.append(sum(len(p) for p, _ in per_turn))
        per_turn += [(list(history), 0), (turns[k], 1)]
        history += turns[k] + (tools[k] if k < TURNS - 1 else [])
    return build(extended, [0], "extended"), build(per_turn, starts, "per_turn")


def time_grad(grad_fn, state, batch, repeats: int) -> tuple[float, float]:
    """(compile + first run, best of ``repeats`` steady-state) seconds."""
    start = time.perf_counter()
    jax.block_until_ready(grad_fn(state, batch))
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(grad_fn(state, batch))
        best = min(best, time.perf_counter() - start)
    return first, best


def main() -> dict:
    """Runs the benchmark; prints and saves the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pairs = [synthetic_records(rng) for _ in range(args.episodes)]
    seq_len = -(-len(pairs[0][0].tokens) // 128) * 128  # one extended episode per row
    packing = PackingConfig(seq_len=seq_len, row_buckets=tuple(range(1, 65)))
    model = Decoder(default_config(VOCAB, eos_token_id=1, pad_token_id=0), rngs=nnx.Rngs(0))
    cfg = TrainConfig(chunk_size=512)
    graphdef, state = init_train_state(model, cfg)
    grad_fn = make_grad_fn(graphdef, cfg)
    result: dict = {}
    for mode, index in (("extended", 0), ("per_turn", 1)):
        trajectories = [t for pair in pairs for t in pair[index].to_learner()]
        batch, info = pack_trajectories(trajectories, packing)
        first, best = time_grad(grad_fn, state, batch, args.repeats)
        result[mode] = {
            "sequences": len(trajectories),
            "tokens": int(sum(t.num_tokens for t in trajectories)),
            "loss_tokens": int(sum(int(t.loss_mask.sum()) for t in trajectories)),
            "batch_shape": list(batch.tokens.shape),
            "packing_efficiency": round(info.metrics["packing/efficiency"], 4),
            "compile_and_first_s": round(first, 3),
            "fwd_bwd_s": round(best, 4),
        }
    ext, per = result["extended"], result["per_turn"]
    device = jax.devices()[0]
    out = {
        "benchmark": "sequence_extension",
        "episodes": args.episodes,
        "turns": TURNS,
        "lengths": {"system": SYSTEM_TOKENS, "assistant": ASSISTANT_TOKENS, "tool": TOOL_TOKENS},
        "model": "Decoder 2 layers, width 128, vocab 2048 (make_default.default_config)",
        **result,
        "token_ratio": round(per["tokens"] / ext["tokens"], 2),
        "speedup": round(per["fwd_bwd_s"] / ext["fwd_bwd_s"], 2),
        "goal_token_ratio_ge_3": per["tokens"] / ext["tokens"] >= 3.0,
        "hardware": {
            "platform": device.platform,
            "device": device.device_kind,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "jax": jax.__version__,
        "commit": git_commit(),
    }
    results = Path(__file__).parent / "results"
    return save(out, results / f"sequence_extension_{device.platform}.json")


if __name__ == "__main__":
    main()
