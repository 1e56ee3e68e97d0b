"""Calculator: arithmetic word problems solved with an exact ``calculator`` tool.

Each task is a short word problem (change from a purchase, a discounted price with tax, work
rates, compound interest, ...) generated from a seed (:mod:`mtrl_envs.calculator.problems`). The
agent translates it into arithmetic, evaluates it with ``calculator`` (exact rational arithmetic
on a parsed expression, never ``eval``; see :mod:`mtrl_envs.calculator.arithmetic`), and answers
``{"answer": <number>}``. Grading is by exact value: the answer must equal the exact result
(``12.375`` and ``12.3750`` are the same JSON number; ``12.38`` is wrong).

An invalid or too costly expression is the agent's mistake (``Error: ...``, the episode goes
on). The tool runs in-process in microseconds, so it needs no sandbox and has no infrastructure
failure mode of its own.

Non-goals: code execution (see ``mtrl/PythonTests-v0``) and answers that need rounding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from mtrl_envs.calculator.arithmetic import CalculatorError, evaluate, format_value
from mtrl_envs.calculator.problems import TEMPLATES, make_problem
from mtrl_gym import EpisodeResources, Task, TextEnv, Tool, ToolError

SYSTEM = """You solve arithmetic word problems exactly. The calculator tool evaluates an
arithmetic expression exactly: numbers, + - * / // % ** and parentheses (no variables or
functions). Give the exact value, not a rounded one, as
<final_output>{"answer": <number>}</final_output>."""

SPLITS = ("train", "validation", "test")
_SPLIT_SEEDS = {"train": 20_000, "validation": 1_020_000, "test": 2_020_000}
# Problem texts hash into ten buckets; no text can be in two splits (see problems.make_problem).
_SPLIT_BUCKETS = {"train": range(8), "validation": (8,), "test": (9,)}
# Multiples of len(TEMPLATES), so every split holds every template equally often.
DEFAULT_NUM_TASKS = {"train": 40, "validation": 20, "test": 20}


def make_task(split: str, index: int) -> Task:
    """Task ``index`` of ``split``: templates rotate with the index, the seed draws the numbers."""
    seed = _SPLIT_SEEDS[split] + index
    template = TEMPLATES[index % len(TEMPLATES)]
    text, expression, answer = make_problem(seed, template, _SPLIT_BUCKETS[split])
    return Task(
        id=f"calculator-{split}-{index:04d}",
        prompt=text,
        system=SYSTEM,
        answer={"answer": answer},
        metadata={"expression": expression, "template": template.__name__},
    )


def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression exactly and returns the result.

    Args:
        expression: Numbers combined with + - * / // % ** and parentheses, e.g. (3 + 4.5) * 2.
    """
    try:
        return format_value(evaluate(expression))
    except CalculatorError as e:
        raise ToolError(str(e)) from None


class CalculatorEnv(TextEnv):
    """Arithmetic word problems with an exact calculator tool, graded by exact value.

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"``.
        num_tasks: Tasks in the split (default: ``DEFAULT_NUM_TASKS[split]``).
        **kwargs: Passed to :class:`~mtrl_gym.TextEnv` (reward and evaluation default to strict
            exact match of ``answer``; ``1 == 1.0`` as JSON numbers).
    """

    def __init__(self, *, split: str = "train", num_tasks: int | None = None, **kwargs: Any):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        count = DEFAULT_NUM_TASKS[split] if num_tasks is None else num_tasks
        if count < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        kwargs.setdefault("max_turns", 8)
        super().__init__(**kwargs)
        self.split = split
        self._tasks = tuple(make_task(split, i) for i in range(count))

    def tasks(self) -> Sequence[Task]:
        """The split's tasks, in index order."""
        return self._tasks

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """One stateless tool."""
        return [Tool.from_function(calculator)]

    def oracle_policy(self) -> Callable[[str, dict[str, Any]], str]:
        """Evaluates the problem's expression, then answers with the number the tool returned."""
        assert self.task is not None
        expression = self.task.metadata["expression"]
        fmt = self.format

        def policy(observation: str, info: dict[str, Any]) -> str:
            results = [m for m in info.get("messages", []) if m["role"] == "tool"]
            if results and not results[-1]["content"].startswith("Error:"):
                # The tool prints an integer or an exact decimal: both are JSON numbers.
                answer = {"answer": json.loads(results[-1]["content"])}
                return f"<final_output>{json.dumps(answer)}</final_output>"
            return fmt.render_calls([("calculator", {"expression": expression})])

        return policy
