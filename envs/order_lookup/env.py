"""OrderLookup: a customer-service task on read-only tools that replay recorded responses.

The agent follows a short returns procedure: look the order up, look the customer up, apply the
return window, answer with ``{"order_status": ..., "return_allowed": ...}``. Every fourth order
lookup fails once with a retryable error, so the agent must recover. Tool responses replay
``data/recordings.jsonl`` (regenerate with ``python -m mtrl_envs.order_lookup.generate``).

Non-goals: a realistic order system (see the SOP suites for that); this is the small example the
recorded-responses pattern is tested on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from typing import Any

from mtrl_envs.order_lookup.generate import TODAY, return_allowed
from mtrl_gym import EpisodeResources, Recording, Task, TextEnv, Tool, replay_tools

SYSTEM = f"""You are a customer-service agent. Today is {TODAY.isoformat()}.

Returns procedure:
1. Look up the order with get_order. If the service fails, retry the same request.
2. Look up the order's customer with get_customer.
3. A return is allowed only if the order status is "delivered", the customer's returns are not
   blocked, and the order was delivered at most 30 days ago (60 days for "gold" customers).
4. Answer with <final_output>{{"order_status": "<status>", "return_allowed": <true|false>}}
   </final_output>."""

TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Fetch an order by its id.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "e.g. O-1000"}},
                "required": ["order_id"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_customer",
            "description": "Fetch a customer's account by customer id.",
            "parameters": {
                "type": "object",
                "properties": {"customer_id": {"type": "string", "description": "e.g. C-300"}},
                "required": ["customer_id"],
                "additionalProperties": False,
            },
        },
    },
]


def _data(name: str) -> str:
    return resources.files("mtrl_envs.order_lookup").joinpath("data", name).read_text("utf-8")


@cache
def load_recording() -> Recording:
    """The shipped recordings (loaded once per process; replay state is per episode)."""
    with resources.as_file(
        resources.files("mtrl_envs.order_lookup").joinpath("data", "recordings.jsonl")
    ) as path:
        return Recording.from_jsonl(path)


@cache
def load_tasks() -> tuple[Task, ...]:
    """The shipped tasks."""
    rows = [json.loads(line) for line in _data("tasks.jsonl").splitlines() if line.strip()]
    return tuple(
        Task(id=r["id"], prompt=r["prompt"], system=SYSTEM, answer=r["answer"]) for r in rows
    )


class OrderLookupEnv(TextEnv):
    """Returns-eligibility questions answered from recorded order and customer lookups."""

    def tasks(self) -> Sequence[Task]:
        """The twelve shipped tasks."""
        return load_tasks()

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """Replay tools with a fresh per-episode call counter (for the retry recordings)."""
        return replay_tools(TOOL_SCHEMAS, load_recording().new_episode())

    def oracle_policy(self) -> Callable[[str, dict[str, Any]], str]:
        """Follows the procedure, retrying failed lookups, from the tool results it reads."""
        assert self.task is not None
        order_id = self.task.prompt.split("order ")[1].split(":")[0]
        fmt = self.format
        state: dict[str, Any] = {}

        def policy(observation: str, info: dict[str, Any]) -> str:
            tool_msgs = [m for m in info.get("messages", []) if m["role"] == "tool"]
            if tool_msgs and tool_msgs[-1]["content"].startswith("Error:"):
                last = state["last"]  # a failed call: retry it unchanged
                return fmt.render_calls([last])
            if tool_msgs and "order" not in state:
                state["order"] = json.loads(tool_msgs[-1]["content"])
            elif tool_msgs and "customer" not in state:
                state["customer"] = json.loads(tool_msgs[-1]["content"])
            if "order" not in state:
                state["last"] = ("get_order", {"order_id": order_id})
            elif "customer" not in state:
                state["last"] = ("get_customer", {"customer_id": state["order"]["customer_id"]})
            else:
                order, customer = state["order"], state["customer"]
                answer = {
                    "order_status": order["status"],
                    "return_allowed": return_allowed(order, customer)
                    if order["status"] == "delivered"
                    else False,
                }
                return f"<final_output>{json.dumps(answer)}</final_output>"
            return fmt.render_calls([state["last"]])

        return policy
