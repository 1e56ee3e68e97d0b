"""Checkpoints of the learner: the full ``TrainState`` plus trainer metadata, on Orbax.

A checkpoint is one directory ``<root>/step_<NNNNNNNN>/`` holding

- ``state/``: the ``TrainState`` (params, rest, optimizer state, step, skipped), written by
  Orbax's ``StandardSave`` (tensorstore/OCDBT), so it restores onto any mesh;
- ``meta/``: a JSON dict from the trainer (policy version, task-iterator position, PRNG key
  data, rollout seed, metrics history, resolved config...), written by Orbax's ``JsonSave``;
- ``MANIFEST.json``: the commit marker, written last. It records the step, the SHA-256 of the
  canonical meta JSON, every state leaf's path, shape and dtype, and every file's size and
  (by default) SHA-256.

Atomicity. A save is staged twice and only renamed into place when complete:

1. Orbax writes into ``step_N.staging.orbax-checkpoint-tmp-<ts>/`` and, once every array and
   its metadata is written, renames it to ``step_N.staging/`` (``AtomicRenameTemporaryPath``,
   Orbax's default on local and POSIX filesystems; checked in orbax-checkpoint 0.12).
2. This module hashes the staged files, writes ``MANIFEST.json`` (temp file, fsync,
   ``os.replace``), then renames ``step_N.staging/`` to ``step_N/`` and fsyncs ``<root>``.

So ``step_N/`` exists only once it is complete, and a crash leaves only ``*.staging*``
directories, which are never listed and are cleared by the next save of that step. Saves are
blocking: :meth:`Checkpointer.save` returns after the rename, with no background threads left.

Restore refuses (raises :class:`CheckpointError`, naming the directory and the reason) a
checkpoint with no manifest, a missing, truncated or altered file, a state whose leaves differ
from the target's in path, shape or dtype, meta whose checksum does not match, or data Orbax
cannot read. The per-file SHA-256 is on by default because Orbax alone does not catch altered
bytes: with orbax-checkpoint 0.12.8, one flipped byte in an OCDBT data file is read back
silently as different values.
:meth:`Checkpointer.restore_latest` warns about each refused checkpoint and falls back to the
previous one.

PRNG keys are not part of ``TrainState``: the trainer stores them in ``meta`` as plain JSON,
with :func:`key_to_json` and :func:`key_from_json` (``jax.random.key_data`` /
``wrap_key_data`` plus the implementation name), so typed key arrays never reach Orbax.

Non-goals: multi-process (multi-host) saving, asynchronous saves, remote filesystems whose
rename is not atomic (e.g. GCS), converting dtypes or shapes on restore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mtrl_jax.train_step import TrainState

MANIFEST = "MANIFEST.json"
FORMAT = "mtrl-checkpoint/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_STAGING = ".staging"  # suffix of a save in progress; never matches _STEP_DIR
_HASH_CHUNK = 1 << 20

logger = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint that cannot be trusted: partial, corrupt, or not matching the target."""


class CorruptCheckpointWarning(RuntimeWarning):
    """Issued by :meth:`Checkpointer.restore_latest` for each checkpoint it skips."""


def key_to_json(key: jax.Array) -> dict[str, Any]:
    """A typed PRNG key as JSON: ``{"impl": name, "shape": [...], "data": nested uint32 ints}``.

    Raises:
        TypeError: ``key`` is not a typed key array (``jax.random.key``, not ``PRNGKey``).
    """
    if not jax.dtypes.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        raise TypeError(f"expected a typed PRNG key (jax.random.key), got {type(key).__name__}")
    return {
        "impl": str(jax.random.key_impl(key)),
        "shape": list(key.shape),
        "data": np.asarray(jax.random.key_data(key)).tolist(),
    }


def key_from_json(obj: dict[str, Any]) -> jax.Array:
    """Inverse of :func:`key_to_json`: the same typed key, bit for bit."""
    data = np.asarray(obj["data"], dtype=np.uint32)
    key = jax.random.wrap_key_data(data, impl=obj["impl"])
    if list(key.shape) != list(obj["shape"]):
        raise ValueError(f"key data shape {data.shape} does not give key shape {obj['shape']}")
    return key


