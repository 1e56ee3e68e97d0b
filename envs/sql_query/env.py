"""SqlQuery: answer questions about a per-episode shop database with one SQL query.

Each task is a shop database generated from the task's seed (a sqlite file in a private temporary
directory, made at reset and deleted at the next reset or close) and a question about it. The
agent explores with ``run_query`` (read-only, run in the sandbox on a copy of the database, at
most ``max_rows`` rows shown) and answers with ``{"sql": "<one SELECT statement>"}``.

Grading runs the submitted and the gold query the same isolated way and compares their result
sets (see :mod:`mtrl_envs.sql_query.execution`): any equivalent query is right. The answer is SQL
rather than a value because the query is what transfers to a new database, and because a value
is exposed to formatting disputes that a result-set comparison avoids.

If the sandbox fails while grading, the grader lets ``SandboxInfraError`` (a ``ToolInfraError``)
propagate and :class:`~mtrl_gym.TextEnv` ends the episode with status ``infra_error`` (and reward
0, which the trainer excludes) instead of scoring the agent for the infrastructure's failure.

Non-goals: write queries (the database is read-only), multi-statement answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtrl_envs.sql_query.execution import DEFAULT_LIMITS, ResultSet, compare, execute, render
from mtrl_envs.sql_query.shop import SCHEMA, TEMPLATES, create_database, generate_shop
from mtrl_gym import (
    EpisodeResources,
    EpisodeSummary,
    Status,
    Task,
    TextEnv,
    Tool,
    ToolError,
    ToolInfraError,
)
from mtrl_gym.sandbox import SandboxLimits

SYSTEM = """You are a data analyst. You answer questions about a shop's SQLite database with one
SQL query. The run_query tool runs a read-only query and returns its columns and rows (at most
{max_rows} rows are shown). Your final answer is graded by running your query and comparing its
result with the reference answer's: return exactly the columns asked for, in that order (column
names do not matter); row order matters only when the question asks for an order.
Answer with <final_output>{{"sql": "<one SELECT statement>"}}</final_output>."""

SPLITS = ("train", "validation", "test")
_SPLIT_SEEDS = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
# Kept small because grading runs the sandbox; pass num_tasks for more (seeds are unbounded).
DEFAULT_NUM_TASKS = {"train": 10, "validation": 5, "test": 5}
# Gold results by (seed, gold SQL): the database is a function of the seed, so a gold result
# never changes; caching it halves the sandbox runs of repeated evaluation.
_GOLD: dict[tuple[int, str], ResultSet] = {}
_GOLD_MAX = 4096


def make_task(split: str, index: int) -> Task:
    """Task ``index`` of ``split``: templates rotate with the index, the seed draws the shop."""
    seed = _SPLIT_SEEDS[split] + index
    shop = generate_shop(seed)
    template = TEMPLATES[index % len(TEMPLATES)]
    question = template(np.random.default_rng([seed, 1]), shop)
    prompt = f"Database schema:\n{SCHEMA}\n\nQuestion: {question.text}"
    return Task(
        id=f"sql-{split}-{index:04d}",
        prompt=prompt,
        answer={"sql": question.sql},
        metadata={"seed": seed, "template": template.__name__, "ordered": question.ordered},
    )


@dataclass(frozen=True)
class Grade:
    """The comparison of a submitted query with the gold one."""

    correct: bool
    reason: str


class SqlQueryEnv(TextEnv):
    """Questions over a per-episode shop database, answered with a graded SQL query.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        num_tasks: Tasks in the split (default: ``DEFAULT_NUM_TASKS[split]``).
        limits: Sandbox limits of every query (the agent's and the gold one).
        max_rows: Rows of a result shown to the agent.
        **kwargs: Passed to :class:`~mtrl_gym.TextEnv`; ``reward_fn`` defaults to 1.0 for a
            correct query, else 0.0, and ``evaluator`` to :meth:`evaluate`.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        num_tasks: int | None = None,
        limits: SandboxLimits = DEFAULT_LIMITS,
        max_rows: int = 50,
        **kwargs: Any,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        count = DEFAULT_NUM_TASKS[split] if num_tasks is None else num_tasks
        if count < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        kwargs.setdefault("reward_fn", self.reward)
        kwargs.setdefault("evaluator", self.evaluate)
        kwargs.setdefault("max_turns", 10)
        super().__init__(**kwargs)
        self.split, self.limits, self.max_rows = split, limits, max_rows
        self._tasks = tuple(make_task(split, i) for i in range(count))
        self.database_path: Path | None = None  # the current episode's sqlite file

    def tasks(self) -> Sequence[Task]:
        """The split's tasks, in index order."""
        return self._tasks

    def system_prompt(self, task: Task) -> str:
        """The analyst instructions, with this environment's row limit."""
        return SYSTEM.format(max_rows=self.max_rows)

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """Writes the task's database into a private temporary directory; one query tool."""
        database = resources.tempdir(prefix="mtrl-sql-") / "shop.db"
        create_database(database, generate_shop(task.metadata["seed"]))
        self.database_path = database
        limits, max_rows = self.limits, self.max_rows

        def run_query(sql: str) -> str:
            """Runs one read-only SQL query on the database and returns its rows as JSON.

            Args:
                sql: One SQLite SELECT statement.
            """
            return render(execute(sql, database, limits), max_rows)

        return [Tool.from_function(run_query)]

    # ---- grading -------------------------------------------------------------------------

    def grade_episode(self, episode: EpisodeSummary) -> Grade:
        """Runs the submitted and the gold query and compares them (once, at the episode's end).

        Raises:
            ToolInfraError: The sandbox could not run a query (``SandboxInfraError``); TextEnv
                ends the episode as ``infra_error``.
        """
        value = episode.answer_value
        sql = value.get("sql") if isinstance(value, dict) else None
        if episode.status is not Status.OK or not isinstance(sql, str) or not sql.strip():
            return Grade(False, 'no {"sql": "..."} final answer')
        assert self.database_path is not None
        gold = self._gold(episode.task)
        try:
            actual = execute(sql, self.database_path, self.limits)
        except ToolError as e:
            return Grade(False, f"the query failed: {e}")
        reason = compare(gold, actual, ordered=episode.task.metadata["ordered"])
        return Grade(reason is None, reason or "same result as the reference")

    def _gold(self, task: Task) -> ResultSet:
        assert self.database_path is not None
        key = (int(task.metadata["seed"]), str(task.answer["sql"]))
        if key not in _GOLD:
            if len(_GOLD) >= _GOLD_MAX:
                _GOLD.clear()
            # The gold query failing is never the agent's fault. Its usual cause is a sandbox limit
            # hit on an overloaded machine, so the episode is excluded as an infrastructure
            # failure rather than crashing the run; a gold query that is simply wrong is caught
            # by the oracle test, which grades every task's gold query.
            try:
                _GOLD[key] = execute(key[1], self.database_path, self.limits)
            except ToolError as e:
                raise ToolInfraError(f"gold query of {task.id} failed: {e}") from e
        return _GOLD[key]

    def reward(self, episode: EpisodeSummary) -> float:
        """1.0 when the submitted query returns the gold result, else 0.0."""
        return float(episode.grade.correct)

    def evaluate(self, episode: EpisodeSummary) -> dict[str, Any]:
        """``success``, the reason, and the episode's ``status``.

        Reads ``episode.grade`` (:meth:`grade_episode`).
        """
        grade = episode.grade
        return {"success": grade.correct, "reason": grade.reason, "status": str(episode.status)}

    def oracle_policy(self) -> Callable[[str, dict[str, Any]], str]:
        """Runs the gold query once with ``run_query``, then submits it."""
        assert self.task is not None
        sql = self.task.answer["sql"]
        fmt = self.format

        def policy(observation: str, info: dict[str, Any]) -> str:
            if any(m["role"] == "tool" for m in info.get("messages", [])):
                return f"<final_output>{json.dumps({'sql': sql})}</final_output>"
            return fmt.render_calls([("run_query", {"sql": sql})])

        return policy
