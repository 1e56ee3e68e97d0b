"""Whether a run folder may be resumed by a config, and with which config it then runs.

A run folder (``<out_dir>/<name>``) with a checkpoint is resumed by the next run pointed at it.
That is what a restart after a crash wants, and the wrong thing when the new command describes
another experiment (``seed=1`` after a seed-0 run): the old run would carry on under a command
line that says something else. :func:`plan_run` decides before anything is built, from the
config stored in the newest checkpoint's meta:

- ``"check"`` (the default): resume when the stored config and the new one differ only in keys
  that are safe to change (:data:`SAFE_TO_CHANGE`); otherwise raise
  :class:`ConfigMismatchError`, naming the differing keys and the ways out.
- ``"stored"`` (``mtrl train --resume``): resume whatever the new config says, with the stored
  config; only the keys safe to change are taken from the new one (so ``steps=40`` still
  extends the run). Keys that need a new run are never changed under a running experiment.
- ``"fresh"`` (``mtrl train --fresh``): move the existing run folder aside to
  ``<name>.old-<timestamp>`` (renamed, never deleted) and start a new run.

Keys safe to change on resume are the ones that leave what is trained alone:

- where the run lives: ``name``, ``out_dir``, ``checkpoint.dir`` (a moved or copied run folder
  is the same run);
- how long it runs: ``steps`` (extending a run is the common resume);
- what is observed and kept: ``eval.*`` (evaluation plays its own copy of the weights and
  never feeds training; a changed setting does make later evaluations measure something
  else than the earlier ones in the history), ``tracking.*``, ``checkpoint.every``,
  ``checkpoint.keep``;
- devices and memory layout, which leave the math unchanged: ``mesh.*`` (checkpoints restore
  onto any mesh), ``packing.rows_multiple`` (which a mesh change may force; with
  ``train.minibatches > 1`` it also changes how rows are split into minibatches),
  ``train.num_micro_batches`` (gradient accumulation), ``train.chunk_size`` (log-prob chunks),
  ``engine.num_slots`` and ``engine.decode_steps_per_call`` (each token's noise depends on its
  request and position only, not on its slot or decode call).

Everything else (seeds, model, environment, sampler, rollout, loss, optimizer, packing of
tokens, SFT) changes the experiment and needs a new run.

Non-goals: merging or comparing runs, migrating checkpoints across config schema changes,
locking a run folder against two concurrent writers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mtrl_jax.checkpoint import Checkpointer
from mtrl_jax.config import ConfigError, RunConfig, from_dict, to_dict

ResumeMode = Literal["check", "stored", "fresh"]
RESUME_MODES: tuple[str, ...] = ("check", "stored", "fresh")

SAFE_TO_CHANGE: tuple[str, ...] = (
    "name",
    "out_dir",
    "steps",
    "eval.",
    "tracking.",
    "checkpoint.every",
    "checkpoint.keep",
    "checkpoint.dir",
    "mesh.",
    "packing.rows_multiple",
    "train.num_micro_batches",
    "train.chunk_size",
    "engine.num_slots",
    "engine.decode_steps_per_call",
)
"""Dotted keys (or ``section.`` prefixes) that may differ from the stored config on resume."""

# How Trainer users get out of a refusal ({run_dir}: the folder); the CLI words the same
# choices as its flags.
API_WAYS_OUT = (
    "pass resume='stored' to continue it with its stored config, choose another name for a "
    "new run, or pass resume='fresh' to move the folder aside (to {run_dir}.old-<timestamp>) "
    "and start over"
)


class _Missing:
    """A key one config has and the other lacks (e.g. an ``env.kwargs`` entry)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    """One leaf that differs between two config dicts.

    Attributes:
        path: the leaf's keys, outermost first (YAML names: ``("async", "mode")``).
        old: the stored value, or :data:`MISSING`.
        new: the new value, or :data:`MISSING`.
    """

    path: tuple[str, ...]
    old: Any
    new: Any

    @property
    def key(self) -> str:
        """The dotted key, ``"train.loss.kl_coef"``."""
        return ".".join(self.path)

    def __str__(self) -> str:
        return f"{self.key} {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    """A value as the override syntax writes it (``null``, ``[1, 2]``, plain strings)."""
    if value is MISSING or isinstance(value, str):
        return str(value)
    return json.dumps(value)


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ConfigChange]:
    """Every leaf whose value differs between two config dicts (``to_dict`` output).

    Sections (mappings) are compared key by key; any other value (lists included) is one leaf.
    Keys come in ``new``'s order, then the ones only ``old`` has.

    >>> [str(c) for c in diff_configs({"seed": 0, "env": {"id": "a"}}, {"seed": 1, "env": {}})]
    ['seed 0 -> 1', 'env.id a -> <missing>']
    """
    out: list[ConfigChange] = []

    def visit(a: Any, b: Any, path: tuple[str, ...]) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in [*b, *(k for k in a if k not in b)]:
                visit(a.get(key, MISSING), b.get(key, MISSING), (*path, key))
        elif a is MISSING or b is MISSING or a != b or not _same_kind(a, b):
            out.append(ConfigChange(path, a, b))

    visit(old, new, ())
    return out


def _same_kind(a: Any, b: Any) -> bool:
    """``1`` and ``1.0`` are one setting (float fields take ints); ``True`` and ``1`` are not."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return numbers or type(a) is type(b)


