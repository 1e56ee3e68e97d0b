"""SopEnv: one generic text environment for any SOP suite folder with a behaviour spec.

The system message is the SOP text plus the instruction to finish with
``<final_output>{...}</final_output>`` using the exact output column names; the tools are the
suite's ``toolspecs.json`` (listed by the tool-call format as usual); the user message is the
task's input lines. Tool results and errors are those of the behaviour spec (``engine``); the
reward is strict all-fields-correct and ``info["eval"]`` reports strict and SOP-Bench-compatible
success side by side (``scoring``). Tasks are the CSV rows, optionally one split of them; look-ups
always see the whole table, as upstream's tools do.

Budgets default to upstream's: 10 model turns for formats that can carry several calls per
message (function calling), 15 for one-call-per-message formats (ReAct).

Non-goals: registering environment ids (done centrally), anything specific to one SOP-Bench
domain, and training on SOP-Bench data (its licence allows evaluation only; see the benchmark
adapter).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtrl_envs.sop.oracle import OraclePolicy
from mtrl_envs.sop.scoring import SopEvaluator, SopReward
from mtrl_envs.sop.suite import SopSuite
from mtrl_gym import EpisodeResources, Task, TextEnv, Tool, get_format

# Upstream's budgets: 10 model calls for the function-calling agent, 15 steps for ReAct.
FUNCTION_CALLING_MAX_TURNS = 10
REACT_MAX_TURNS = 15


class SopEnv(TextEnv):
    """A SOP suite as a multi-turn tool-use environment.

    Args:
        suite: A loaded :class:`SopSuite`, or the suite's data folder.
        split: Only the rows whose ``task.split_column`` prints as this value (suites that
            declare a split column only).
        behavior_path: The behaviour file (or a folder holding ``tool_behavior.json``) when
            ``suite`` is a folder without one.
        **textenv_kwargs: Passed to :class:`~mtrl_gym.TextEnv` (``tool_format``, ``max_turns``,
            ...); ``reward_fn`` and ``evaluator`` default to :class:`SopReward` and
            :class:`SopEvaluator`.
    """

    def __init__(
        self,
        suite: str | Path | SopSuite,
        *,
        split: str | None = None,
        behavior_path: str | Path | None = None,
        **textenv_kwargs: Any,
    ):
        if isinstance(suite, SopSuite):
            if behavior_path is not None:
                raise ValueError("behavior_path applies only when suite is a folder")
        else:
            suite = SopSuite.load(suite, behavior_path=behavior_path)
        fmt = get_format(textenv_kwargs.get("tool_format", "hermes"))
        one_call = fmt.max_calls_per_turn == 1
        textenv_kwargs.setdefault(
            "max_turns", REACT_MAX_TURNS if one_call else FUNCTION_CALLING_MAX_TURNS
        )
        textenv_kwargs.setdefault("reward_fn", SopReward())
        textenv_kwargs.setdefault("evaluator", SopEvaluator())
        super().__init__(**textenv_kwargs)
        self.suite = suite
        self.split = split
        self._tasks = suite.tasks(split)
        if not self._tasks:
            raise ValueError(f"suite {suite.name!r} has no tasks")
        self._listed, self._unlisted = suite.make_tools()

    def tasks(self) -> Sequence[Task]:
        """The suite's rows (of the chosen split), in CSV order."""
        return self._tasks

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """The advertised tools; they are stateless, so every episode shares one set."""
        return self._listed

    def unlisted_tools(self, task: Task) -> Sequence[Tool]:
        """Tools upstream implemented but never advertised: callable, not listed."""
        return self._unlisted

    def unknown_tool_error(self, name: str | None) -> str:
        """Upstream's wording, listing the advertised tools in toolspecs order.

        Unlike upstream, where it ends a function-calling episode, it is an ordinary error
        observation (SPEC.md).
        """
        known = ", ".join(t.name for t in self._listed)
        return f"Tool {name!r} not found. Available tools: {known}"

    def oracle_policy(self) -> OraclePolicy | None:
        """Plays the current task's row through the suite's ``oracle_plan``, then answers."""
        plan = self.suite.behavior["oracle_plan"]
        if plan is None or self.task is None:
            return None
        row = int(self.task.metadata["row"])
        limit = self.format.max_calls_per_turn or self.max_tool_calls_per_turn
        return OraclePolicy(
            plan=plan,
            row=self.suite.task_table.row(row),
            expected=self.suite.expected_output(row),
            render_calls=self.format.render_calls,
            max_calls=min(limit, self.max_tool_calls_per_turn),
            task_id=self.task.id,
        )
