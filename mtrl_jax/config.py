"""The typed run configuration: frozen dataclasses, YAML files, ``key=value`` overrides.

A run is described by one :class:`RunConfig`, a tree of frozen ``kw_only`` dataclasses: the
sections defined here plus the learner's own configs (:class:`SamplerConfig`,
:class:`RolloutConfig`, :class:`TrainConfig`, :class:`PackingConfig`, and
:class:`~mtrl_jax.sharding.ShardingConfig` for mesh shapes). It is built from
plain data by :func:`from_dict`, which is strict: an unknown key names its dotted path and the
closest valid key, a value of the wrong type names the path, the expected type and what it got,
and each section's ``__post_init__`` check is reported with the section's path.
:func:`load_config` reads a YAML file or a shipped config by name (``mtrl_jax/configs/*.yaml``),
follows its optional ``base:`` chain (deep merge, child wins), applies command-line overrides
(``train.optimizer.learning_rate=1e-4``) and validates. :func:`flatten` gives the resolved config
as dotted string params for MLflow.

The generic machinery (the YAML dialect, ``from_dict``/``to_dict``/``flatten``, overrides) is
:mod:`mtrl_jax.configlib`; its names are re-exported here.

Non-goals: a general schema library (only the field types the configs use are supported),
environment-variable interpolation, writing configs back with their comments.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mtrl_jax.configlib import (
    BASE_KEY,
    ConfigError,
    apply_overrides,
    describe_value,
    dump_yaml,
    flatten,
    from_dict,
    parse_yaml,
    to_dict,
)
from mtrl_jax.packing import PackingConfig
from mtrl_jax.rollout.engine import RolloutConfig
from mtrl_jax.sampler.config import SamplerConfig
from mtrl_jax.sharding import ShardingConfig
from mtrl_jax.train_step import TrainConfig

__all__ = [  # the schema, the loader, and the generic helpers re-exported from configlib
    "AsyncConfig",
    "CheckpointConfig",
    "EngineConfig",
    "EnvConfig",
    "EvalConfig",
    "MeshConfig",
    "ModelConfig",
    "RunConfig",
    "SFTConfig",
    "TrackingConfig",
    "CONFIG_DIR",
    "ConfigError",
    "apply_overrides",
    "dump_yaml",
    "flatten",
    "from_dict",
    "list_configs",
    "load_config",
    "load_config_data",
    "parse_yaml",
    "to_dict",
]

CONFIG_DIR = Path(__file__).parent / "configs"
"""Folder of the shipped YAML configs (package data)."""


def list_configs() -> list[str]:
    """Names of the shipped configs (``load_config(name)`` loads one).

    >>> "quickstart" in list_configs()
    True
    """
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve(source: str | os.PathLike[str], relative_to: Path | None) -> Path:
    """A shipped name (no separator, no ``.yaml`` suffix) or a path, as a file path."""
    text = os.fspath(source)
    is_name = isinstance(source, str) and not re.search(r"[/\\]|\.ya?ml$", text)
    if is_name:
        path = CONFIG_DIR / f"{text}.yaml"
        if not path.is_file():
            close = difflib.get_close_matches(text, list_configs(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            shipped = ", ".join(list_configs())
            raise ConfigError(f"unknown config {text!r}; {hint}shipped configs: {shipped}")
        return path
    path = Path(text).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def _deep_merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``child``; sections merge recursively, anything else is replaced."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping merged over its ``base`` chain (without the ``base`` key)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"cycle in '{BASE_KEY}': {cycle}")
    data = parse_yaml(path.read_text(encoding="utf-8"), source=str(path))
    if data is None:  # an empty file is an empty mapping: all defaults
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {describe_value(data)}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a config name or path, got {base!r}")
    parent = _read_with_bases(_resolve(base, path.parent), (*chain, path))
    return _deep_merge(parent, data)


def load_config_data(source: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The plain data of a config file or shipped name with its ``base`` chain merged in.

    Args:
        source: a YAML path, or the name of a shipped config; None gives ``{}``.
    """
    return {} if source is None else _read_with_bases(_resolve(source, None))


