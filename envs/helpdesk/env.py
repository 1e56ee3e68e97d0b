"""Helpdesk: resolve customer tickets with tools that change a per-episode order database.

Each episode builds a private sqlite database (customers, orders with status, address, items and
amount, tickets, refunds, escalations) from the task's seed, in a temporary directory created at
reset and deleted at the next reset or at close. The agent reads the ticket, looks orders and
customers up, and changes the database: a new shipping address, a refund, an escalation, a closed
ticket. The policy (in the system prompt) makes the right action depend on the order's state, and
many tasks begin with a plausible call the system rejects, which the agent must recover from.

Success is judged on the *final database state*, compared row by row with the goal state (the
initial state plus the task's expected changes), and on the final answer. A wrong side effect
(refunding another order, a second refund, touching a field nobody asked to change, closing a
ticket that should have been escalated) is a failure even when the answer is right.

Non-goals: partial credit for "almost" states (a ticket is resolved or it is not).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtrl_envs.helpdesk.scenarios import KINDS, SYSTEM, build_scenario, make_policy
from mtrl_envs.helpdesk.tools import HelpdeskTools
from mtrl_envs.helpdesk.world import State, apply_changes, create_database, diff_states, snapshot
from mtrl_gym import EpisodeResources, EpisodeSummary, Status, Task, TextEnv, Tool
from mtrl_gym.evaluation import field_matches

SPLITS = ("train", "validation", "test")
# Disjoint seed ranges: no database or request is shared between splits.
_SPLIT_SEEDS = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
# Multiples of len(KINDS), so that every split holds every kind equally often.
DEFAULT_NUM_TASKS = {"train": 60, "validation": 20, "test": 20}


def make_task(split: str, index: int) -> Task:
    """Task ``index`` of ``split``: kinds rotate with the index, the seed fixes everything else."""
    seed = _SPLIT_SEEDS[split] + index
    kind = KINDS[index % len(KINDS)]
    scenario = build_scenario(seed, kind)
    return Task(
        id=f"helpdesk-{split}-{index:04d}",
        prompt=scenario.prompt,
        system=SYSTEM,
        answer=scenario.answer,
        metadata={"seed": seed, "kind": kind, "changes": scenario.changes, "hints": scenario.hints},
    )


@dataclass(frozen=True)
class Verdict:
    """How a finished episode compares with its goal.

    Attributes:
        answer_fields: Per expected answer field, whether the final answer got it right.
        answer_correct: A well-formed final answer with every expected field right.
        state_diff: Per table, goal rows missing from the database and unexpected rows.
    """

    answer_fields: dict[str, bool]
    answer_correct: bool
    state_diff: dict[str, dict[str, list[Any]]]

    @property
    def state_correct(self) -> bool:
        """The database holds exactly the goal state (compared columns of every table)."""
        return not self.state_diff


@dataclass(frozen=True)
class HelpdeskReward:
    """Reward = answer exact match x state correctness: 1.0 only when both are right.

    Reads the :class:`Verdict` the environment's ``grade_episode`` put in ``episode.grade``.
    """

    def __call__(self, episode: EpisodeSummary) -> float:
        """1.0 for a right answer on a right final state, else 0.0."""
        v: Verdict = episode.grade
        return float(v.answer_correct and v.state_correct)


@dataclass(frozen=True)
class HelpdeskEvaluator:
    """External evaluation: ``success`` plus the answer and state checks behind it.

    Reads the :class:`Verdict` the environment's ``grade_episode`` put in ``episode.grade``.
    """

    def __call__(self, episode: EpisodeSummary) -> dict[str, Any]:
        """Reports ``success`` with the answer and state checks behind it."""
        v: Verdict = episode.grade
        return {
            "success": v.answer_correct and v.state_correct,
            "answer_correct": v.answer_correct,
            "state_correct": v.state_correct,
            "fields": v.answer_fields,
            "state_diff": v.state_diff,
            "status": str(episode.status),
        }


class HelpdeskEnv(TextEnv):
    """Customer tickets resolved against a per-episode order/ticket database.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        num_tasks: Tasks in the split (default: ``DEFAULT_NUM_TASKS[split]``); any count works,
            as tasks are generated from seeds.
        **kwargs: Passed to :class:`~mtrl_gym.TextEnv` (``reward_fn`` and ``evaluator`` default
            to :class:`HelpdeskReward` and :class:`HelpdeskEvaluator`).
    """

    def __init__(self, *, split: str = "train", num_tasks: int | None = None, **kwargs: Any):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        count = DEFAULT_NUM_TASKS[split] if num_tasks is None else num_tasks
        if count < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        kwargs.setdefault("reward_fn", HelpdeskReward())
        kwargs.setdefault("evaluator", HelpdeskEvaluator())
        kwargs.setdefault("max_turns", 12)
        super().__init__(**kwargs)
        self.split = split
        self._tasks = tuple(make_task(split, i) for i in range(count))
        self.database_path: Path | None = None  # the current episode's sqlite file
        self._db: Any = None
        self._initial: State = {}

    def tasks(self) -> Sequence[Task]:
        """The split's tasks, in index order."""
        return self._tasks

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """Builds the episode's database from the task's seed and binds the tools to it."""
        path = resources.tempdir(prefix="mtrl-helpdesk-") / "helpdesk.db"
        conn = resources.sqlite(path)
        create_database(conn, build_scenario(task.metadata["seed"], task.metadata["kind"]).world)
        self.database_path, self._db, self._initial = path, conn, snapshot(conn)
        return HelpdeskTools(conn).tools()

    def grade_episode(self, episode: EpisodeSummary) -> Verdict:
        """Compares the final answer and the database with the task's goal (once per episode)."""
        value = episode.answer_value
        fields = field_matches(value, episode.task.answer)
        answered = episode.status is Status.OK and all(fields.values())
        expected = apply_changes(self._initial, episode.task.metadata["changes"])
        return Verdict(fields, answered, diff_states(expected, snapshot(self._db)))

    def oracle_policy(self) -> Callable[[str, dict[str, Any]], str]:
        """Follows the policy for the current ticket, reacting to each tool result."""
        assert self.task is not None
        hints: Mapping[str, Any] = self.task.metadata["hints"]
        return make_policy(hints, self.format)
