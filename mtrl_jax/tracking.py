"""Experiment tracking with MLflow: params, metrics, trajectory artifacts and episode traces.

A :class:`Tracker` is what the trainer and the CLI log through; nothing else in ``mtrl_jax``
imports MLflow. :class:`MlflowTracker` records one MLflow run:

- **params**: the resolved config, nested mappings flattened to dotted keys. Values longer than
  ``MAX_PARAM_CHARS`` are cut with a marker (old servers refuse more), and every param is also
  kept whole in the run's ``params.json`` artifact. On resume, a param whose value changed is
  kept as first logged (MLflow refuses to change params) and the new value is reported in a
  warning and in ``params.json``.
- **metrics**: ``/``-namespaced scalars per step (``loss/policy``, ``rollout/return_mean``).
  Non-finite values are not sent (backends disagree on NaN and inf); they are counted in
  ``tracking/nonfinite_metrics`` at that step and named in a warning, so a NaN loss still shows.
- **trajectories**: records as JSONL, artifact ``trajectories/<tag>/step_<step:06d>.jsonl``
  (a local copy stays under ``run_dir``).
- **episode traces**: one MLflow trace per episode, named ``episode/<task_id>``, linked to the run
  and tagged ``mtrl.step`` / ``mtrl.tag``. The root span (type AGENT) carries the outcome; below
  it one CHAT_MODEL span per assistant turn (inputs: the messages the policy saw; outputs: what
  it wrote) and, under each turn, one TOOL span per tool call (inputs: arguments; outputs: the
  result, or the error with status ERROR). Episodes are logged after they ran, so span times are
  *synthetic*, laid out from ``record.timings`` (sampling time split by sampled tokens, env time
  split evenly); spans carry ``mtrl.synthetic_timing = True`` to say so.

The default store (``tracking_uri=None``) is a SQLite database under ``run_dir`` with artifacts
beside it: no server, and it supports traces (MLflow's plain file store is deprecated).

MLflow exports traces through a process-global tracer that follows the global tracking URI, so
:meth:`MlflowTracker.log_episodes` points that URI at the tracker's store for the duration of
the call and restores it (and ``MLFLOW_TRACKING_URI``) afterwards. Everything else goes through
an ``MlflowClient`` bound to the tracker's URI and leaves global state alone.

Non-goals: system metrics, model registry, other backends (W&B, TensorBoard), logging from
inside jitted code (metrics arrive as host scalars).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, SpanStatus, SpanType
from mlflow.tracking._tracking_service import utils as _tracking_utils
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from mtrl_jax.trajectory import TrajectoryRecord, TrajectoryWriter

_LOG = logging.getLogger(__name__)
# A local store prints its schema migrations at INFO on first use ("Creating initial MLflow
# database tables...", alembic's steps): bookkeeping that means nothing to someone starting a run.
for _name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# MLflow < 2.x servers cap param values at 500 characters (3.x at 6000); the full value always
# reaches params.json, so the smaller limit costs nothing and works against any server.
MAX_PARAM_CHARS = 500
MAX_KEY_CHARS = 250
# Strings in trace inputs/outputs are cut here: the JSONL artifact has the full text, and the
# trace UI becomes unusable with megabytes per span (turn inputs repeat the history).
MAX_TRACE_TEXT_CHARS = 8000
_TAG_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")
_CALL_ID_RE = re.compile(r"^call_(\d+)_\d+$")  # mtrl_gym numbers turns from 1 in tool call ids
_GLOBAL_URI_LOCK = threading.Lock()
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


class Tracker(abc.ABC):
    """Where the trainer logs a run. Subclasses: :class:`MlflowTracker`, :class:`NullTracker`."""

    @property
    @abc.abstractmethod
    def run_id(self) -> str | None:
        """The run's id (store it in checkpoints to resume the run), or None when disabled."""

    @abc.abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs config values; nested mappings (and dataclasses) become dotted keys."""

    @abc.abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Logs scalar metrics at ``step``; non-finite values are counted, not sent."""

    @abc.abstractmethod
    def log_episodes(
        self, records: Sequence[TrajectoryRecord], step: int, *, tag: str = "train"
    ) -> None:
        """Logs one trace per episode (see the module docstring for the span layout)."""

    def last_logged_step(self, key: str) -> int | None:
        """The highest step at which metric ``key`` was logged in this run, or ``None``.

        A resumed run asks this once, to log each step's record exactly once (a step run again
        after a crash was logged by the interrupted attempt). Trackers that keep nothing
        return ``None``.
        """
        return None

    @abc.abstractmethod
    def log_trajectories(
        self, records: Sequence[TrajectoryRecord], step: int, *, tag: str = "train"
    ) -> Path | None:
        """Writes the records as JSONL and logs the file; returns its local path."""

    @abc.abstractmethod
    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Uploads a local file or folder under ``artifact_path`` in the run."""

    @abc.abstractmethod
    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Logs a JSON/YAML-serialisable object as ``artifact_file`` (format by extension)."""

    @abc.abstractmethod
    def log_text(self, text: str, artifact_file: str) -> None:
        """Logs a string as ``artifact_file``."""

    @abc.abstractmethod
    def close(self, status: RunStatus = "FINISHED") -> None:
        """Ends the run with ``status`` (safe to call twice)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close("FINISHED" if exc_type is None else "FAILED")


class NullTracker(Tracker):
    """Tracking disabled: every call does nothing."""

    @property
    def run_id(self) -> str | None:
        """Always None."""
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:  # noqa: D102
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:  # noqa: D102
        pass

    def log_episodes(  # noqa: D102
        self, records: Sequence[TrajectoryRecord], step: int, *, tag: str = "train"
    ) -> None:
        pass

    def log_trajectories(  # noqa: D102
        self, records: Sequence[TrajectoryRecord], step: int, *, tag: str = "train"
    ) -> Path | None:
        return None

    def log_artifact(  # noqa: D102
        self, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        pass

    def log_dict(self, data: Any, artifact_file: str) -> None:  # noqa: D102
        pass

    def log_text(self, text: str, artifact_file: str) -> None:  # noqa: D102
        pass

    def close(self, status: RunStatus = "FINISHED") -> None:  # noqa: D102
        pass


class MlflowTracker(Tracker):
    """Logs one MLflow run (see the module docstring for what goes where).

    Args:
        tracking_uri: MLflow tracking URI (``http://host:port``, ``sqlite:///...``), or None for
            a local SQLite store at ``run_dir/mlflow.db`` with artifacts in ``run_dir/mlartifacts``.
        experiment: Experiment name; created when missing.
        run_name: Display name of a new run (ignored on resume).
        run_dir: The run's local folder (local store, JSONL copies of logged trajectories).
        resume_run_id: Continue this existing run (checkpoint resume) instead of starting one.
        log_episodes: Whether :meth:`log_episodes` logs traces (False: it does nothing).
        log_trajectories: Whether :meth:`log_trajectories` writes JSONL (False: nothing).

    Raises:
        ValueError: ``experiment`` is empty.
        mlflow.exceptions.MlflowException: ``resume_run_id`` does not exist in the store.
    """

    def __init__(
        self,
        *,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None,
        run_dir: str | os.PathLike[str],
        resume_run_id: str | None = None,
        log_episodes: bool = True,
        log_trajectories: bool = True,
    ):
        if not experiment:
            raise ValueError("experiment name must be non-empty")
        self.run_dir = Path(run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        artifact_location = None
        if tracking_uri is None:
            tracking_uri = f"sqlite:///{self.run_dir / 'mlflow.db'}"
            # A SQL store would otherwise put artifacts in ./mlruns of the working directory.
            artifact_location = (self.run_dir / "mlartifacts").as_uri()
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._episodes_enabled = log_episodes
        self._trajectories_enabled = log_trajectories
        self._params: dict[str, str] = {}  # everything logged so far, untruncated (params.json)
        if resume_run_id is not None:
            run = self.client.get_run(resume_run_id)
            self.experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                self.client.update_run(resume_run_id, status="RUNNING")
            self._run_id = resume_run_id
        else:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(experiment, artifact_location=artifact_location)
            )
            run = self.client.create_run(
                self.experiment_id, run_name=run_name, tags={"mtrl.run_dir": str(self.run_dir)}
            )
            self._run_id = run.info.run_id
        self._closed = False

    @property
    def run_id(self) -> str:
        """The MLflow run id."""
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Logs ``params`` flattened to dotted keys (see the module docstring for limits)."""
        flat = _flatten(params)
        existing = dict(self.client.get_run(self._run_id).data.params)  # updated as we go
        batch: list[Param] = []
        for key, value in flat.items():
            self._params[key] = value
            name, short = _param_key(key), _clip_text(value, MAX_PARAM_CHARS)
            if name in existing and existing[name] != short:
                _LOG.warning(
                    "param %r already logged as %r; keeping it (now %r)", key, existing[name], short
                )
                continue
            if name not in existing:
                existing[name] = short
                batch.append(Param(name, short))
        for i in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self._run_id, params=batch[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        self.client.log_dict(self._run_id, self._params, "params.json")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Logs ``metrics`` at ``step``.

        Raises:
            TypeError: a key is not a string or a value is not a real scalar.
            ValueError: ``step`` is negative.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        now_ms = int(time.time() * 1000)
        batch, nonfinite = [], []
        for key, value in metrics.items():
            if not isinstance(key, str):
                raise TypeError(f"metric names must be strings, got {key!r}")
            try:
                number = float(value)
            except (TypeError, ValueError) as e:
                raise TypeError(f"metric {key!r} is not a real scalar: {value!r}") from e
            if math.isfinite(number):
                batch.append(Metric(key, number, now_ms, int(step)))
            else:
                nonfinite.append(key)
        if nonfinite:
            _LOG.warning("step %d: non-finite metrics not logged: %s", step, sorted(nonfinite))
            batch.append(Metric("tracking/nonfinite_metrics", float(len(nonfinite)), now_ms, step))
        for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self._run_id, metrics=batch[i : i + MAX_METRICS_PER_BATCH])

    def last_logged_step(self, key: str) -> int | None:
        """The highest step of ``key``'s history in the MLflow run (``None``: never logged)."""
        history = self.client.get_metric_history(self._run_id, key)
        return max((int(m.step) for m in history), default=None)

    def log_episodes(
        self, records: Sequence[TrajectoryRecord], step: int, *, tag: str = "train"
    ) -> None:
        """Logs one trace per record, linked to the run and tagged with ``step`` and ``tag``."""
        _check_tag(tag)
        if not self._episodes_enabled or not records:
            return
        with _global_tracking_uri(self.tracking_uri):
            for record in records:
                _log_trace(self.client, record, self.experiment_id, self._run_id, step, tag)
            # Export is asynchronous by default; drain it while the exporter still points here.
            mlflow.flush_trace_async_logging()

    def log_trajectories(
        self, records: Sequence[TrajectoryRecord], step: int, *, tag: str = "train"
    ) -> Path | None:
        """Writes ``records`` to ``run_dir/trajectories/<tag>/step_<step:06d>.jsonl`` and logs it.

        The file holds exactly that step's records: writing a step again replaces it.

        Files of a tag other than ``"train"`` are evaluation logs, so they accept
        evaluation-only records (see :class:`mtrl_jax.trajectory.TrajectoryWriter`).

        Returns:
            The local file, or None when trajectory logging is disabled.
        """
        _check_tag(tag)
        if not self._trajectories_enabled:
            return None
        path = self.run_dir / "trajectories" / tag / f"step_{step:06d}.jsonl"
        with TrajectoryWriter(path, evaluation_output=tag != "train", overwrite=True) as writer:
            for record in records:
                writer.write(record)
        self.client.log_artifact(self._run_id, str(path), f"trajectories/{tag}")
        return path

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Uploads a file, or a folder's contents, under ``artifact_path``."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self._run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self._run_id, str(path), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """Logs ``data`` as JSON or YAML (by ``artifact_file``'s extension)."""
        self.client.log_dict(self._run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Logs ``text`` as ``artifact_file``."""
        self.client.log_text(self._run_id, text, artifact_file)

    def close(self, status: RunStatus = "FINISHED") -> None:
        """Ends the run with ``status``; later calls do nothing."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        if self._closed:
            return
        self._closed = True
        self.client.set_terminated(self._run_id, status=status)


def make_tracker(
    enabled: bool,
    *,
    tracking_uri: str | None = None,
    experiment: str = "mtrl",
    run_name: str | None = None,
    run_dir: str | os.PathLike[str],
    resume_run_id: str | None = None,
    log_episodes: bool = True,
    log_trajectories: bool = True,
) -> Tracker:
    """An :class:`MlflowTracker`, or a :class:`NullTracker` when ``enabled`` is False."""
    if not enabled:
        return NullTracker()
    return MlflowTracker(
        tracking_uri=tracking_uri,
        experiment=experiment,
        run_name=run_name,
        run_dir=run_dir,
        resume_run_id=resume_run_id,
        log_episodes=log_episodes,
        log_trajectories=log_trajectories,
    )


# --- helpers -----------------------------------------------------------------------------------


def _check_tag(tag: str) -> None:
    # The tag becomes a folder name; refuse anything that could escape it.
    if not _TAG_RE.match(tag):
        raise ValueError(f"tag must match {_TAG_RE.pattern}, got {tag!r}")


def _flatten(params: Any, prefix: str = "") -> dict[str, str]:
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping or a dataclass, got {type(params).__name__}")
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or (
            dataclasses.is_dataclass(value) and not isinstance(value, type)
        ):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)  # lists, numbers, None -> JSON text
    return out


def _clip_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"...[truncated {len(text)} chars]"
    return text[: limit - len(marker)] + marker


def _param_key(key: str) -> str:
    # MLflow accepts only these characters and 250 of them; cut keys stay distinct because a
    # hash of the whole key replaces the tail.
    key = _BAD_KEY_CHARS.sub("_", key)
    if len(key) <= MAX_KEY_CHARS:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return f"{key[: MAX_KEY_CHARS - 14]}--{digest}"


def _clip_json(value: Any) -> Any:
    if isinstance(value, str):
        return _clip_text(value, MAX_TRACE_TEXT_CHARS)
    if isinstance(value, Mapping):
        return {k: _clip_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clip_json(v) for v in value]
    return value


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Points MLflow's global tracking URI (and so its trace exporter) at ``uri`` temporarily."""
    with _GLOBAL_URI_LOCK:
        saved_uri = _tracking_utils._tracking_uri
        saved_env = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            mlflow.set_tracking_uri(uri)
            yield
        finally:
            # set_tracking_uri also rebuilds the tracer provider for the restored URI.
            mlflow.set_tracking_uri(saved_uri)
            if saved_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved_env


