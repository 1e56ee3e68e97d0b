"""Evaluation summaries and reports: episode records in, numbers and a Markdown report out.

:func:`summarize` turns the :class:`~mtrl_jax.trajectory.TrajectoryRecord` list of an eval run
into one JSON-serialisable dict; :func:`write_report` writes that dict, the episodes, a Markdown
report and a few PNG plots to a folder; :func:`format_summary` renders the dict as a few lines
for the CLI.

Conventions (each a choice a reader of the numbers needs to know):

- *Infrastructure failures* (status ``infra_error`` / ``timeout``, the same
  :data:`~mtrl_jax.rollout.EXCLUDED_STATUSES` the trainer uses) are excluded from every rate and
  mean and counted separately (``infra_failures``, ``status_counts``): a sandbox that crashed says
  nothing about the policy, so it is never scored as a failure. Only ``tokens.total`` counts
  them, since that number is what the run cost.
- *Success* is the external evaluator's ``eval["success"]``; an episode without ``eval`` counts
  as unsuccessful (as in the rollout metrics) and is counted in ``episodes_without_eval``.
- ``success_rate`` pools episodes; ``pass_at_k["1"]`` averages per-task success fractions, so
  the two differ when tasks have different numbers of valid samples.
- *pass@k* is the mean over tasks of the unbiased estimator
  :func:`mtrl_jax.advantages.pass_at_k` (Chen et al. 2021) with ``n`` valid samples and ``c``
  successes per task. A task with ``n < k`` has no unbiased estimate: it is left out of that
  ``k``'s mean and counted in ``tasks_excluded``; when no task has ``k`` samples the value is
  ``None``.
- A rate or mean with an empty denominator is ``None`` (JSON ``null``), never 0.
- Episodes are grouped by ``task_id``, or by ``group_id`` when the environment reports no task
  id. Tasks and statuses are listed in sorted order, so equal inputs give equal outputs.
- Tokens: ``prompt_mean`` counts every token the policy did not sample (template, prompt and
  environment text; repeated across the samples of a ``per_turn`` record, as the sampler saw it),
  ``sampled_mean`` the loss-mask tokens.

Non-goals: playing episodes (the ``mtrl eval`` job does that), training metrics
(:mod:`mtrl_jax.rollout.metrics`), confidence intervals, experiment tracking.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtrl_jax.advantages import pass_at_k
from mtrl_jax.rollout.metrics import EXCLUDED_STATUSES
from mtrl_jax.trajectory import TrajectoryRecord, TrajectoryWriter

_PLOTS = {  # file name -> figure title
    "plot_success": ("success_by_task.png", "Success fraction per task"),
    "plot_reward": ("reward_hist.png", "Episode reward"),
    "plot_turns": ("turns_hist.png", "Assistant turns per episode"),
}


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _success(record: TrajectoryRecord) -> bool:
    return bool((record.eval or {}).get("success"))


def _task_key(record: TrajectoryRecord) -> str:
    return str(record.task_id) if record.task_id is not None else record.group_id


def _check_ks(ks: Sequence[int]) -> list[int]:
    if isinstance(ks, int | str) or not len(ks):
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    for k in ks:
        if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
            raise ValueError(f"every k must be an int >= 1, got {k!r}")
    return sorted({int(k) for k in ks})


def _eval_means(valid: Sequence[TrajectoryRecord]) -> dict[str, float]:
    """Means of the evaluator's numeric per-episode fields (``success`` is reported on its own)."""
    values: dict[str, list[float]] = defaultdict(list)
    for record in valid:
        for name, value in (record.eval or {}).items():
            # bool is an int subclass: field-match flags average to a match rate.
            if name != "success" and isinstance(value, int | float) and math.isfinite(value):
                values[name].append(float(value))
    return {name: float(np.mean(v)) for name, v in sorted(values.items())}