def load_config(
    source: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> RunConfig:
    """Reads, overrides and validates a run config.

    Args:
        source: a YAML file path, or the name of a shipped config (``"quickstart"`` is
            ``mtrl_jax/configs/quickstart.yaml``); None starts from the defaults.
        overrides: ``key.path=value`` strings applied after the file (see
            :func:`apply_overrides`).

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: for a missing file or unknown name, invalid YAML, a ``base`` cycle, a
            malformed override, or an invalid config; the message names the file or key path.

    >>> load_config(None, ["steps=3", "async.mode=async"]).async_.mode
    'async'
    """
    return from_dict(RunConfig, apply_overrides(load_config_data(source), overrides))


# --- the schema ----------------------------------------------------------------------------


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Literal fields are checked again here for configs built in Python, not from YAML."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The policy model.

    Attributes:
        path: a Hugging Face folder (``mtrl_jax.models.pretrained``); None builds the default
            tiny model with ``mtrl_jax.models.make_default.build_default`` into the run dir.
        seed: seed of the default model's tokenizer episodes and weights (unused with ``path``).
        dtype: compute dtype of the model.
    """

    path: str | None = None
    seed: int = 0
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if self.path is not None and not self.path:
            raise ValueError("path must be a folder or null, got ''")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        _check_choice("dtype", self.dtype, ("float32", "bfloat16"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """The environment and how many of its tasks one RL step plays.

    Attributes:
        id: registered environment id (``gym.make``).
        kwargs: extra ``gym.make`` keyword arguments (plain YAML data); not ``split``.
        train_split: ``split`` passed to ``gym.make`` for training; None passes none (the
            environment's default).
        eval_split: ``split`` of the held-out evaluation environment; None passes none.
        tasks_per_step: tasks per RL step, each played ``rollout.group_size`` times.
    """

    id: str = "mtrl/SopQuickstart-v0"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_split: str | None = "train"
    eval_split: str | None = "test"
    tasks_per_step: int = 8

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id must be a registered environment id, got ''")
        if "split" in self.kwargs:
            raise ValueError("kwargs must not set 'split'; use train_split / eval_split")
        if self.tasks_per_step < 1:
            raise ValueError(f"tasks_per_step must be >= 1, got {self.tasks_per_step}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Shape of the sampling engine (``mtrl_jax.sampler.SamplingEngine``).

    Attributes:
        num_slots: concurrent sequences in the KV cache.
        max_len: tokens one sequence (a whole episode's context) may hold.
        decode_steps_per_call: tokens decoded per compiled call (amortises dispatch).
    """

    num_slots: int = 64
    max_len: int = 1024
    decode_steps_per_call: int = 8

    def __post_init__(self) -> None:
        if self.num_slots < 1 or self.max_len < 2 or self.decode_steps_per_call < 1:
            raise ValueError("need num_slots >= 1, max_len >= 2 and decode_steps_per_call >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AsyncConfig:
    """Overlap of rollout and training (YAML key ``async``).

    Attributes:
        mode: ``sync`` alternates rollout and update; ``async`` samples the next rounds while
            the learner trains on the current one.
        max_staleness: largest allowed gap, in policy versions, between the params that
            sampled a token and the params being updated (``async`` only).
        staleness_policy: what happens to a round past ``max_staleness``: ``drop`` discards
            it, ``pause`` stops sampling until the learner catches up.
        queue_size: rollout rounds buffered between sampler and learner.
    """

    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = 1
    staleness_policy: Literal["drop", "pause"] = "pause"
    queue_size: int = 2

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, ("sync", "async"))
        _check_choice("staleness_policy", self.staleness_policy, ("drop", "pause"))
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Devices of the run: the training mesh and where the sampler runs.

    The default (every axis 1, colocated) trains and samples on the first device without a
    mesh, whatever ``jax.devices()`` holds. Any other setting must use every device of
    ``jax.devices()`` (all processes' in a multi-process run): the training mesh's devices,
    plus the sampler's with ``disjoint``. The trainer checks the count when it starts
    (``mtrl_jax.sharding.make_run_meshes``).

    Attributes:
        train: sizes of the training mesh's ``data``, ``fsdp`` and ``tensor`` axes
            (``mtrl_jax.sharding``); batch rows are split over ``data * fsdp``.
        sampler: ``colocated``: the sampler shares the training mesh (weights laid out as the
            train state's; rollout and training take turns on the same devices).
            ``disjoint``: the sampler has its own devices, the ones after the training mesh's
            in ``jax.devices()`` order; each update's weights are copied over to them, and in
            ``async`` mode generation and training run at the same time.
        sampler_mesh: axis sizes of the sampler's own mesh (``disjoint`` only; its product is
            the number of sampling devices). ``data``/``fsdp`` split the KV-cache slots,
            ``tensor`` the heads.
    """

    train: ShardingConfig = dataclasses.field(default_factory=ShardingConfig)
    sampler: Literal["colocated", "disjoint"] = "colocated"
    sampler_mesh: ShardingConfig = dataclasses.field(default_factory=ShardingConfig)

    def __post_init__(self) -> None:
        _check_choice("sampler", self.sampler, ("colocated", "disjoint"))
        if self.sampler == "colocated" and self.sampler_mesh != ShardingConfig():
            raise ValueError(
                "sampler_mesh is only used with sampler: disjoint (colocated sampling uses the "
                "training mesh)"
            )

    @property
    def single_device(self) -> bool:
        """The default: one device, no mesh."""
        return self.sampler == "colocated" and self.train.num_devices == 1

    @property
    def num_devices(self) -> int:
        """Devices the run uses: the training mesh's, plus the sampler's when disjoint."""
        disjoint = self.sampler_mesh.num_devices if self.sampler == "disjoint" else 0
        return self.train.num_devices + disjoint


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Held-out evaluation.

    Attributes:
        every: RL steps between evaluations; 0 evaluates only before and after training.
        split: split evaluated; None uses ``env.eval_split``.
        max_tasks: evaluate the first this many tasks of the split; None: all.
        samples_per_task: episodes per task (``n`` of pass@k).
        temperature: sampling temperature of evaluation episodes (0: greedy).
        pass_k: the ``k`` values of the reported pass@k (each ``<= samples_per_task``).
        hack_window: evaluations over which "train reward rises, eval reward does not"
            raises a reward-hacking warning.
    """

    every: int = 0
    split: str | None = "test"
    max_tasks: int | None = None
    samples_per_task: int = 1
    temperature: float = 0.0
    pass_k: tuple[int, ...] = (1,)
    hack_window: int = 3

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"every must be >= 0, got {self.every}")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError(f"max_tasks must be >= 1 or null, got {self.max_tasks}")
        if self.samples_per_task < 1:
            raise ValueError(f"samples_per_task must be >= 1, got {self.samples_per_task}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not self.pass_k or min(self.pass_k) < 1 or len(set(self.pass_k)) != len(self.pass_k):
            raise ValueError(f"pass_k must be distinct values >= 1, got {self.pass_k}")
        if max(self.pass_k) > self.samples_per_task:
            raise ValueError(
                f"pass_k values must be <= samples_per_task ({self.samples_per_task}), "
                f"got {self.pass_k}"
            )
        if self.hack_window < 2:  # a trend needs two evaluations
            raise ValueError(f"hack_window must be >= 2, got {self.hack_window}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Orbax checkpoints.

    Attributes:
        every: RL steps between checkpoints; 0 saves only at the end.
        keep: most recent checkpoints kept.
        dir: checkpoint folder; None: ``<run dir>/checkpoints``.
    """

    every: int = 0
    keep: int = 3
    dir: str | None = None

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"every must be >= 0, got {self.every}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """MLflow tracking.

    Attributes:
        enabled: log to MLflow at all.
        tracking_uri: MLflow tracking URI; None: a file store under the run dir.
        experiment: MLflow experiment name.
        run_name: MLflow run name; None: the config's ``name``.
        log_episodes: episode traces logged per step.
        log_trajectories: also log the step's trajectory records as an artifact.
    """

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "mtrl"
    run_name: str | None = None
    log_episodes: int = 4
    log_trajectories: bool = True

    def __post_init__(self) -> None:
        if not self.experiment:
            raise ValueError("experiment must be a non-empty name")
        if self.log_episodes < 0:
            raise ValueError(f"log_episodes must be >= 0, got {self.log_episodes}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """Supervised warm start on demonstrations before RL.

    Attributes:
        steps: SFT updates; 0 skips the warm start.
        batch_size: demonstrations per update.
        learning_rate: SFT learning rate.
        demo_tasks: the first this many train tasks give demonstrations; None: all.
        demo_source: ``oracle`` plays the environments' oracle; ``trajectories`` reads
            recorded episodes from ``trajectories``.
        trajectories: JSONL file of trajectory records (required with ``trajectories``,
            not allowed otherwise).
        seq_len: row length of the SFT batches (None: ``packing.seq_len``). Demonstrations
            have similar lengths; a row just longer than one of them wastes no slots.
        answers: with ``oracle`` demonstrations: ``oracle`` keeps the oracle's final answers,
            ``shuffled`` gives each task another task's answer, so the warm start teaches the
            protocol but not the decision (see ``mtrl_jax.demonstrations.oracle_records``).
            ``confused`` swaps a seeded pair of answers, or ``confused_pairs`` (a demonstrator
            that mixes up rules).
        altered_fraction: with ``shuffled`` or ``confused``: the share of tasks whose answers
            are altered; the rest keep the oracle's.
        recap: with ``oracle`` demonstrations: the final message first restates what the tools
            returned (``Found: status late, user U31, tier gold.``), then answers.
        confused_pairs: with ``confused``: the answer values swapped, e.g. ``[[refund,
            credit], [sorry, wait]]``; null: one seeded pair of answers.
    """

    steps: int = 0
    batch_size: int = 16
    learning_rate: float = 3e-3
    demo_tasks: int | None = None
    demo_source: Literal["oracle", "trajectories"] = "oracle"
    trajectories: str | None = None
    seq_len: int | None = None
    answers: Literal["oracle", "shuffled", "confused"] = "oracle"
    altered_fraction: float = 1.0
    recap: bool = False
    confused_pairs: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        _check_choice("answers", self.answers, ("oracle", "shuffled", "confused"))
        if self.confused_pairs is not None:
            if self.answers != "confused":
                raise ValueError("confused_pairs needs answers: confused")
            for pair in self.confused_pairs:
                if len(pair) != 2 or pair[0] == pair[1]:
                    raise ValueError(f"confused_pairs: each pair needs two values, got {pair}")
        if not 0.0 <= self.altered_fraction <= 1.0:
            raise ValueError(f"altered_fraction must be in [0, 1], got {self.altered_fraction}")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 or null, got {self.seq_len}")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("need steps >= 0 and batch_size >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.demo_tasks is not None and self.demo_tasks < 1:
            raise ValueError(f"demo_tasks must be >= 1 or null, got {self.demo_tasks}")
        _check_choice("demo_source", self.demo_source, ("oracle", "trajectories"))
        if self.demo_source == "trajectories" and not self.trajectories:
            raise ValueError("demo_source 'trajectories' needs trajectories: <path to JSONL>")
        if self.demo_source == "oracle" and self.trajectories is not None:
            raise ValueError("trajectories is only read with demo_source: trajectories")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One training run. Every section has defaults; YAML files state what differs.

    Attributes:
        name: run name; the run's files go to ``run_dir = out_dir / name``.
        seed: base seed of the run (sampling keys, task order).
        out_dir: folder holding runs.
        steps: RL updates (0: SFT and evaluation only).
        model: the policy model.
        env: the environment.
        sampler: the sampling distribution and prefill buckets.
        engine: the sampling engine's shape.
        rollout: group size, turn limits, the advantage estimator, group filter and overlong
            shaping (pass_at_k k <= group_size is checked there).
        train: loss, optimizer and micro-batching.
        packing: how trajectories become ``[B, T]`` rows.
        async_: rollout/training overlap; YAML key ``async`` (a Python keyword).
        mesh: the training mesh and the sampler's placement (default: one device).
        eval: held-out evaluation.
        checkpoint: checkpointing.
        tracking: MLflow tracking.
        sft: the supervised warm start.
    """

    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    steps: int = 10
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    packing: PackingConfig = dataclasses.field(default_factory=lambda: PackingConfig(seq_len=1024))
    async_: AsyncConfig = dataclasses.field(default_factory=AsyncConfig, metadata={"yaml": "async"})
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)

    def __post_init__(self) -> None:
        # Raised as ConfigError directly: each message already names its dotted key paths.
        def fail(message: str) -> None:
            raise ConfigError(message)

        if not self.name or self.name in (".", "..") or re.search(r"[/\\]", self.name):
            fail(f"name: must be one folder name (no '/'), got {self.name!r}")
        if not self.out_dir:
            fail("out_dir: must be a folder, got ''")
        if self.seed < 0 or self.steps < 0:
            fail(f"seed and steps must be >= 0, got seed={self.seed}, steps={self.steps}")
        if self.packing.seq_len < 2:
            fail(
                f"packing.seq_len: must be >= 2 (a sample is >= 2 tokens), "
                f"got {self.packing.seq_len}"
            )
        turn = max(self.sampler.max_new_tokens, self.rollout.max_new_tokens)
        if self.engine.max_len < turn + 1:
            fail(
                f"engine.max_len ({self.engine.max_len}) must be >= max(sampler.max_new_tokens, "
                f"rollout.max_new_tokens) + 1 = {turn + 1}: one turn plus a prompt token"
            )
        minibatches = self.train.minibatches
        if self.packing.rows_multiple % (minibatches * self.train.num_micro_batches):
            fail(
                f"packing.rows_multiple ({self.packing.rows_multiple}) must be a multiple of "
                f"train.num_micro_batches * train.minibatches "
                f"({self.train.num_micro_batches * minibatches})"
            )
        rows_ways = self.mesh.train.data * self.mesh.train.fsdp
        if self.packing.rows_multiple % (minibatches * rows_ways):
            fail(
                f"packing.rows_multiple ({self.packing.rows_multiple}) must be a multiple of "
                f"mesh.train.data * mesh.train.fsdp * train.minibatches "
                f"({rows_ways * minibatches}): each minibatch's rows are split over the mesh"
            )

    @property
    def run_dir(self) -> Path:
        """``out_dir / name``: where the run writes checkpoints, records and the MLflow store."""
        return Path(self.out_dir) / self.name

    @property
    def checkpoint_dir(self) -> Path:
        """``checkpoint.dir`` if set, else ``run_dir / "checkpoints"``."""
        return Path(self.checkpoint.dir) if self.checkpoint.dir else self.run_dir / "checkpoints"