def is_safe_to_change(key: str) -> bool:
    """Whether the dotted ``key`` may differ from the stored config on resume.

    >>> is_safe_to_change("steps"), is_safe_to_change("eval.every"), is_safe_to_change("seed")
    (True, True, False)
    """
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_TO_CHANGE)


def blocking_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ConfigChange]:
    """The differences between two config dicts that need a new run (not safe to change).

    >>> old = {"seed": 0, "steps": 2, "tracking": {"enabled": True}}
    >>> [str(c) for c in blocking_changes(old, {**old, "steps": 4, "seed": 1})]
    ['seed 0 -> 1']
    """
    return [c for c in diff_configs(old, new) if not is_safe_to_change(c.key)]


def describe_changes(changes: Sequence[ConfigChange], shown: int = 3) -> str:
    """The first ``shown`` changes, then ``and N more``.

    >>> changes = [ConfigChange((k,), 0, 1) for k in "abcde"]
    >>> describe_changes(changes)
    'a 0 -> 1, b 0 -> 1, c 0 -> 1 and 2 more'
    """
    text = ", ".join(str(c) for c in changes[:shown])
    rest = len(changes) - shown
    return f"{text} and {rest} more" if rest > 0 else text


class ConfigMismatchError(ConfigError):
    """A run folder holds a checkpoint of a config that differs in keys that need a new run.

    Attributes:
        run_dir: the run folder.
        step: the newest checkpoint's step.
        changes: the differing keys that are not safe to change (old -> new).
    """

    def __init__(
        self,
        run_dir: Path,
        step: int,
        changes: Sequence[ConfigChange],
        ways_out: str = API_WAYS_OUT,
    ) -> None:
        self.run_dir, self.step, self.changes = run_dir, step, tuple(changes)
        super().__init__(self.message(ways_out))

    def message(self, ways_out: str) -> str:
        """The one-line explanation, ending with ``ways_out``.

        Args:
            ways_out: how to proceed; ``{run_dir}`` in it is replaced by the run folder.
        """
        return (
            f"{self.run_dir} already holds a run (checkpoint at step {self.step}) whose config "
            f"differs in keys that need a new run: {describe_changes(self.changes)}; "
            + ways_out.format(run_dir=self.run_dir)
        )


@dataclasses.dataclass(frozen=True)
class ResumePlan:
    """What a run does with its folder (see :func:`plan_run`).

    Attributes:
        cfg: the config the run uses (the stored one, with the safe keys of the new one, when
            resuming under ``"stored"``; else the new one).
        mode: the mode it was planned under.
        step: the checkpoint step it resumes from; None for a new run.
        checkpoint: that checkpoint's folder; None for a new run.
        applied: safe changes taken from the new config (e.g. ``steps 2 -> 4``).
        ignored: changes that need a new run, left out in favour of the stored values
            (``"stored"`` only).
        moved: ``(old, new)`` paths of folders moved aside (``"fresh"`` only).
    """

    cfg: RunConfig
    mode: ResumeMode = "check"
    step: int | None = None
    checkpoint: Path | None = None
    applied: tuple[ConfigChange, ...] = ()
    ignored: tuple[ConfigChange, ...] = ()
    moved: tuple[tuple[Path, Path], ...] = ()

    @property
    def resumes(self) -> bool:
        """Whether the run continues from a checkpoint."""
        return self.step is not None

    def notice(self) -> str | None:
        """One line saying what happens to the folder, or None for a plain new run."""
        run_dir = self.cfg.run_dir
        if self.resumes:
            text = f"resuming run {run_dir} from step {self.step} (checkpoint {self.checkpoint})"
            if self.applied:
                text += f"; changed: {describe_changes(self.applied)}"
            if self.ignored:
                text += (
                    "; kept the stored config where this one differs in keys that need a new "
                    f"run: {describe_changes(self.ignored)}"
                )
            return text
        if self.moved:
            moves = ", ".join(f"{old} -> {new}" for old, new in self.moved)
            return f"starting a new run in {run_dir}; moved the previous one aside: {moves}"
        if self.mode == "stored":
            return f"nothing to resume in {run_dir} (no checkpoint): starting a new run"
        return None


