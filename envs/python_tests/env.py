"""PythonTests: implement a function from its spec, checked by visible tests, graded by hidden ones.

Each task is one function of the bank (:mod:`mtrl_envs.python_tests.bank`): its signature and
docstring, and a few visible tests written as ``assert`` lines. The ``run_tests`` tool runs the
agent's code against the visible tests in the sandbox and reports each test's outcome. The final
answer is ``{"code": "<the module source>"}``; grading runs the visible and the hidden tests (the
hidden ones are never shown, and their expected values never enter the sandbox) and succeeds
only if every test passes. Hidden tests cover edge cases, so code fitted to the visible tests
fails.

Code that loops forever, exhausts memory or crashes the harness is the agent's mistake (an
``Error: ...`` observation, or a failed grade); only a sandbox that cannot run at all is an
infrastructure failure: the grader lets ``SandboxInfraError`` (a ``ToolInfraError``) propagate and
:class:`~mtrl_gym.TextEnv` ends the episode with status ``infra_error`` (excluded from training).

Non-goals: code quality or speed scoring beyond the time limit, multi-file solutions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mtrl_envs.python_tests.bank import Case, Problem, split_problems
from mtrl_envs.python_tests.harness import DEFAULT_LIMITS, Outcome, format_call, run_cases
from mtrl_gym import (
    EpisodeResources,
    EpisodeSummary,
    Status,
    Task,
    TextEnv,
    Tool,
    ToolError,
)
from mtrl_gym.evaluation import json_equal
from mtrl_gym.sandbox import SandboxLimits

SYSTEM = """You write Python 3 functions from a specification. The run_tests tool runs your code
against the visible tests and reports every test's result. Your final answer is graded by
running the visible tests and further hidden tests, so handle every case the specification
allows, not only the visible ones. Answer with the complete module source (the function and
any imports or helpers it needs) as <final_output>{"code": "..."}</final_output>."""


def make_task(problem: Problem) -> Task:
    """The task of one problem: the spec and the visible tests, never the hidden ones."""
    tests = "\n".join(
        f"assert {format_call(problem.name, c.args)} == {c.expected!r}" for c in problem.visible
    )
    doc = "\n".join(f"    {line}" if line else "" for line in problem.spec.splitlines())
    prompt = (
        f'Implement this function:\n\n{problem.signature}\n    """{doc.lstrip()}\n    """\n\n'
        f"Visible tests:\n{tests}"
    )
    return Task(
        id=f"python-{problem.split}-{problem.name}",
        prompt=prompt,
        system=SYSTEM,
        answer={"code": problem.reference},
        metadata={"function": problem.name},
    )


@dataclass(frozen=True)
class Grade:
    """Test counts of a submitted solution."""

    visible_passed: int
    hidden_passed: int
    reason: str


def _passed(cases: Sequence[Case], outcomes: Sequence[Outcome]) -> list[bool]:
    pairs = zip(cases, outcomes, strict=True)
    return [o.error is None and json_equal(o.value, c.expected) for c, o in pairs]


class PythonTestsEnv(TextEnv):
    """Implement a function; visible tests on demand, hidden tests at grading.

    Args:
        split: ``"train"`` (16 problems), ``"validation"`` (4) or ``"test"`` (4).
        limits: Sandbox limits of every run (tool calls and grading).
        partial_credit: Reward the fraction of hidden tests passed instead of 1.0 / 0.0 (the
            evaluation's ``success`` stays all-or-nothing).
        **kwargs: Passed to :class:`~mtrl_gym.TextEnv`.
    """

    def __init__(
        self,
        *,
        split: str = "train",
        limits: SandboxLimits = DEFAULT_LIMITS,
        partial_credit: bool = False,
        **kwargs: Any,
    ):
        kwargs.setdefault("reward_fn", self.reward)
        kwargs.setdefault("evaluator", self.evaluate)
        kwargs.setdefault("max_turns", 10)
        super().__init__(**kwargs)
        self.split, self.limits, self.partial_credit = split, limits, partial_credit
        self._problems = {p.name: p for p in split_problems(split)}
        self._tasks = tuple(make_task(p) for p in self._problems.values())

    def tasks(self) -> Sequence[Task]:
        """The split's tasks, in bank order."""
        return self._tasks

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """One tool, ``run_tests``, bound to the task's visible tests."""
        problem = self._problems[task.metadata["function"]]
        limits = self.limits

        def run_tests(code: str) -> str:
            """Runs your code against the visible tests and reports each test's result.

            Args:
                code: The complete module source defining the function.
            """
            cases = problem.visible
            report = run_cases(code, problem.name, [c.args for c in cases], limits)
            lines = []
            for i, (case, outcome) in enumerate(zip(cases, report.outcomes, strict=True), 1):
                call = format_call(problem.name, case.args)
                if outcome.error is not None:
                    lines.append(f"test {i}: ERROR: {call} raised {outcome.error}")
                elif json_equal(outcome.value, case.expected):
                    lines.append(f"test {i}: passed")
                else:
                    lines.append(
                        f"test {i}: FAILED: {call} returned {outcome.value!r}, "
                        f"expected {case.expected!r}"
                    )
            passed = sum(line.endswith("passed") for line in lines)
            text = f"{passed}/{len(cases)} visible tests passed\n" + "\n".join(lines)
            if report.stdout:
                text += f"\nyour code printed:\n{report.stdout}"
            return text

        return [Tool.from_function(run_tests)]

    # ---- grading -------------------------------------------------------------------------

    def grade_episode(self, episode: EpisodeSummary) -> Grade:
        """Runs visible and hidden tests on the submitted code (once, at the episode's end).

        Raises:
            ToolInfraError: The sandbox could not run the tests (``SandboxInfraError``); TextEnv
                ends the episode as ``infra_error``.
        """
        value = episode.answer_value
        code = value.get("code") if isinstance(value, dict) else None
        if episode.status is not Status.OK or not isinstance(code, str) or not code.strip():
            return Grade(0, 0, 'no {"code": "..."} final answer')
        problem = self._problems[episode.task.metadata["function"]]
        cases = problem.visible + problem.hidden
        try:
            report = run_cases(code, problem.name, [c.args for c in cases], self.limits)
        except ToolError as e:
            return Grade(0, 0, str(e))
        passed = _passed(cases, report.outcomes)
        n = len(problem.visible)
        return Grade(sum(passed[:n]), sum(passed[n:]), "tests ran")

    def _all_passed(self, episode: EpisodeSummary, grade: Grade) -> bool:
        problem = self._problems[episode.task.metadata["function"]]
        total = (len(problem.visible), len(problem.hidden))
        return (grade.visible_passed, grade.hidden_passed) == total

    def reward(self, episode: EpisodeSummary) -> float:
        """1.0 when every visible and hidden test passes, else 0.0 (see ``partial_credit``)."""
        grade = episode.grade
        if self.partial_credit:
            hidden = len(self._problems[episode.task.metadata["function"]].hidden)
            return grade.hidden_passed / hidden
        return float(self._all_passed(episode, grade))

    def evaluate(self, episode: EpisodeSummary) -> dict[str, Any]:
        """``success`` (every test passes), the counts, and ``status``.

        Reads ``episode.grade`` (:meth:`grade_episode`).
        """
        grade = episode.grade
        problem = self._problems[episode.task.metadata["function"]]
        return {
            "success": self._all_passed(episode, grade),
            "visible_passed": grade.visible_passed,
            "visible_total": len(problem.visible),
            "hidden_passed": grade.hidden_passed,
            "hidden_total": len(problem.hidden),
            "reason": grade.reason,
            "status": str(episode.status),
        }

    def oracle_policy(self) -> Callable[[str, dict[str, Any]], str]:
        """Runs the reference solution once with ``run_tests``, then submits it."""
        assert self.task is not None
        code = self.task.answer["code"]
        fmt = self.format

        def policy(observation: str, info: dict[str, Any]) -> str:
            if any(m["role"] == "tool" for m in info.get("messages", [])):
                return f"<final_output>{json.dumps({'code': code})}</final_output>"
            return fmt.render_calls([("run_tests", {"code": code})])

        return policy
