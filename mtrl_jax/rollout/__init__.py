"""Rollout: groups of episodes sampled token-in-token-out and turned into trajectory records.

Public API::

    from mtrl_jax.rollout import RolloutConfig, RolloutEngine

    engine = RolloutEngine(sampler, tokenizer, "mtrl/SopQuickstart-v0", RolloutConfig(group_size=8))
    batch = engine.collect_sync([{"task_id": "q1"}, {"task_index": 3}], step=0)
    batch.records        # TrajectoryRecord per episode (mtrl_jax.trajectory)
    batch.trajectories   # mtrl_jax.types.Trajectory for pack_trajectories (infra failures excluded)
    batch.metrics        # rollout/*, advantage/*

Modules: ``sequence`` (one episode's tokens: sampled tokens plus chat-template deltas, history
rewrite detection), ``engine`` (concurrent groups through ``mtrl_gym.EpisodeRunner``, exclusion
of infrastructure failures, group filtering, group advantages), ``shaping`` (DAPO's overlong
penalty or filter, before advantages), ``metrics`` (``rollout/*`` names).

Non-goals: the sampler itself (``mtrl_jax.sampler``), the training loop (``trainer``).
"""

from mtrl_jax.rollout.engine import RolloutBatch, RolloutConfig, RolloutEngine, Sampler
from mtrl_jax.rollout.metrics import EXCLUDED_STATUSES, rollout_metrics
from mtrl_jax.rollout.sequence import ChatTokenizer, EpisodeSequence, SampleLike
from mtrl_jax.rollout.shaping import OverlongConfig

__all__ = [
    "EXCLUDED_STATUSES",
    "ChatTokenizer",
    "EpisodeSequence",
    "OverlongConfig",
    "RolloutBatch",
    "RolloutConfig",
    "RolloutEngine",
    "SampleLike",
    "Sampler",
    "rollout_metrics",
]
