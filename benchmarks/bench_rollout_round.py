"""One quickstart rollout round with the sampler's prefix reuse on vs off, side by side.

The workload mirrors ``Trainer._collect`` on the quickstart config: the tiny default model
(``build_default``, untrained) samples 64 episodes (8 tasks x 8 samples) of
``mtrl/SopQuickstart-v0`` through :class:`mtrl_jax.rollout.RolloutEngine`, with the config's
sampler, engine (64 slots, 8 decode steps per call) and rollout settings. The engines hold the
same weights and key and play the same tasks with the same request ids, so they must sample the
same tokens; the script checks that. A third engine reuses prefixes and batches every slot's
prefill rows into one call (``prefill_rows=num_slots``; the CPU default is one row per call,
which with reuse off is the sampler's previous one-request-at-a-time prefill). A fourth reuses
prefixes but has every decode step attend to the whole cache (``min_live_slots=0``, the
sampler before live-slot buckets; the quickstart's cache is 1,224 slots, episodes 500-600
tokens). Before every round each engine gets ``set_params`` (as after a training step), so no
KV from an earlier round is reusable and only sharing *within* the round counts. One warm-up
round per engine compiles; then ``--repeats`` rounds per engine, rotating which goes first; the
median counts.

Usage: ``python benchmarks/bench_rollout_round.py [--repeats 3]``. The last stdout line is JSON;
it is also written to ``benchmarks/results/rollout_round_cpu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from _record import hardware, save

from mtrl_jax.config import load_config
from mtrl_jax.models import load_pretrained, load_tokenizer
from mtrl_jax.models.make_default import build_default
from mtrl_jax.rollout.engine import RolloutEngine, run_blocking
from mtrl_jax.sampler import PrefillStats, SamplingEngine, decode_steps, prefill_chunk
from mtrl_jax.tasks import TaskStream, count_tasks, env_factory

RESULTS = Path(__file__).parent / "results" / "rollout_round_cpu.json"


def _round(
    engine: SamplingEngine,
    rollout: RolloutEngine,
    model: Any,
    tasks: list[dict[str, Any]],
    step: int,
) -> tuple[float, PrefillStats, list[Any]]:
    """Plays round ``step`` as the trainer does; returns seconds, prefill stats and records."""
    engine.set_params(model, version=step)  # as after a training step: earlier KV is stale
    engine.set_key(jax.random.fold_in(jax.random.key(0), step))
    engine.stats = PrefillStats()
    start = time.perf_counter()
    batch = run_blocking(rollout.collect(tasks, step=step))
    return time.perf_counter() - start, engine.stats, batch.records


def main() -> dict[str, object]:
    """Times both engines and returns the result record."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    cfg = load_config("quickstart")
    make_env = env_factory(cfg.env.id, split=cfg.env.train_split, kwargs=cfg.env.kwargs)
    tasks = TaskStream(count_tasks(make_env), seed=cfg.seed).take(cfg.env.tasks_per_step)
    with tempfile.TemporaryDirectory() as folder:
        path = build_default(Path(folder) / "tiny", seed=cfg.model.seed)
        tokenizer = load_tokenizer(path)
        model = load_pretrained(path, dtype=cfg.model.dtype)
    sides: dict[str, tuple[SamplingEngine, RolloutEngine]] = {}
    # name: (SamplingEngine options, changes to the config's sampler settings)
    variants: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "reuse_on": ({"prefix_reuse": True}, {}),
        "reuse_off": ({"prefix_reuse": False}, {}),
        "reuse_on_batched": ({"prefix_reuse": True, "prefill_rows": cfg.engine.num_slots}, {}),
        "reuse_on_whole_cache": ({"prefix_reuse": True}, {"min_live_slots": 0}),
    }
    for name, (options, sampler_changes) in variants.items():
        engine = SamplingEngine(
            model,
            num_slots=cfg.engine.num_slots,
            max_len=cfg.engine.max_len,
            tokenizer=tokenizer,
            config=dataclasses.replace(cfg.sampler, **sampler_changes),
            key=jax.random.key(0),
            decode_steps_per_call=cfg.engine.decode_steps_per_call,
            **options,
        )
        sides[name] = engine, RolloutEngine(engine, tokenizer, make_env, cfg.rollout)

    times: dict[str, list[float]] = {name: [] for name in sides}
    stats: dict[str, PrefillStats] = {}
    records: dict[str, list[Any]] = {}
    identical, max_logprob_gap = True, 0.0
    programs: list[int] = []  # compiled prefill programs (all engines) after each round
    decode_programs: list[int] = []
    for step in range(args.repeats + 1):  # step 0 warms up (compiles) every engine
        names = list(sides)
        first = step % len(names)
        for name in names[first:] + names[:first]:
            seconds, stats[name], records[name] = _round(*sides[name], model, tasks, step)
            if step > 0:
                times[name].append(seconds)
        for name in ("reuse_on", "reuse_on_batched", "reuse_on_whole_cache"):
            for a, b in zip(records[name], records["reuse_off"], strict=True):
                identical &= a.tokens.tolist() == b.tokens.tolist()
                if identical:
                    gap = np.abs(np.asarray(a.logprobs) - np.asarray(b.logprobs)).max(initial=0)
                    max_logprob_gap = max(max_logprob_gap, float(gap))
        programs.append(prefill_chunk._cache_size())
        decode_programs.append(decode_steps._cache_size())

    median = {name: statistics.median(t) for name, t in times.items()}
    record: dict[str, object] = {
        "benchmark": "rollout_round_cpu",
        "workload": "quickstart config, tiny default model (untrained), one RL rollout round of "
        f"{len(tasks)} tasks x {cfg.rollout.group_size} episodes",
        "repeats": args.repeats,
        "round_s_median": {name: round(t, 3) for name, t in median.items()},
        "speedup_reuse_on_vs_off": round(median["reuse_off"] / median["reuse_on"], 3),
        "speedup_batched_vs_off": round(median["reuse_off"] / median["reuse_on_batched"], 3),
        "speedup_live_slots_vs_whole_cache": round(
            median["reuse_on_whole_cache"] / median["reuse_on"], 3
        ),
        "round_s_all": {name: [round(x, 3) for x in t] for name, t in times.items()},
        "identical_tokens": identical,
        "max_logprob_gap": max_logprob_gap,
        "episode_tokens": int(sum(len(r.tokens) for r in records["reuse_on"])),
        "prefill_last_round": {name: dataclasses.asdict(s) for name, s in stats.items()},
        # Timed rounds that met a new (bucket, rows) shape paid its compilation (2-4 s here);
        # only the batched engine has more than one row count.
        "prefill_programs_after_each_round": programs,
        # Decode: one program per (engine, live-slot bucket) met so far.
        "decode_programs_after_each_round": decode_programs,
        "live_slot_buckets": list(sides["reuse_on"][0].live_slot_buckets),
        "hardware": hardware(machine="shared 2-core CPU" if os.cpu_count() == 2 else "CPU"),
    }
    return save(record, args.out)


if __name__ == "__main__":
    main()
