"""SOP-Bench domains as evaluation-only SOP environments, and the benchmark run.

SOP-Bench (Amazon Science) is licensed CC BY-NC 4.0 with the condition that nobody take steps to
facilitate training AI models on it. This adapter therefore only evaluates:

- :class:`SopBenchEnv` is the generic :class:`~mtrl_envs.sop.SopEnv` marked ``eval_only``, so
  :func:`mtrl_gym.ensure_trainable` (called by every training entry point) refuses it and episode
  results carry ``eval_only=True``;
- no SOP-Bench environment is registered with Gymnasium (nothing a training config can name);
- :func:`run_benchmark` writes a metrics report only, never trajectories.

The user supplies the data, in one of two layouts: one folder of ``<domain>/`` folders holding both
the upstream files and ``tool_behavior.json``; or an upstream checkout's data folder
(``src/amazon_sop_bench/benchmarks/data``) plus a separate folder of
``<domain>/tool_behavior.json`` specs. Everything comes from the spec: there is no per-domain code.

Non-goals: model agents (they join through the learner's eval job) and fixing upstream data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from mtrl_envs.sop import SopEnv, SopSpecError, SopSuite, macro_average, suite_metrics
from mtrl_envs.sop.suite import BEHAVIOR_FILE
from mtrl_gym.runner import EpisodeJob, EpisodeRunner

LICENCE_NOTICE = (
    "SOP-Bench (amazon-science/SOP-Bench) is licensed CC BY-NC 4.0 with additional conditions: "
    "non-commercial use, evaluation only. Do not train models on its tasks, SOPs, trajectories, "
    "rewards or outputs. Attribute SOP-Bench (repository and paper) wherever results are shown."
)
EVAL_ONLY_REASON = "SOP-Bench is licensed CC BY-NC 4.0 for evaluation only (no training)"


class SopBenchEnv(SopEnv):
    """A SOP-Bench domain as an evaluation-only SOP environment (never registered for training)."""

    eval_only = True
    eval_only_reason = EVAL_ONLY_REASON


@dataclass(frozen=True)
class DomainSource:
    """Where one domain's data and behaviour spec live (``error`` if it cannot be used)."""

    name: str
    data_dir: Path
    behavior_path: Path
    error: str | None = None


def discover_domains(
    data: str | Path, specs: str | Path | None = None, domains: Sequence[str] | None = None
) -> list[DomainSource]:
    """Finds the domains to evaluate.

    Args:
        data: A folder of ``<domain>/`` folders (upstream files, and ``tool_behavior.json`` when
            ``specs`` is not given).
        specs: Optional folder of ``<domain>/tool_behavior.json`` specs.
        domains: Only these domains (each must exist in ``data``).

    Returns:
        One entry per domain, sorted by name; domains that cannot be used carry an ``error``
        naming the missing file instead of raising, so the other domains still run.

    Raises:
        FileNotFoundError: ``data`` (or ``specs``) is not a folder.
    """
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: the SOP-Bench data folder does not exist")
    spec_root = Path(specs) if specs is not None else None
    if spec_root is not None and not spec_root.is_dir():
        raise FileNotFoundError(f"{spec_root}: the behaviour-spec folder does not exist")
    names = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if domains:
        missing = sorted(set(domains) - set(names))
        names = sorted(set(domains) & set(names))
        extra = [
            DomainSource(n, data / n, data / n, f"{data / n}: no such domain folder")
            for n in missing
        ]
    else:
        extra = []
        if spec_root is not None:  # with separate specs, the spec folder decides what is run
            names = [n for n in names if (spec_root / n).is_dir()]
    out = []
    for name in names:
        behavior = (spec_root or data) / name / BEHAVIOR_FILE
        error = None if behavior.is_file() else f"{behavior}: no behaviour spec for this domain"
        out.append(DomainSource(name, data / name, behavior, error))
    return sorted(out + extra, key=lambda d: d.name)


def load_domain(source: DomainSource) -> SopSuite:
    """Loads one domain; raises :class:`SopSpecError` naming the file on any problem."""
    if source.error:
        raise SopSpecError(source.error)
    try:
        return SopSuite.load(source.data_dir, behavior_path=source.behavior_path)
    except (OSError, UnicodeDecodeError) as e:
        raise SopSpecError(f"{source.data_dir}: cannot read the domain's files: {e}") from e


