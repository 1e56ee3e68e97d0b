"""A small configurable environment for the contract tests."""

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from mtrl_gym import EpisodeResources, Task, TextEnv, Tool, ToolError, tool


@tool
def add(a: int, b: int) -> int:
    """Adds two integers.

    Args:
        a: First addend.
        b: Second addend.
    """
    return a + b


@tool
def lookup(key: str) -> dict:
    """Looks a key up.

    Args:
        key: The key.
    """
    if key != "k":
        raise ToolError(f"no such key {key!r}")
    return {"key": key, "value": 7}


def _crash() -> str:
    """Always fails like a broken backend."""
    raise ConnectionError("backend unreachable")


def _sleepy(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "slept"


async def _async_sleepy(seconds: float) -> str:
    """Sleeps without blocking.

    Args:
        seconds: How long.
    """
    await asyncio.sleep(seconds)
    return "slept"


TASKS = (
    Task(id="t0", prompt="Add 2 and 3.", system="Be exact.", answer={"sum": 5}),
    Task(id="t1", prompt="Add 10 and -4.", system="Be exact.", answer={"sum": 6}),
    Task(id="t2", prompt="What is the value of k?", answer={"value": 7}),
)


class ToyEnv(TextEnv):
    """Tasks with add/lookup plus crash/sleep tools for failure paths."""

    def __init__(self, *, extra_tools: Sequence[Tool] = (), **kwargs: Any):
        super().__init__(**kwargs)
        self.extra_tools = tuple(extra_tools)

    def tasks(self) -> Sequence[Task]:
        return TASKS

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        return (add, lookup, *self.extra_tools)


CRASH = Tool.from_function(_crash, name="crash")
SLEEPY = Tool.from_function(_sleepy, name="sleepy")
ASYNC_SLEEPY = Tool.from_function(_async_sleepy, name="async_sleepy")
