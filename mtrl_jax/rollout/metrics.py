"""Rollout metrics: fixed ``rollout/*`` names over a round's trajectory records.

Means are over the *included* episodes (infrastructure failures excluded, as for advantages);
the excluded ones are counted in ``rollout/excluded_infra`` and by status. A round with no
included episode reports 0.0 for the means.

Names:
    ``rollout/episodes``, ``rollout/excluded_infra``, ``rollout/return_mean``,
    ``rollout/return_std``, ``rollout/success_rate`` (``eval["success"]``), ``rollout/turns``
    (mean assistant turns), ``rollout/tokens`` (all tokens of included episodes),
    ``rollout/sampled_tokens`` (loss-mask tokens), ``rollout/samples`` (training sequences),
    ``rollout/per_turn_frac`` (episodes split by a history-rewriting template),
    ``rollout/tool_calls`` (mean per episode), ``rollout/episode_s`` / ``rollout/sample_s``
    (mean seconds), ``rollout/groups``, ``rollout/group_size_min`` (smallest included group),
    ``rollout/status/<status>`` (episodes per status, excluded ones included).

Non-goals: logging (the trainer logs the dict), advantage metrics (``mtrl_jax.advantages``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from mtrl_jax.trajectory import TrajectoryRecord

# Statuses that mean the environment's infrastructure failed: excluded, never scored.
EXCLUDED_STATUSES = frozenset({"infra_error", "timeout"})


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def rollout_metrics(records: Sequence[TrajectoryRecord]) -> dict[str, float]:
    """The ``rollout/*`` metrics of a round (see the module docstring for the names)."""
    valid = [r for r in records if r.status not in EXCLUDED_STATUSES]
    rewards = [r.reward for r in valid]
    per_group = Counter(r.group_id for r in valid)
    metrics = {
        "rollout/episodes": float(len(records)),
        "rollout/excluded_infra": float(len(records) - len(valid)),
        "rollout/return_mean": _mean(rewards),
        "rollout/return_std": float(np.std(rewards)) if rewards else 0.0,
        "rollout/success_rate": _mean([float(bool((r.eval or {}).get("success"))) for r in valid]),
        "rollout/turns": _mean([r.num_turns for r in valid]),
        "rollout/tokens": float(sum(len(r.tokens) for r in valid)),
        "rollout/sampled_tokens": float(sum(int(r.loss_mask.sum()) for r in valid)),
        "rollout/samples": float(sum(r.num_samples for r in valid)),
        "rollout/per_turn_frac": _mean([float(r.mode == "per_turn") for r in valid]),
        "rollout/tool_calls": _mean([len(r.tool_calls) for r in valid]),
        "rollout/episode_s": _mean([r.timings.get("episode_s", 0.0) for r in valid]),
        "rollout/sample_s": _mean([r.timings.get("sample_s", 0.0) for r in valid]),
        "rollout/groups": float(len(per_group)),
        "rollout/group_size_min": float(min(per_group.values(), default=0)),
    }
    for status, count in sorted(Counter(r.status for r in records).items()):
        metrics[f"rollout/status/{status}"] = float(count)
    return metrics
