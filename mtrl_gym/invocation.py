"""Running one tool call under its wall-clock limit, on the caller's thread or without blocking.

:func:`run_call` (for ``TextEnv.step``) and :func:`arun_call` (for ``TextEnv.astep``) run a call
whose arguments already passed validation and sort what came back into the three outcomes the
environment tells apart:

- text (the rendered return value) or an :class:`~mtrl_gym.types.EndEpisode` (the tool ended the
  episode; a tool declared with ``ends_episode=True`` ends it with whatever it returns);
- a :class:`~mtrl_gym.tools.ToolError`: the agent's mistake, shown to it (raised by the tool, or
  a returned string starting with the tool's ``error_prefix``);
- an :class:`InfraFailure`: the tool's machinery failed or ran out of time; the episode ends as
  ``infra_error`` / ``timeout`` and is excluded from training.

Non-goals: validation and fault attribution of the agent's arguments (``mtrl_gym.tools``), and
isolation of untrusted code (``mtrl_gym.sandbox``, which can hard-kill what a thread cannot).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from mtrl_gym.tools import Tool, ToolError, render_result
from mtrl_gym.types import JSON, EndEpisode, Status

# Tools that block run on these threads so a per-call timeout can be enforced and so the async
# runner never blocks its event loop. A thread cannot be killed: a timed-out sync tool keeps its
# thread until it returns, which is why untrusted code goes through ``sandbox`` (hard kill). User
# simulators (``mtrl_gym.users``) answer on these threads too under ``astep``.
TOOL_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="mtrl-tool")

Outcome = str | EndEpisode | BaseException


class InfraFailure(Exception):
    """A call failed for infrastructure reasons; carries the status the episode ends with."""

    def __init__(self, status: Status, detail: str):
        super().__init__(detail)
        self.status = status


def settle(tool: Tool, value: Any) -> str | EndEpisode:
    """Renders a return value; an ending tool's value becomes an :class:`EndEpisode`.

    Raises ``ToolInfraError`` (via ``render_result``) for a result or an answer JSON cannot
    encode: a bug in the tool, hence the infrastructure's failure. Raises ``ToolError`` for a
    string that starts with the tool's ``error_prefix`` (even from an ending tool: an error ends
    nothing), so it is recorded and shown exactly like a raised one.
    """
    error = tool.returned_error(value)
    if error is not None:
        raise ToolError(error)
    if isinstance(value, EndEpisode):
        render_result(value.answer)  # checks that the committed answer is JSON
        return EndEpisode(render_result(value.result), answer=value.answer)
    text = render_result(value)
    return EndEpisode(text) if tool.ends_episode else text


def run_call(tool: Tool, args: dict[str, JSON], timeout: float | None) -> Outcome:
    """Runs one call synchronously; returns its outcome (never raises for the tool's failures)."""
    try:
        if tool.is_async:
            future = TOOL_POOL.submit(asyncio.run, tool.fn(**args))
        elif timeout is None:
            return settle(tool, tool.fn(**args))
        else:
            future = TOOL_POOL.submit(tool.fn, **args)
        return settle(tool, future.result(timeout=timeout))
    except concurrent.futures.TimeoutError:
        return InfraFailure(Status.TIMEOUT, f"tool {tool.name} timed out after {timeout} s")
    except ToolError as e:
        return e
    except Exception as e:  # noqa: BLE001 - any other failure is the infrastructure's
        return InfraFailure(Status.INFRA_ERROR, f"tool {tool.name} failed: {e!r}")


async def arun_call(tool: Tool, args: dict[str, JSON], timeout: float | None) -> Outcome:
    """Runs one call without blocking the event loop; returns its outcome like :func:`run_call`."""
    try:
        if tool.is_async:
            coro = tool.fn(**args)
        else:
            loop = asyncio.get_running_loop()
            coro = loop.run_in_executor(TOOL_POOL, lambda: tool.fn(**args))
        return settle(tool, await asyncio.wait_for(coro, timeout))
    except TimeoutError:
        return InfraFailure(Status.TIMEOUT, f"tool {tool.name} timed out after {timeout} s")
    except ToolError as e:
        return e
    except Exception as e:  # noqa: BLE001 - any other failure is the infrastructure's
        return InfraFailure(Status.INFRA_ERROR, f"tool {tool.name} failed: {e!r}")
