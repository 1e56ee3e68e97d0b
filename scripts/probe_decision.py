"""Probe of the quickstart's decision: how much probability a model puts on each final answer.

For every task of a split, the oracle's episode is rendered token by token as a rollout would
(true tool results included), and the final assistant message is scored four times, once per
action (``refund``, ``credit``, ``sorry``, ``wait``). Normalised over the four, this is the
model's answer distribution given a perfect protocol, grouped by the class the procedure
assigns (``lost``, ``moving``, ``late-gold``, ``late-basic``). Unlike greedy success, it moves
smoothly: it shows whether RL learnt the decision or only flipped near-ties.

Usage: ``.venv/bin/python scripts/probe_decision.py MODEL_DIR [MODEL_DIR ...]`` (HF folders,
e.g. ``runs/quickstart/warm_start`` or the output of ``mtrl export``). Prints one JSON line per
model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ACTIONS = ("refund", "credit", "sorry", "wait")
CLASS_OF = {"refund": "lost", "wait": "moving", "credit": "late-gold", "sorry": "late-basic"}


def candidate_batch(
    tokenizer: Any, split: str, num_tasks: int, recap: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Token rows (4 per task, one per action), masks of the final message, true actions.

    With ``recap`` the final message restates the tool results first (as a warm start with
    ``sft.recap`` teaches); the recap is the same in all four rows, so the normalised
    probabilities are those of the answer given the recap.
    """
    from mtrl_jax.demonstrations import oracle_records
    from mtrl_jax.tasks import env_factory

    make = env_factory("mtrl/SopQuickstart-v0", split=split, kwargs={})
    tasks = [{"task_index": i} for i in range(num_tasks)]
    stop = int(tokenizer.eos_token_id)
    rows, starts, truths = [], [], []
    for record in oracle_records(make, tasks, tokenizer, stop_token_id=stop, recap=recap):
        start = record.turn_spans[-1][0]
        text = [m for m in record.messages if m["role"] == "assistant"][-1]["content"]
        true = record.final_answer["value"]["action"]
        for action in ACTIONS:
            variant = text.replace(f'"{true}"', f'"{action}"')
            ids = tokenizer.encode(variant, add_special_tokens=False)
            rows.append([*record.tokens[:start].tolist(), *ids, stop])
            starts.append(start)
        truths.append(true)
    tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)
    mask = np.zeros(tokens.shape, np.float32)
    for i, (ids, start) in enumerate(zip(rows, starts, strict=True)):
        tokens[i, : len(ids)] = ids
        mask[i, start : len(ids)] = 1.0
    return tokens, mask, truths


def answer_probs(model: Any, tokens: np.ndarray, mask: np.ndarray, chunk: int = 40) -> np.ndarray:
    """``[tasks, 4]`` probabilities of the four actions (final-message log-probs, normalised)."""

    @jax.jit
    def score(t: jax.Array, m: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(model(t)[:, :-1].astype(jnp.float32), -1)
        picked = jnp.take_along_axis(logp, t[:, 1:, None], -1)[..., 0]
        return (picked * m[:, 1:]).sum(-1)

    scores = np.concatenate(
        [
            np.asarray(score(jnp.asarray(tokens[i : i + chunk]), jnp.asarray(mask[i : i + chunk])))
            for i in range(0, len(tokens), chunk)
        ]
    ).reshape(-1, len(ACTIONS))
    probs = np.exp(scores - scores.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True)


def summarise(probs: np.ndarray, truths: Sequence[str]) -> dict[str, Any]:
    """Mean probability of the true action and argmax accuracy, overall and per class."""
    true_idx = np.array([ACTIONS.index(t) for t in truths])
    p_true = probs[np.arange(len(truths)), true_idx]
    out: dict[str, Any] = {
        "p_true": round(float(p_true.mean()), 3),
        "argmax_ok": round(float((probs.argmax(1) == true_idx).mean()), 3),
    }
    for action, cls in CLASS_OF.items():
        sel = true_idx == ACTIONS.index(action)
        if sel.any():
            out[cls] = {
                "n": int(sel.sum()),
                "p_true": round(float(p_true[sel].mean()), 3),
                "argmax_ok": round(float((probs[sel].argmax(1) == true_idx[sel]).mean()), 3),
                "mean_probs": {
                    a: round(float(x), 3) for a, x in zip(ACTIONS, probs[sel].mean(0), strict=True)
                },
            }
    return out


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Probes each model folder; prints and returns one result per model."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="HF model folders")
    p.add_argument("--split", default="test")
    p.add_argument("--tasks", type=int, default=100, help="first N tasks of the split")
    p.add_argument("--recap", action="store_true", help="final messages restate tool results")
    args = p.parse_args(argv)
    from mtrl_jax.models.pretrained import load_pretrained
    from mtrl_jax.models.tokenizer import load_tokenizer

    tokens, mask, truths = candidate_batch(
        load_tokenizer(args.models[0]), args.split, args.tasks, recap=args.recap
    )
    results = []
    for path in args.models:
        result = {
            "model": path,
            **summarise(answer_probs(load_pretrained(path), tokens, mask), truths),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    main()