def _check_json(value: Any, where: str = "meta") -> None:
    """Raises ``TypeError`` unless ``value`` is plain JSON that loads back equal and same-typed.

    Only dict (str keys), list, str, int, float, bool and None: a tuple would come back as a
    list, an int key as a str, a numpy scalar as a Python one, so they are refused up front.
    """
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"{where}: key {k!r} is {type(k).__name__}; JSON keys are str")
            _check_json(v, f"{where}[{k!r}]")
    elif type(value) is list:
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
    elif type(value) not in (str, int, float, bool, type(None)):
        raise TypeError(
            f"{where} is {type(value).__name__}, not JSON (dict/list/str/int/float/bool/None); "
            "convert it (e.g. .tolist(), int(), list()) before saving"
        )


def _meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON text of ``meta`` (sorted keys; NaN/inf allowed)."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _leaf_specs(tree: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """``(key path, shape, dtype)`` of every array leaf, in flattening order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [
        (jax.tree_util.keystr(p), tuple(np.shape(x)), str(np.dtype(x.dtype))) for p, x in leaves
    ]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` except the manifest, sorted."""
    return iter(sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _orbax() -> ocp.Checkpointer:
    """A synchronous Orbax checkpointer for the ``state`` + ``meta`` composite."""
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


class Checkpointer:
    """Saves, lists and restores checkpoints under one directory, keeping the newest ``keep``.

    One writer per directory (this process): a ``*.staging`` directory left by a crashed save is
    removed by the next save of that step.

    Example::

        ckpt = Checkpointer("runs/exp1/checkpoints", keep=3)
        ckpt.save(step, state, {"policy_version": v, "key": key_to_json(key)})
        found = ckpt.restore_latest(abstract_state, shardings=param_shardings(state, mesh))
        if found is not None:
            state, meta, step = found

    Args:
        directory: the root directory (created if missing).
        keep: how many complete checkpoints to keep; older ones are deleted after each save.
        checksums: record and verify a SHA-256 of every file (reads each file once per save and
            per restore). When False only file sizes are checked, which catches truncation but
            not bytes altered in place.

    Raises:
        ValueError: ``keep < 1``.
        NotImplementedError: more than one JAX process (multi-host is a non-goal).
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, keep: int = 3, checksums: bool = True
    ) -> None:
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {keep!r}")
        if jax.process_count() > 1:
            raise NotImplementedError("Checkpointer supports a single JAX process only")
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.checksums = checksums
        self.directory.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------- listing

    def step_dir(self, step: int) -> Path:
        """The directory of ``step``'s checkpoint (whether or not it exists)."""
        return self.directory / f"step_{step:08d}"

    def _all_steps(self) -> list[int]:
        """Steps with a ``step_N`` directory, complete or not, ascending."""
        found = (_STEP_DIR.match(p.name) for p in self.directory.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def steps(self) -> list[int]:
        """Steps whose checkpoint has its commit marker, ascending (contents not verified)."""
        return [s for s in self._all_steps() if (self.step_dir(s) / MANIFEST).is_file()]

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    # ---------------------------------------------------------------------------------- save

    def save(
        self, step: int, state: TrainState, meta: dict[str, Any], *, overwrite: bool = False
    ) -> Path:
        """Writes ``state`` and ``meta`` as ``step``'s checkpoint, then prunes old ones.

        Blocking: returns once the checkpoint is complete and renamed into place (see the
        module docstring for the atomicity argument).

        Args:
            step: the checkpoint's step number, ``>= 0``.
            state: the train state; its arrays may be sharded over any mesh.
            meta: plain JSON: dict (str keys), list, str, int, float (NaN allowed), bool,
                None; no tuples or numpy scalars. PRNG keys via :func:`key_to_json`.
            overwrite: replace an existing ``step``'s checkpoint (e.g. a newer one skipped as
                corrupt by :meth:`restore_latest`, which training then reaches again).

        Returns:
            The checkpoint directory.

        Raises:
            ValueError: negative or non-int ``step``.
            TypeError: ``meta`` is not plain JSON, or ``state`` holds a typed PRNG key.
            FileExistsError: ``step`` already has a checkpoint and ``overwrite`` is False.
        """
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        _check_json(meta)
        leaves = _leaf_specs(state)
        for path, _, dtype in leaves:
            if dtype.startswith("key<"):
                raise TypeError(
                    f"state{path} is a typed PRNG key; store it in meta via key_to_json"
                )
        final = self.step_dir(step)
        if final.exists() and not overwrite:
            raise FileExistsError(
                f"{final} already exists; pass overwrite=True to replace it or pick another step"
            )
        staging = final.with_name(final.name + _STAGING)
        if staging.exists():  # left by a crashed save of this step (one writer per directory)
            shutil.rmtree(staging)

        orbax = _orbax()
        try:
            orbax.save(
                staging,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
            )
        finally:
            orbax.close()

        manifest = {
            "format": FORMAT,
            "step": step,
            "meta_sha256": _meta_digest(meta),
            "leaves": [[p, list(s), d] for p, s, d in leaves],
            "files": {
                str(f.relative_to(staging)): {
                    "size": f.stat().st_size,
                    "sha256": _file_digest(f) if self.checksums else None,
                }
                for f in _files(staging)
            },
        }
        tmp = staging / (MANIFEST + ".tmp")
        with tmp.open("w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, staging / MANIFEST)

        if final.exists():  # overwrite: move the old one aside so the rename cannot fail
            replaced = final.with_name(final.name + ".replaced")
            shutil.rmtree(replaced, ignore_errors=True)
            os.rename(final, replaced)
            os.rename(staging, final)
            shutil.rmtree(replaced)
        else:
            os.rename(staging, final)
        _fsync_dir(self.directory)
        self._prune()
        return final

    def _prune(self) -> None:
        """Deletes committed checkpoints beyond the newest ``keep``.

        Uncommitted ``step_N`` directories (none of this module's making) are left for a human
        to inspect; they are never restored.
        """
        for old in self.steps()[: -self.keep]:
            logger.info("deleting old checkpoint %s (keep=%d)", self.step_dir(old), self.keep)
            shutil.rmtree(self.step_dir(old))

    # ---------------------------------------------------------------------------- meta only

    def read_meta(self, step: int) -> dict[str, Any]:
        """``step``'s meta alone: no state is read and nothing is verified.

        For a quick look before a full restore (e.g. the config a run was started with, to
        decide whether to resume it); :meth:`restore` then checks every file and the meta
        checksum.

        Raises:
            CheckpointError: the meta cannot be read.
        """
        where = self.step_dir(step)
        reader = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        try:
            restored = reader.restore(where, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as err:  # any reader failure: the meta cannot be used
            raise CheckpointError(f"{where}: unreadable meta: {err}") from err
        finally:
            reader.close()
        return restored["meta"]

    def latest_meta(self) -> tuple[int, dict[str, Any]] | None:
        """The newest committed step whose meta reads back, with that meta (unverified).

        A checkpoint whose meta cannot be read is skipped, as :meth:`restore_latest` skips a
        corrupt one.

        Returns:
            ``(step, meta)``, or None when there is no committed checkpoint.

        Raises:
            CheckpointError: no committed checkpoint's meta reads back (the message lists why).
        """
        failures = []
        for step in reversed(self.steps()):
            try:
                return step, self.read_meta(step)
            except CheckpointError as err:
                failures.append(str(err))
        if failures:
            raise CheckpointError("no checkpoint with readable meta: " + "; ".join(failures))
        return None

    # ------------------------------------------------------------------------------- restore

    def _read_manifest(self, step: int) -> dict[str, Any]:
        """The parsed manifest of ``step``, with every recorded file checked on disk."""
        where = self.step_dir(step)
        path = where / MANIFEST
        if not path.is_file():
            raise CheckpointError(
                f"{where}: no {MANIFEST} commit marker; the save did not complete (partial)"
            )
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{where}: unreadable {MANIFEST}: {err}") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CheckpointError(f"{where}: {MANIFEST} is not an {FORMAT} manifest")
        if manifest.get("step") != step:
            raise CheckpointError(f"{where}: manifest says step {manifest.get('step')!r}")
        for name, rec in manifest["files"].items():
            file = where / name
            if not file.is_file():
                raise CheckpointError(f"{where}: file {name} is missing")
            size = file.stat().st_size
            if size != rec["size"]:
                raise CheckpointError(
                    f"{where}: file {name} has {size} bytes, {rec['size']} were written "
                    "(truncated or altered)"
                )
            if self.checksums and rec["sha256"] is not None and _file_digest(file) != rec["sha256"]:
                raise CheckpointError(f"{where}: file {name} fails its SHA-256 check (corrupt)")
        return manifest

    def restore(
        self, step: int, target: TrainState, *, shardings: Any = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """Reads ``step``'s checkpoint into the structure of ``target``, placed by ``shardings``.

        Args:
            step: a step with a checkpoint.
            target: a ``TrainState`` of arrays or ``jax.ShapeDtypeStruct`` (e.g. from
                ``jax.eval_shape``) giving the structure, shapes and dtypes.
            shardings: a pytree of ``jax.sharding.Sharding`` with ``target``'s structure (e.g.
                ``sharding.param_shardings(target, mesh)``), so the state lands on any mesh,
                whatever mesh it was saved from. None: each target leaf's own ``.sharding``,
                else the first device.

        Returns:
            ``(state, meta)``, bit-identical to what was saved.

        Raises:
            FileNotFoundError: no ``step_N`` directory.
            CheckpointError: partial or corrupt checkpoint, or leaves (path, shape, dtype) that
                differ from ``target``'s; the message names the directory and the leaf.
            ValueError: ``shardings`` does not match ``target``'s structure.
        """
        where = self.step_dir(step)
        if not where.is_dir():
            raise FileNotFoundError(f"no checkpoint at {where}; complete steps: {self.steps()}")
        manifest = self._read_manifest(step)
        self._check_leaves(where, manifest, target)
        abstract = _abstract(target, shardings)

        orbax = _orbax()
        try:
            restored = orbax.restore(
                where,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as err:  # any reader failure means the data cannot be trusted
            raise CheckpointError(f"{where}: Orbax could not read it: {err}") from err
        finally:
            orbax.close()
        meta = restored["meta"]
        if _meta_digest(meta) != manifest["meta_sha256"]:
            raise CheckpointError(f"{where}: meta does not match its checksum (corrupt)")
        return restored["state"], meta

    @staticmethod
    def _check_leaves(where: Path, manifest: dict[str, Any], target: Any) -> None:
        """Raises ``CheckpointError`` naming the first leaf that differs from ``target``."""
        saved = {p: (tuple(s), d) for p, s, d in manifest["leaves"]}
        wanted = {p: (s, d) for p, s, d in _leaf_specs(target)}
        missing, extra = sorted(wanted.keys() - saved), sorted(saved.keys() - wanted)
        if missing or extra:
            raise CheckpointError(
                f"{where}: state structure differs from the target: target leaves not in the "
                f"checkpoint {missing[:5]}, checkpoint leaves not in the target {extra[:5]}"
            )
        for path, (shape, dtype) in wanted.items():
            if saved[path] != (shape, dtype):
                raise CheckpointError(
                    f"{where}: leaf {path} is {saved[path][1]}{list(saved[path][0])} in the "
                    f"checkpoint but {dtype}{list(shape)} in the target"
                )

    def restore_latest(
        self, target: TrainState, *, shardings: Any = None
    ) -> tuple[TrainState, dict[str, Any], int] | None:
        """Restores the newest checkpoint that passes every check, skipping corrupt ones.

        Every ``step_N`` directory is tried newest first, committed or not, so that a partial
        newest save is reported rather than silently ignored. Each refused one is reported with
        a :class:`CorruptCheckpointWarning` and a log warning naming it and the reason.

        Returns:
            ``(state, meta, step)``, or None when there is no checkpoint at all.

        Raises:
            CheckpointError: every checkpoint was refused (the message lists why).
        """
        failures = []
        for step in reversed(self._all_steps()):
            try:
                state, meta = self.restore(step, target, shardings=shardings)
            except CheckpointError as err:
                msg = f"skipping checkpoint step {step}: {err}"
                logger.warning(msg)
                warnings.warn(msg, CorruptCheckpointWarning, stacklevel=2)
                failures.append(str(err))
                continue
            return state, meta, step
        if failures:
            raise CheckpointError("no usable checkpoint:\n" + "\n".join(failures))
        return None


def _abstract(target: Any, shardings: Any) -> Any:
    """``target`` as ``jax.ShapeDtypeStruct`` leaves carrying the requested shardings."""

    def default(x: Any) -> jax.sharding.Sharding:
        sharding = getattr(x, "sharding", None)
        return sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

    if shardings is None:
        shardings = jax.tree.map(default, target)
    try:
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), target, shardings
        )
    except ValueError as err:
        raise ValueError(f"shardings do not match the target's structure: {err}") from err