def _per_task(records: Sequence[TrajectoryRecord], ks: list[int]) -> list[dict[str, Any]]:
    by_task: dict[str, list[TrajectoryRecord]] = defaultdict(list)
    for record in records:
        by_task[_task_key(record)].append(record)
    rows = []
    for task in sorted(by_task):
        valid = [r for r in by_task[task] if r.status not in EXCLUDED_STATUSES]
        n, c = len(valid), sum(_success(r) for r in valid)
        rows.append(
            {
                "task_id": task,
                "n": n,
                "infra_failures": len(by_task[task]) - n,
                "successes": c,
                "success_rate": _rate(c, n),
                "reward_mean": _mean([r.reward for r in valid]),
                "pass_at_k": {str(k): pass_at_k(n, c, k) if n >= k else None for k in ks},
            }
        )
    return rows


def summarize(records: Sequence[TrajectoryRecord], *, ks: Sequence[int] = (1,)) -> dict[str, Any]:
    """Summarises an evaluation run (see the module docstring for every convention).

    Args:
        records: The run's episodes, any order; several samples of a task share its task id.
        ks: The ``k`` of each pass@k to report (sorted and de-duplicated in the output).

    Returns:
        A JSON-serialisable dict: ``episodes``, ``valid_episodes``, ``infra_failures``,
        ``infra_failure_rate``, ``tasks``, ``tasks_scored`` (tasks with a valid episode),
        ``samples_per_task`` (``min``/``max`` episodes per task, failures included),
        ``reward_mean``, ``reward_std``, ``success_rate``, ``episodes_without_eval``, ``ks``,
        ``pass_at_k`` (``str(k)`` -> ``value``, ``tasks``, ``tasks_excluded``), ``turns_mean``,
        ``turns_median``, ``tool_calls``, ``tool_errors``, ``tool_calls_mean``,
        ``tool_error_rate``, ``format_error_rate``, ``truncation_rate``, ``status_counts``,
        ``tokens`` (``prompt_mean``, ``sampled_mean``, ``total``), ``eval_means``,
        ``episode_s_mean`` and ``per_task`` (one row per task, sorted by task id).

    Raises:
        ValueError: no records, a bad ``k``, or a non-finite reward.
    """
    if not records:
        raise ValueError("summarize needs at least one episode record, got none")
    ks_sorted = _check_ks(ks)
    for record in records:
        if not math.isfinite(record.reward):
            raise ValueError(f"group {record.group_id}: non-finite reward {record.reward!r}")
    valid = [r for r in records if r.status not in EXCLUDED_STATUSES]
    per_task = _per_task(records, ks_sorted)
    per_task_size = Counter(_task_key(r) for r in records)
    calls = [call for r in valid for call in r.tool_calls]
    # A rejected or failed call carries its message in "error" (mtrl_gym.ToolCallRecord).
    tool_errors = sum(call.get("error") is not None for call in calls)
    statuses = Counter(r.status for r in valid)
    sampled = [int(r.loss_mask.sum()) for r in valid]
    passes = {}
    for k in ks_sorted:
        scored = [row["pass_at_k"][str(k)] for row in per_task if row["n"] >= k]
        passes[str(k)] = {
            "value": _mean(scored),
            "tasks": len(scored),
            "tasks_excluded": len(per_task) - len(scored),
        }
    episode_s = [r.timings["episode_s"] for r in valid if "episode_s" in r.timings]
    return {
        "episodes": len(records),
        "valid_episodes": len(valid),
        "infra_failures": len(records) - len(valid),
        "infra_failure_rate": (len(records) - len(valid)) / len(records),
        "tasks": len(per_task),
        "tasks_scored": sum(row["n"] > 0 for row in per_task),
        "samples_per_task": {
            "min": min(per_task_size.values()),
            "max": max(per_task_size.values()),
        },
        "reward_mean": _mean([r.reward for r in valid]),
        "reward_std": float(np.std([r.reward for r in valid])) if valid else None,
        "success_rate": _rate(sum(_success(r) for r in valid), len(valid)),
        "episodes_without_eval": sum(r.eval is None for r in valid),
        "ks": ks_sorted,
        "pass_at_k": passes,
        "turns_mean": _mean([r.num_turns for r in valid]),
        "turns_median": float(np.median([r.num_turns for r in valid])) if valid else None,
        "tool_calls": len(calls),
        "tool_errors": tool_errors,
        "tool_calls_mean": _rate(len(calls), len(valid)),
        "tool_error_rate": _rate(tool_errors, len(calls)),
        "format_error_rate": _rate(statuses["format_error"], len(valid)),
        "truncation_rate": _rate(statuses["truncated"], len(valid)),
        "status_counts": dict(sorted(Counter(r.status for r in records).items())),
        "tokens": {
            "prompt_mean": _mean([len(r.tokens) - s for r, s in zip(valid, sampled, strict=True)]),
            "sampled_mean": _mean(sampled),
            "total": sum(len(r.tokens) for r in records),
        },
        "eval_means": _eval_means(valid),
        "episode_s_mean": _mean(episode_s),
        "per_task": per_task,
    }


