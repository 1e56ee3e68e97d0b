"""Calculator: arithmetic word problems verified by running the agent's code in a sandbox.

The agent gets one tool, ``run_python``, which executes its code in an isolated subprocess
(``mtrl_gym.sandbox``: private working directory, hard kill on timeout, memory / CPU / process
limits, no network) and returns what it printed. The answer is checked exactly against the
integer computed by the task generator.

Faults are assigned carefully: code that loops forever, raises or exhausts memory is the agent's
mistake (an ``Error: ...`` observation, the episode goes on); a sandbox that cannot start is an
infrastructure failure (status ``infra_error``, excluded from training).

Non-goals: a general code-execution benchmark (see the verifiable environments issue).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mtrl_gym import EpisodeResources, Task, TextEnv, Tool, ToolError
from mtrl_gym.sandbox import SandboxLimits, run_python

SYSTEM = """You solve arithmetic problems exactly. You may run Python code with the run_python
tool (print what you need; the tool returns standard output). Answer with
<final_output>{"answer": <integer>}</final_output>."""

_TEMPLATES = (
    (
        "the sum of the squares of the integers from {a} to {b}",
        "sum(i * i for i in range({a}, {b} + 1))",
    ),
    ("{a} to the power {c}, modulo {m}", "pow({a}, {c}, {m})"),
    (
        "the product of {a} and {b}, minus the integer part of {b} divided by {c}",
        "{a} * {b} - {b} // {c}",
    ),
    (
        "the number of primes below {b}",
        "sum(all(n % d for d in range(2, int(n ** 0.5) + 1)) for n in range(2, {b}))",
    ),
)


def make_task(index: int) -> Task:
    """Builds task ``index`` deterministically; the answer is computed from the same formula."""
    rng = np.random.default_rng(20_000 + index)
    text, formula = _TEMPLATES[index % len(_TEMPLATES)]
    values = {
        "a": int(rng.integers(2, 60)),
        "b": int(rng.integers(60, 400)),
        "c": int(rng.integers(2, 30)),
        "m": int(rng.integers(97, 10_007)),
    }
    expression = formula.format(**values)
    answer = int(
        eval(
            expression,
            {"__builtins__": {"sum": sum, "range": range, "pow": pow, "all": all, "int": int}},
        )
    )  # noqa: S307 - our own formula
    return Task(
        id=f"calculator-{index:03d}",
        prompt=f"Compute {text.format(**values)}.",
        system=SYSTEM,
        answer={"answer": answer},
        metadata={"expression": expression},
    )


class CalculatorEnv(TextEnv):
    """Exact arithmetic with a sandboxed Python tool.

    Args:
        num_tasks: How many deterministic tasks the environment serves.
        limits: Sandbox limits for each ``run_python`` call.
        **kwargs: Passed to :class:`~mtrl_gym.TextEnv`.
    """

    def __init__(self, *, num_tasks: int = 32, limits: SandboxLimits | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.limits = limits or SandboxLimits(timeout_s=5.0, memory_mb=256)
        self._tasks = tuple(make_task(i) for i in range(num_tasks))

    def tasks(self) -> Sequence[Task]:
        """The deterministic task list."""
        return self._tasks

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """One stateless sandboxed tool."""
        limits = self.limits

        def run_python(code: str) -> str:
            """Runs Python 3 code in an isolated sandbox and returns its standard output.

            Args:
                code: The program; use print() to see values.
            """
            result = run_python_sandboxed(code, limits=limits)
            if not result.ok:
                # The environment prefixes "Error: " itself.
                raise ToolError(result.describe().removeprefix("Error: "))
            return result.stdout

        return [Tool.from_function(run_python)]

    def oracle_policy(self) -> Callable[[str, dict[str, Any]], str]:
        """Prints the task's expression in the sandbox, then answers with what it printed."""
        assert self.task is not None
        expression = self.task.metadata["expression"]
        fmt = self.format

        def policy(observation: str, info: dict[str, Any]) -> str:
            tool_msgs = [m for m in info.get("messages", []) if m["role"] == "tool"]
            if tool_msgs and re.fullmatch(r"-?\d+\s*", tool_msgs[-1]["content"]):
                value = int(tool_msgs[-1]["content"])
                return f"<final_output>{json.dumps({'answer': value})}</final_output>"
            return fmt.render_calls([("run_python", {"code": f"print({expression})"})])

        return policy


# Indirection so tests can substitute a failing sandbox to exercise the infra_error path.
run_python_sandboxed = run_python
