"""Training forward+backward with block-causal attention vs all keys at once.

The full (no-cache) forward that training and log-prob passes run can cut its queries into
blocks that attend only to keys up to the block's end (``DecoderConfig.attention_block``; see
``mtrl_jax.models.attention.attend_causal_blocks``), skipping score blocks that causality masks
anyway. This measures the jitted gradient of the summed token log-probs (the shape of a train
step's work) on the quickstart's default architecture (width 128, 2 layers, vocab 2048; random
weights) for a few ``[rows, T]`` shapes, with ``attention_block`` 0 (all keys) and the given
block sizes, side by side in one process; each is compiled once, then the best of
``--repeats`` runs counts. The gradients are checked equal between block sizes.

    python benchmarks/bench_attention_blocks.py [--blocks 128 256] [--repeats 5]

The last stdout line is JSON (hardware named); it is also written to
``benchmarks/results/attention_blocks_cpu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _record import best_seconds, hardware, save
from flax import nnx

from mtrl_jax.models import Decoder
from mtrl_jax.models.make_default import DEFAULT_VOCAB_SIZE, default_config

RESULTS = Path(__file__).parent / "results" / "attention_blocks_cpu.json"
SHAPES = ((16, 768), (8, 640), (4, 2048))  # quickstart RL micro-batch, SFT batch, a long row


def _grad_fn(config: Any) -> Any:
    """A jitted gradient of the summed log-probs of the row's own next tokens."""
    graphdef, params, rest = nnx.split(Decoder(config, rngs=nnx.Rngs(0)), nnx.Param, ...)

    def loss(p: Any, tokens: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, p, rest)
        return model.token_logprobs(tokens, jnp.roll(tokens, -1, axis=1)).sum()

    return jax.jit(jax.grad(loss)), params


def main() -> dict[str, Any]:
    """Times every shape at every block size and returns the result record."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    base = default_config(DEFAULT_VOCAB_SIZE, eos_token_id=2, pad_token_id=0)
    runs = []
    for rows, t in SHAPES:
        tokens = jnp.asarray(
            np.random.default_rng(0).integers(3, DEFAULT_VOCAB_SIZE, (rows, t)), jnp.int32
        )
        record: dict[str, Any] = {"rows": rows, "seq_len": t}
        reference = None
        for block in [0, *args.blocks]:
            grad, params = _grad_fn(dataclasses.replace(base, attention_block=block))
            grads = jax.block_until_ready(grad(params, tokens))  # compile
            seconds = best_seconds(functools.partial(grad, params, tokens), args.repeats)
            record[f"block{block}_s"] = round(seconds, 4)
            if reference is None:
                reference = grads
                continue
            diff = max(
                float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True)
            )
            record[f"block{block}_max_grad_diff"] = diff
            record[f"block{block}_speedup"] = round(record["block0_s"] / seconds, 2)
        runs.append(record)
        print(json.dumps(record), flush=True)
    result: dict[str, Any] = {
        "benchmark": "attention_blocks_cpu",
        "model": "quickstart default (width 128, 2 layers, vocab 2048), fp32, random weights",
        "work": "jitted grad of summed token log-probs (full forward + backward)",
        "repeats": args.repeats,
        "runs": runs,
        "hardware": hardware(),
    }
    return save(result, args.out)


if __name__ == "__main__":
    main()