@dataclasses.dataclass
class _Turn:
    index: int
    seen: list[dict[str, Any]]  # the messages before this assistant message
    text: str
    tool_calls: list[dict[str, Any]]


def _split_turns(record: TrajectoryRecord) -> tuple[list[_Turn], list[dict[str, Any]]]:
    """The record's assistant turns with their tool calls, and calls no turn claims."""
    turns: list[_Turn] = []
    turn_of_call: dict[str, int] = {}
    for i, msg in enumerate(record.messages):
        if msg.get("role") == "assistant":
            turns.append(_Turn(len(turns), record.messages[:i], str(msg.get("content")), []))
        elif msg.get("role") == "tool" and turns and msg.get("tool_call_id") is not None:
            turn_of_call[str(msg["tool_call_id"])] = len(turns) - 1  # answers the last turn
    orphans = []
    for call in record.tool_calls:
        index = turn_of_call.get(str(call.get("id")))
        if index is None and (m := _CALL_ID_RE.match(str(call.get("id")))):
            index = int(m.group(1)) - 1  # no tool message (e.g. cut history): use the id
        if index is not None and 0 <= index < len(turns):
            turns[index].tool_calls.append(call)
        else:
            orphans.append(call)
    return turns, orphans


def _log_trace(
    client: MlflowClient,
    record: TrajectoryRecord,
    experiment_id: str,
    run_id: str,
    step: int,
    tag: str,
) -> None:
    """Logs one episode as a trace (root AGENT span, CHAT_MODEL turns, TOOL calls)."""
    turns, orphans = _split_turns(record)
    first_assistant = len(turns[0].seen) if turns else len(record.messages)
    # Synthetic clock: the episode ends now; sampling time is shared by sampled tokens, env time
    # evenly by turns, and a turn's env time evenly by its tool calls.
    sample_s = float(record.timings.get("sample_s", 0.0))
    env_s = float(record.timings.get("env_s", 0.0))
    if len(record.turn_spans) == len(turns):
        weights = [float(e - s) for s, e in record.turn_spans]
    else:
        weights = [1.0] * len(turns)
    total_w = sum(weights) or 1.0
    durations = [(sample_s * w / total_w, env_s / max(len(turns), 1)) for w in weights]
    episode_s = max(float(record.timings.get("episode_s", 0.0)), sum(map(sum, durations)))
    start_ns = time.time_ns() - int(episode_s * 1e9)
    eval_ = record.eval or {}
    root = client.start_trace(
        name=f"episode/{record.task_id}" if record.task_id is not None else "episode",
        span_type=SpanType.AGENT,
        inputs={"messages": _clip_json(record.messages[:first_assistant])},
        attributes={
            "mtrl.task_id": record.task_id,
            "mtrl.group_id": record.group_id,
            "mtrl.sample_index": record.sample_index,
            "mtrl.status": record.status,
            "mtrl.reward": record.reward,
            "mtrl.eval_success": eval_.get("success"),
            "mtrl.eval": _clip_json(record.eval),
            "mtrl.advantage": record.advantage,
            "mtrl.num_turns": len(turns),
            "mtrl.num_tool_calls": len(record.tool_calls),
            "mtrl.mode": record.mode,
            "mtrl.step": step,
            "mtrl.tag": tag,
            "mtrl.synthetic_timing": True,
        },
        tags={
            "mtrl.step": str(step),
            "mtrl.tag": tag,
            "mtrl.task_id": str(record.task_id),
            "mtrl.group_id": record.group_id,
            "mtrl.status": record.status,
        },
        experiment_id=experiment_id,
        start_time_ns=start_ns,
        run_id=run_id,
    )
    trace_id, cursor = root.trace_id, start_ns
    for turn, (sample_t, env_t) in zip(turns, durations, strict=True):
        span_attrs: dict[str, Any] = {"mtrl.turn": turn.index, "mtrl.synthetic_timing": True}
        if len(record.turn_spans) == len(turns):
            s, e = record.turn_spans[turn.index]
            sampled = record.loss_mask[s:e].astype(bool)
            span_attrs["mtrl.sampled_tokens"] = int(sampled.sum())
            if sampled.any():
                span_attrs["mtrl.logprob_mean"] = float(record.logprobs[s:e][sampled].mean())
                span_attrs["mtrl.policy_version"] = int(record.policy_version[s:e].max())
        span = client.start_span(
            name=f"turn {turn.index}",
            trace_id=trace_id,
            parent_id=root.span_id,
            span_type=SpanType.CHAT_MODEL,
            inputs={"messages": _clip_json(turn.seen)},
            attributes=span_attrs,
            start_time_ns=cursor,
        )
        tool_cursor = cursor + int(sample_t * 1e9)
        for call in turn.tool_calls:
            tool_end = tool_cursor + int(env_t / len(turn.tool_calls) * 1e9)
            _log_tool_span(client, trace_id, span.span_id, call, tool_cursor, tool_end)
            tool_cursor = tool_end
        cursor += int((sample_t + env_t) * 1e9)
        client.end_span(trace_id, span.span_id, outputs=_clip_json(turn.text), end_time_ns=cursor)
    for call in orphans:  # calls no turn claims stay visible, directly under the episode
        _log_tool_span(client, trace_id, root.span_id, call, cursor, cursor)
    client.end_trace(
        trace_id,
        outputs={"final_answer": _clip_json(record.final_answer), "eval": _clip_json(record.eval)},
        status="OK" if record.status == "ok" else SpanStatus("ERROR", record.status),
        end_time_ns=start_ns + int(episode_s * 1e9),
    )


def _log_tool_span(
    client: MlflowClient,
    trace_id: str,
    parent_id: str,
    call: Mapping[str, Any],
    start_ns: int,
    end_ns: int,
) -> None:
    error = call.get("error")
    span = client.start_span(
        name=f"tool {call.get('name')}",
        trace_id=trace_id,
        parent_id=parent_id,
        span_type=SpanType.TOOL,
        inputs=_clip_json(call.get("arguments")),
        attributes={"mtrl.call_id": call.get("id"), "mtrl.tool": call.get("name")},
        start_time_ns=start_ns,
    )
    client.end_span(
        trace_id,
        span.span_id,
        outputs=_clip_json(call.get("result") if error is None else {"error": error}),
        status="OK" if error is None else SpanStatus("ERROR", str(error)),
        end_time_ns=end_ns,
    )