def plan_run(cfg: RunConfig, mode: ResumeMode = "check") -> ResumePlan:
    """Decides whether ``cfg``'s run folder is resumed, and with which config.

    Reads only the newest checkpoint's meta (fast) and writes nothing, except that ``"fresh"``
    moves an existing run folder (and a ``checkpoint.dir`` outside it) aside.

    Args:
        cfg: the new run's config.
        mode: ``"check"``, ``"stored"`` or ``"fresh"`` (see the module docstring).

    Returns:
        The plan; ``plan.cfg`` is the config to run.

    Raises:
        ConfigMismatchError: ``"check"``, and the stored config differs in keys that are not
            safe to change.
        ConfigError: ``"stored"``, and the stored config with the new safe keys is invalid.
        CheckpointError: there are checkpoints but none has readable meta.
        ValueError: unknown ``mode``.
    """
    if mode not in RESUME_MODES:
        raise ValueError(f"mode must be one of {RESUME_MODES}, got {mode!r}")
    if mode == "fresh":
        return ResumePlan(cfg=cfg, mode=mode, moved=_move_run_aside(cfg))
    found = _newest_meta(cfg.checkpoint_dir)
    if found is None:
        return ResumePlan(cfg=cfg, mode=mode)
    step, meta, checkpoint = found
    stored = meta.get("config")
    if not isinstance(stored, Mapping):  # not written by the trainer: nothing to compare
        return ResumePlan(cfg=cfg, mode=mode, step=step, checkpoint=checkpoint)
    changes = diff_configs(stored, to_dict(cfg))
    applied = tuple(c for c in changes if is_safe_to_change(c.key))
    blocking = tuple(c for c in changes if not is_safe_to_change(c.key))
    if not blocking:
        return ResumePlan(cfg=cfg, mode=mode, step=step, checkpoint=checkpoint, applied=applied)
    if mode == "check":
        raise ConfigMismatchError(cfg.run_dir, step, blocking)
    try:
        merged = from_dict(RunConfig, _with_changes(stored, applied))
    except ConfigError as err:
        raise ConfigError(
            f"the stored config of {checkpoint} with this command's {describe_changes(applied)} "
            f"is not a valid config: {err}"
        ) from None
    return ResumePlan(
        cfg=merged,
        mode=mode,
        step=step,
        checkpoint=checkpoint,
        applied=applied,
        ignored=blocking,
    )


def _newest_meta(directory: Path) -> tuple[int, dict[str, Any], Path] | None:
    """The newest committed checkpoint's step, meta and folder under ``directory``, if any."""
    if not directory.is_dir():  # Checkpointer() would create it
        return None
    checkpointer = Checkpointer(directory)
    found = checkpointer.latest_meta()
    if found is None:
        return None
    step, meta = found
    return step, meta, checkpointer.step_dir(step)


def _with_changes(data: Mapping[str, Any], changes: Sequence[ConfigChange]) -> dict[str, Any]:
    """A deep copy of ``data`` with each change's new value set (or its key removed)."""
    out = json.loads(json.dumps(data))  # plain JSON data: a deep copy
    for change in changes:
        section = out
        for key in change.path[:-1]:
            section = section.setdefault(key, {})
        if change.new is MISSING:
            section.pop(change.path[-1], None)
        else:
            section[change.path[-1]] = change.new
    return out


def move_aside(path: Path, now: float | None = None) -> Path | None:
    """Renames ``path`` to ``<path>.old-<YYYYmmdd-HHMMSS>`` beside it (never deletes anything).

    Args:
        path: a file or folder.
        now: the time stamped into the name (default: the current time).

    Returns:
        The new path, or None when ``path`` does not exist.
    """
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    target, n = path.with_name(f"{path.name}.old-{stamp}"), 1
    while target.exists():  # two fresh starts within a second
        target, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
    os.rename(path, target)  # same folder: a rename, never a copy
    return target


def _move_run_aside(cfg: RunConfig) -> tuple[tuple[Path, Path], ...]:
    """Moves the run folder, and a checkpoint folder outside it, aside."""
    run_dir, checkpoints = cfg.run_dir, cfg.checkpoint_dir
    paths = [run_dir]
    if not checkpoints.absolute().is_relative_to(run_dir.absolute()):
        paths.append(checkpoints)
    moved = []
    for path in paths:
        target = move_aside(path)
        if target is not None:
            moved.append((path, target))
    return tuple(moved)
