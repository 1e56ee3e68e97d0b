"""Decode throughput: mtrl's JAX sampler vs transformers ``generate`` on the same weights.

Both run greedy decoding on CPU, side by side in one process, on random Qwen3 checkpoints made
with transformers and loaded with ``load_pretrained``: same batch, same prompt length, same
number of new tokens, no stop conditions. Two models (``MODELS``: "bench", width 256 and 4
layers; "quickstart", the quickstart's width-128, 2-layer default) at each ``--batch`` size.
Each side is warmed up once (compilation, allocator) and then timed over ``--repeats`` runs; the
best run counts. Tokens/s = batch x new tokens / seconds, prefill included on both sides.

Every run is also placed against this machine's roofline, measured once at the start: the
streaming read bandwidth (a numpy reduction over 512 MB, best of 5) and the fp32 matmul rate (a
jitted 1024^3 matmul, best of 5). A decode step must read every weight and the live KV cache, and
do ``2 x params x batch`` FLOPs (plus attention); its bound is the larger of bytes / bandwidth and
FLOPs / matmul rate. Each sampler's time per decode step is its run time / new tokens (prefill
included, so the fractions of the bound are slight underestimates). The bandwidth is DRAM's: a
model whose weights fit the last-level cache (32 MB on the machine of the committed result) can
run above that bound. At batch 1 transformers' per-step host work (Python, dispatch) decides;
our sampler runs several decode steps per jitted call.

Usage: ``python benchmarks/bench_sampler.py [--models bench --batch 8 --prompt 32 --new 128]``.
Each run's record goes to stderr as it finishes; the last stdout line is the whole JSON, also
written to ``benchmarks/results/sampler_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch
import transformers
from _record import best_seconds, hardware, save

from mtrl_jax.models import load_pretrained
from mtrl_jax.sampler import SamplerConfig, SamplingEngine

RESULTS = Path(__file__).parent / "results" / "sampler_cpu.json"
_COMMON = {"vocab_size": 2048, "num_key_value_heads": 2, "tie_word_embeddings": True}
# "bench": width 256, 4 layers (3.7M parameters); "quickstart": the quickstart's default model
# (mtrl_jax.models.make_default: width 128, 2 layers, 0.7M parameters).
MODELS = {
    "bench": {
        **_COMMON,
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "head_dim": 64,
    },
    "quickstart": {
        **_COMMON,
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "head_dim": 32,
        "rope_theta": 10_000.0,
    },
}


def _roofline() -> dict[str, float]:
    """This machine's streaming read bandwidth (GB/s) and fp32 matmul rate (GFLOP/s)."""
    data = np.ones(128 * 2**20, np.float32)  # 512 MB: far beyond any cache
    read_s = best_seconds(lambda: float(data.sum()), 5)
    n = 1024
    a = jax.numpy.ones((n, n), jax.numpy.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    mm_s = best_seconds(lambda: matmul(a).block_until_ready(), 5)
    return {
        "read_gb_s": round(data.nbytes / read_s / 1e9, 2),
        "matmul_gflop_s": round(2 * n**3 / mm_s / 1e9, 1),
    }


def _step_bound_s(
    config: dict[str, Any], params: int, batch: int, context: float, roof: dict[str, float]
) -> float:
    """Lower bound on one decode step: weights + KV cache read, or the matmul FLOPs."""
    layers = config["num_hidden_layers"]
    kv_per_token = layers * 2 * config["num_key_value_heads"] * config["head_dim"]
    read = 4 * (params + batch * context * kv_per_token)  # fp32 bytes
    flops = 2 * params * batch + 4 * batch * context * layers * (
        config["num_attention_heads"] * config["head_dim"]
    )
    return max(read / (roof["read_gb_s"] * 1e9), flops / (roof["matmul_gflop_s"] * 1e9))


def measure(
    name: str, batch: int, args: argparse.Namespace, roof: dict[str, float]
) -> dict[str, Any]:
    """One model at one batch size: transformers, then our sampler per ``--steps-per-call``."""
    config = MODELS[name]
    torch.manual_seed(0)
    hf_model = transformers.AutoModelForCausalLM.from_config(
        transformers.Qwen3Config(**config, max_position_embeddings=1024),
        attn_implementation="sdpa",
    ).eval()
    prompts = np.random.default_rng(0).integers(0, config["vocab_size"], (batch, args.prompt))
    gen = transformers.GenerationConfig(
        do_sample=False,
        max_new_tokens=args.new,
        min_new_tokens=args.new,
        eos_token_id=None,
        pad_token_id=0,
    )

    def run_hf() -> np.ndarray:
        with torch.no_grad():
            out = hf_model.generate(torch.tensor(prompts), generation_config=gen)
        return out[:, args.prompt :].numpy()

    hf_tokens = run_hf()
    hf_s = best_seconds(run_hf, args.repeats)
    total = batch * args.new
    params = sum(p.numel() for p in hf_model.parameters())  # tied embeddings counted once
    bound_s = _step_bound_s(config, params, batch, args.prompt + args.new / 2, roof)
    record: dict[str, Any] = {
        "model": name,
        "params": params,
        "batch": batch,
        "decode_step_bound_ms": round(bound_s * 1e3, 3),
        "transformers_tokens_per_s": round(total / hf_s, 1),
        "transformers_fraction_of_bound": round(bound_s / (hf_s / args.new), 3),
    }
    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        model = load_pretrained(folder)
    # Each steps-per-call setting with live-slot buckets (the default), and the largest also
    # attending to the whole cache every step (min_live_slots=0, the sampler before them).
    default = SamplerConfig().min_live_slots
    variants = [(steps, f"steps{steps}", default) for steps in args.steps_per_call]
    most = max(args.steps_per_call)
    variants.append((most, f"steps{most}_whole_cache", 0))
    for steps, label, min_live in variants:
        engine = SamplingEngine(
            model,
            num_slots=batch,
            max_len=args.prompt + args.new + 1,
            config=SamplerConfig(
                temperature=0.0, prefill_buckets=(args.prompt,), min_live_slots=min_live
            ),
            key=jax.random.key(0),
            decode_steps_per_call=steps,
        )

        def run_ours(engine: SamplingEngine = engine) -> list[list[int]]:
            results = engine.generate_batch(prompts.tolist(), max_new_tokens=args.new)
            return [r.tokens for r in results]

        ours_tokens = np.asarray(run_ours())
        ours_s = best_seconds(run_ours, args.repeats)
        record[f"mtrl_{label}_tokens_per_s"] = round(total / ours_s, 1)
        record[f"mtrl_{label}_speedup"] = round(hf_s / ours_s, 2)
        record[f"mtrl_{label}_token_agreement"] = float((ours_tokens == hf_tokens).mean())
        record[f"mtrl_{label}_fraction_of_bound"] = round(bound_s / (ours_s / args.new), 3)
    print(json.dumps(record), file=sys.stderr, flush=True)
    return record


def main() -> dict[str, object]:
    """Runs both samplers on every (model, batch) and returns the result record."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps-per-call", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    roof = _roofline()
    runs = [measure(name, batch, args, roof) for name in args.models for batch in args.batch]
    best = max(args.steps_per_call)
    record: dict[str, object] = {
        "benchmark": "sampler_cpu",
        "prompt_len": args.prompt,
        "new_tokens": args.new,
        "roofline": roof,
        "runs": runs,
        f"speedup_steps{best}_min": min(r[f"mtrl_steps{best}_speedup"] for r in runs),
        f"speedup_steps{best}_max": max(r[f"mtrl_steps{best}_speedup"] for r in runs),
    }
    record["hardware"] = hardware(
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers.__version__,
    )
    return save(record, args.out)


if __name__ == "__main__":
    main()