def _fmt(value: Any, *, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if pct else f"{value:.4g}"
    return str(value)


def _headline(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows shared by the Markdown table and the CLI text."""
    tokens = summary["tokens"]
    spt = summary["samples_per_task"]
    return [
        ("episodes", _fmt(summary["episodes"])),
        ("tasks", f"{summary['tasks']} ({spt['min']}-{spt['max']} episodes each)"),
        ("infra failures (excluded)", f"{summary['infra_failures']}"),
        ("success rate", _fmt(summary["success_rate"], pct=True)),
        ("mean reward", _fmt(summary["reward_mean"])),
        ("turns mean / median", f"{_fmt(summary['turns_mean'])} / {_fmt(summary['turns_median'])}"),
        ("tool calls per episode", _fmt(summary["tool_calls_mean"])),
        ("tool-error rate", _fmt(summary["tool_error_rate"], pct=True)),
        ("format-error rate", _fmt(summary["format_error_rate"], pct=True)),
        ("truncation rate", _fmt(summary["truncation_rate"], pct=True)),
        ("prompt+env tokens mean", _fmt(tokens["prompt_mean"])),
        ("sampled tokens mean", _fmt(tokens["sampled_mean"])),
        ("tokens total", _fmt(tokens["total"])),
    ]


def format_summary(summary: Mapping[str, Any]) -> str:
    """A compact multi-line text of a :func:`summarize` dict, for the CLI to print."""
    lines = [f"{label}: {text}" for label, text in _headline(summary)]
    for k, entry in summary["pass_at_k"].items():
        excluded = entry["tasks_excluded"]
        note = f" ({excluded} tasks with n < {k} left out)" if excluded else ""
        lines.append(f"pass@{k}: {_fmt(entry['value'])}{note}")
    lines.append("status: " + " ".join(f"{s}={n}" for s, n in summary["status_counts"].items()))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    # A "|" or newline inside a cell would break the Markdown table.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _plot(path: Path, title: str, values: Sequence[float], bins: Any, xlabel: str) -> None:
    # The object-oriented API with an explicit Agg canvas: no pyplot global state, no display,
    # and the process-wide backend stays whatever the caller chose.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, color="#4878a8", edgecolor="white")
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    fig.tight_layout()
    fig.savefig(path, format="png")


def write_report(
    summary: Mapping[str, Any],
    records: Sequence[TrajectoryRecord],
    out_dir: str | Path,
    *,
    title: str,
    meta: Mapping[str, Any] | None = None,
    max_task_rows: int = 50,
    write_episodes: bool = True,
) -> dict[str, Path]:
    """Writes ``summary.json``, ``report.md``, ``episodes.jsonl`` and PNG plots to ``out_dir``.

    Existing files of the same names are replaced. A plot without data (e.g. every episode an
    infrastructure failure) is not drawn, and the report links only the plots it wrote.

    Args:
        summary: The :func:`summarize` dict of ``records``.
        records: The episodes the summary was made from.
        out_dir: The folder (created if missing).
        title: The report's heading.
        meta: Run facts for the report's first table (model, checkpoint, env, split, ...).
        max_task_rows: Per-task rows shown in the report; the rest are counted (all are in
            ``summary.json``).
        write_episodes: Write ``episodes.jsonl`` (off when the caller already streamed them).

    Returns:
        Paths by key: ``summary``, ``report``, ``episodes`` (if written) and ``plot_success``,
        ``plot_reward``, ``plot_turns`` for the plots written.

    Raises:
        ValueError: ``summary`` does not describe ``records``, or ``max_task_rows < 0``.
    """
    if summary.get("episodes") != len(records):
        raise ValueError(
            f"summary covers {summary.get('episodes')} episodes but {len(records)} records given"
        )
    if max_task_rows < 0:
        raise ValueError(f"max_task_rows must be >= 0, got {max_task_rows}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "report": out / "report.md"}
    paths["summary"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", "utf-8")
    if write_episodes:
        paths["episodes"] = out / "episodes.jsonl"
        paths["episodes"].unlink(missing_ok=True)  # the writer appends; a rerun must replace
        with TrajectoryWriter(paths["episodes"], evaluation_output=True) as writer:
            for record in records:
                writer.write(record)

    valid = [r for r in records if r.status not in EXCLUDED_STATUSES]
    fractions = [row["success_rate"] for row in summary["per_task"] if row["n"]]
    turns = [r.num_turns for r in valid]
    data = {
        "plot_success": (fractions, np.linspace(0.0, 1.0, 11), "success fraction"),
        "plot_reward": ([r.reward for r in valid], 20, "reward"),
        "plot_turns": (turns, np.arange(max(turns, default=0) + 2) - 0.5, "turns"),
    }
    for key, (values, bins, xlabel) in data.items():
        if values:
            name, plot_title = _PLOTS[key]
            paths[key] = out / name
            _plot(paths[key], plot_title, values, bins, xlabel)

    lines = [f"# {title}", ""]
    if meta:
        lines += [*_table(["run", "value"], list(meta.items())), ""]
    lines += ["## Headline", "", *_table(["metric", "value"], _headline(summary)), ""]
    pass_rows = [
        (f"pass@{k}", _fmt(e["value"]), e["tasks"], e["tasks_excluded"])
        for k, e in summary["pass_at_k"].items()
    ]
    lines += ["## pass@k", "", *_table(["k", "value", "tasks", "tasks with n < k"], pass_rows)]
    statuses = summary["status_counts"].items()
    lines += ["", "## Status counts", "", *_table(["status", "episodes"], statuses)]
    ks = summary["ks"]
    rows = [
        (
            row["task_id"],
            row["n"],
            row["infra_failures"],
            row["successes"],
            _fmt(row["reward_mean"]),
            *(_fmt(row["pass_at_k"][str(k)]) for k in ks),
        )
        for row in summary["per_task"][:max_task_rows]
    ]
    header = ["task", "n", "infra", "successes", "mean reward", *(f"pass@{k}" for k in ks)]
    lines += ["", "## Per task", "", *_table(header, rows)]
    omitted = len(summary["per_task"]) - len(rows)
    if omitted:
        lines += ["", f"{omitted} more tasks omitted; all are in summary.json."]
    plots = [key for key in _PLOTS if key in paths]
    if plots:
        lines += ["", "## Plots"]
        for key in plots:  # a blank line apart, so each image is its own paragraph
            lines += ["", f"![{_PLOTS[key][1]}]({_PLOTS[key][0]})"]
    paths["report"].write_text("\n".join(lines) + "\n", "utf-8")
    return paths
