"""SupportChat: a support chat where the agent must ask the customer, look up, then resolve.

The first environment with a *user*: messages that are neither a tool call nor a final answer go
to a scripted customer (:func:`~mtrl_envs.support_chat.customer.customer_reply`) whose reply is the
next observation. The customer opens with "I need some help with an order" and tells their order
number, email and request only when asked. The agent looks the order up (``lookup_order`` needs
the number *and* the matching email), then either resolves the request with a final answer or,
for a request the policy does not allow, calls ``transfer_to_human``, a tool that ends the episode.

Success needs a successful lookup of the customer's order and the right ending: the right final
answer for requests the policy allows, a transfer for those it does not. A customer who gives up
(three messages they cannot answer) ends the episode unresolved. The user is configurable
(``user=``): a :class:`~mtrl_gym.RecordedUser` or a :class:`~mtrl_gym.ModelUser` (each task
carries ``user_instructions``) can stand in for the scripted customer.

Non-goals: a realistic order system (see Helpdesk) and customers who phrase things freely.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mtrl_envs.support_chat.customer import KINDS, customer_reply, make_task
from mtrl_gym import (
    EndedBy,
    EpisodeResources,
    EpisodeSummary,
    ScriptedUser,
    Status,
    Task,
    TextEnv,
    Tool,
    ToolError,
)
from mtrl_gym.evaluation import field_matches

SPLITS = ("train", "test")
_SPLIT_SEEDS = {"train": 0, "test": 1_000_000}  # disjoint: no scenario is shared between splits
DEFAULT_NUM_TASKS = {"train": 40, "test": 20}  # multiples of len(KINDS)
TRANSFERRED = "Transferred to a human agent; they will contact the customer."


def make_tools(task: Task) -> list[Tool]:
    """The episode's tools over the task's (read-only) order table."""
    orders = {o["order_id"]: o for o in task.metadata["orders"]}

    def lookup_order(order_id: str, email: str) -> dict[str, Any]:
        """Look an order up; the email must be the one on the order.

        Args:
            order_id: The order number, e.g. O-1234.
            email: The email address on the order.
        """
        order = orders.get(order_id.strip())
        if order is None:
            raise ToolError(f"no order {order_id!r}")
        if email.strip().lower() != order["email"]:
            raise ToolError(f"the email does not match order {order['order_id']}")
        return {k: v for k, v in order.items() if k != "email"}

    def transfer_to_human(reason: str) -> str:
        """Hand the conversation to a human agent; use it for requests the policy does not allow.

        Args:
            reason: Why the request needs a human.
        """
        return TRANSFERRED

    return [
        Tool.from_function(lookup_order),
        Tool.from_function(transfer_to_human, ends_episode=True),
    ]


@dataclass(frozen=True)
class Verdict:
    """How a finished episode compares with its task.

    Attributes:
        looked_up: A successful ``lookup_order`` of the customer's order.
        ended_right: The right ending: a transfer for a transfer task, else a final answer.
        fields: Per expected answer field, whether the final answer got it right.
    """

    looked_up: bool
    ended_right: bool
    fields: dict[str, bool]

    @property
    def success(self) -> bool:
        """Looked up, ended the right way, every field right."""
        return self.looked_up and self.ended_right and all(self.fields.values())


def judge(episode: EpisodeSummary) -> Verdict:
    """Grades an episode from its tool calls, how it ended and its final answer."""
    expected = episode.task.answer
    order_id = episode.task.metadata["customer"]["order_id"]
    looked_up = any(
        c.get("name") == "lookup_order"
        and c.get("error") is None
        and json.loads(str(c.get("result")))["order_id"] == order_id
        for c in episode.tool_calls
    )
    if expected["action"] == "transfer":
        ended_right = episode.ended_by is EndedBy.TOOL
        return Verdict(looked_up, ended_right, {"action": ended_right})
    ended_right = episode.ended_by is EndedBy.ANSWER and episode.status is Status.OK
    fields = field_matches(episode.answer_value if ended_right else None, expected)
    return Verdict(looked_up, ended_right, fields)


@dataclass(frozen=True)
class SupportChatReward:
    """1.0 for a successful episode (see :class:`Verdict`), else 0.0."""

    def __call__(self, episode: EpisodeSummary) -> float:
        """Reads the verdict ``grade_episode`` put in ``episode.grade``."""
        return float(episode.grade.success)


@dataclass(frozen=True)
class SupportChatEvaluator:
    """``success`` plus the checks behind it, how the episode ended and the user turns."""

    def __call__(self, episode: EpisodeSummary) -> dict[str, Any]:
        """Reads the verdict ``grade_episode`` put in ``episode.grade``."""
        v: Verdict = episode.grade
        return {
            "success": v.success,
            "looked_up": v.looked_up,
            "ended_right": v.ended_right,
            "fields": v.fields,
            "ended_by": str(episode.ended_by),
            "user_turns": episode.user_turns,
            "status": str(episode.status),
        }


class SupportChatEnv(TextEnv):
    """Support chats with a scripted customer, an order lookup and a transfer tool.

    Args:
        split: ``"train"`` or ``"test"``.
        num_tasks: Tasks in the split (default: ``DEFAULT_NUM_TASKS[split]``); tasks are built
            from seeds, kinds rotating with the index.
        **kwargs: Passed to :class:`~mtrl_gym.TextEnv`; ``user`` defaults to the scripted
            customer, ``reward_fn`` / ``evaluator`` to :class:`SupportChatReward` /
            :class:`SupportChatEvaluator`.
    """

    def __init__(self, *, split: str = "train", num_tasks: int | None = None, **kwargs: Any):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        count = DEFAULT_NUM_TASKS[split] if num_tasks is None else num_tasks
        if count < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        kwargs.setdefault("user", ScriptedUser(customer_reply))
        kwargs.setdefault("reward_fn", SupportChatReward())
        kwargs.setdefault("evaluator", SupportChatEvaluator())
        kwargs.setdefault("max_turns", 10)
        super().__init__(**kwargs)
        self.split = split
        seed0 = _SPLIT_SEEDS[split]
        self._tasks = tuple(
            make_task(f"support-{split}-{i:04d}", seed0 + i, KINDS[i % len(KINDS)])
            for i in range(count)
        )

    def tasks(self) -> Sequence[Task]:
        """The split's tasks, in index order."""
        return self._tasks

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        """``lookup_order`` over the task's orders and the ending ``transfer_to_human``."""
        return make_tools(task)

    def grade_episode(self, episode: EpisodeSummary) -> Verdict:
        """The :class:`Verdict` shared by the reward and the evaluator."""
        return judge(episode)

    def oracle_policy(self) -> Callable[[str, dict[str, Any]], str]:
        """Asks for the order and the email, then the request, looks up, then resolves.

        It learns everything from the customer's replies and the lookup, as an agent must.
        """
        fmt = self.format
        state: dict[str, Any] = {}

        def policy(observation: str, info: dict[str, Any]) -> str:
            said = " ".join(m["content"] for m in info.get("messages", []) if m["role"] == "user")
            if "asked" not in state:
                state["asked"] = 1
                return "Hello! Could you give me your order number and the email on the order?"
            if state["asked"] == 1:
                state["asked"] = 2
                state["order_id"] = re.search(r"O-\d+", said).group(0)  # type: ignore[union-attr]
                state["email"] = re.search(r"\S+@\S+\.com", said).group(0)  # type: ignore[union-attr]
                return "Thank you. What can I help you with today?"
            if "request" not in state:
                state["request"] = said
                args = {"order_id": state["order_id"], "email": state["email"]}
                return fmt.render_calls([("lookup_order", args)])
            order = json.loads(info["tool_calls"][0]["result"])
            answer = resolve(state["request"], order)
            if answer is None:
                return fmt.render_calls([("transfer_to_human", {"reason": "outside policy"})])
            return f"<final_output>{json.dumps(answer)}</final_output>"

        return policy


def resolve(request: str, order: dict[str, Any]) -> dict[str, Any] | None:
    """The policy's resolution of a request for an order, or ``None`` for a transfer."""
    base = {"order_id": order["order_id"]}
    if "where is it" in request.lower():
        return {**base, "action": "status", "status": order["status"]}
    if "refund" in request.lower():
        days = order["delivered_days_ago"]
        if order["status"] == "delivered" and days is not None and days <= 30:
            return {**base, "action": "refund", "amount": order["amount"]}
        return None
    if order["status"] == "processing":
        return {**base, "action": "cancel"}
    return None