def _provenance(suite: SopSuite) -> dict[str, Any]:
    return {
        "source_commit": suite.data_commit,
        "sha256": {k: suite.checksums[k] for k in ("sop", "toolspecs", "metadata", "csv")},
        "behavior_sha256": suite.checksums.get("behavior"),
    }


def _play_domain(
    suite: SopSuite,
    *,
    limit: int | None,
    agent: Callable[[gym.Env, int], Callable[[str, dict[str, Any]], str]],
    tool_format: str,
    concurrency: int,
    seed: int,
) -> dict[str, Any]:
    """Plays the first ``limit`` tasks (all when None) of one domain; returns its metrics."""
    n_tasks = len(suite.tasks())
    count = n_tasks if limit is None else min(limit, n_tasks)
    envs = [SopBenchEnv(suite, tool_format=tool_format) for _ in range(count)]
    try:
        jobs = [
            EpisodeJob(env=env, policy=agent(env, seed + i), options={"task_index": i}, tag=i)
            for i, env in enumerate(envs)
        ]
        results = EpisodeRunner(max_concurrency=concurrency).run_sync(jobs)
    finally:
        for env in envs:
            env.close()
    return suite_metrics(results)


def _failed_metrics(error: Exception) -> dict[str, Any]:
    """A domain entry for a run that raised: every count and rate ``None``, and the error.

    ``None`` rather than zeros, so that nothing reads as "N tasks scored, none correct"; the
    macro average skips ``None`` rates.
    """
    return {
        **dict.fromkeys(suite_metrics([]), None),
        "error": {"type": type(error).__name__, "message": str(error)},
    }


def run_benchmark(
    data: str | Path,
    *,
    specs: str | Path | None = None,
    domains: Sequence[str] | None = None,
    limit: int | None = None,
    agent: Callable[[gym.Env, int], Callable[[str, dict[str, Any]], str]],
    agent_name: str,
    tool_format: str = "hermes",
    concurrency: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Plays every task (or the first ``limit``) of every domain and builds the report.

    A domain that cannot be loaded, or whose run raises (an oracle whose plan disagrees with the
    engine raises :class:`AssertionError`), fails alone: it is listed in ``errors`` and the other
    domains still run.

    Args:
        data: See :func:`discover_domains`.
        specs: See :func:`discover_domains`.
        domains: See :func:`discover_domains`.
        limit: At most this many tasks per domain (CSV order).
        agent: Builds a policy for an environment and a seed (e.g. the oracle or random agent).
        agent_name: Recorded in the report.
        tool_format: The tool-call format the agent writes.
        concurrency: Episodes in flight at once.
        seed: Base seed for agents that sample.

    Returns:
        The report. ``domains`` holds one entry per domain that loaded: metrics (TSR strict and
        compatible, ECR, C-TSR, tool-call success, counts), provenance, and ``error``: ``None``,
        or ``{"type", "message"}`` of the exception that stopped its run, in which case every
        count and rate is ``None``. ``macro`` averages the domains that ran; ``errors`` maps every
        failed domain (not loaded, or stopped) to a one-line message.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    start = time.perf_counter()
    per_domain: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for source in discover_domains(data, specs, domains):
        try:
            suite = load_domain(source)
        except SopSpecError as e:  # includes unsupported domains, with their reason
            errors[source.name] = str(e)
            continue
        try:
            metrics = {
                **_play_domain(
                    suite,
                    limit=limit,
                    agent=agent,
                    tool_format=tool_format,
                    concurrency=concurrency,
                    seed=seed,
                ),
                "error": None,
            }
        except Exception as e:  # one domain's failure must not lose the others' results
            metrics = _failed_metrics(e)
            errors[source.name] = f"{type(e).__name__}: {e}"
        per_domain[source.name] = {**metrics, **_provenance(suite)}
    ran = {name: m for name, m in per_domain.items() if m["error"] is None}
    return {
        "benchmark": "SOP-Bench",
        "licence": LICENCE_NOTICE,
        "agent": agent_name,
        "tool_format": tool_format,
        "limit": limit,
        "domains": per_domain,
        "macro": macro_average(ran) if ran else {},
        "errors": errors,
        "wall_s": round(time.perf_counter() - start, 3),
    }
