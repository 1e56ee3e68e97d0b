"""Plain data shared by environments, tools, formats and the episode runner.

Everything here is JSON-friendly (str, int, float, bool, None, lists, dicts) so that episodes can
be logged, compared for reproducibility and shipped to the learner without pickling. Non-goals:
token ids and log-probs (the learner's trajectory record lives in ``mtrl_jax``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any

JSON = Any  # A value json.dumps accepts; kept as an alias so signatures say what they mean.


class Status(enum.StrEnum):
    """How an episode ended, as the trainer needs to know it.

    ``INFRA_ERROR`` and ``TIMEOUT`` are failures of the environment's infrastructure (a tool raised,
    a sandbox could not start, a tool or the episode ran past its wall-clock limit). The trainer
    excludes such episodes instead of scoring them 0, which would poison a GRPO group.
    """

    # The episode ended by the agent's or the user's choice and is scored: a well-formed final
    # answer, a tool that ends the episode (a transfer, a submit), or the user ending the chat.
    OK = "ok"
    FORMAT_ERROR = "format_error"  # The agent's final answer could not be parsed.
    INFRA_ERROR = "infra_error"  # A tool or sandbox failed for reasons not caused by the agent.
    TIMEOUT = "timeout"  # A tool or the episode exceeded its wall-clock limit.
    TRUNCATED = "truncated"  # Max turns or the token / character budget ran out.


class EndedBy(enum.StrEnum):
    """What ended an episode, for evaluators (``EpisodeSummary.ended_by``) and ``info``.

    Independent of :class:`Status`: a tool that ends the episode is ``ok`` and scored like a final
    answer, while ``LIMIT`` episodes are ``truncated`` (or ``timeout`` for the wall-clock limit).
    """

    ANSWER = "answer"  # The agent's final answer (well-formed or not).
    TOOL = "tool"  # A tool ended it (the last entry of ``tool_calls`` is that call).
    USER = "user"  # The user simulator ended the conversation.
    LIMIT = "limit"  # Max turns, the character or token budget, or the episode's time limit.
    FAILURE = "failure"  # A tool's or the user simulator's infrastructure failed.


class Role(enum.StrEnum):
    """Roles of messages the environment emits (the agent's own turns are ``assistant``)."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True, kw_only=True)
class ParsedCall:
    """One tool call as a tool-call format parsed it from assistant text.

    Attributes:
        name: Tool name as written by the agent (may be unknown to the environment).
        arguments: Decoded arguments; ``None`` when they could not be decoded.
        raw: The exact text span the call came from, for error messages.
        error: Why the call is malformed (bad JSON, missing name, ...), or ``None``.
    """

    name: str | None
    arguments: dict[str, JSON] | None
    raw: str
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class ParseResult:
    """What a tool-call format found in one assistant message.

    Attributes:
        content: The assistant text with tool-call markup removed (reasoning, prose).
        calls: Calls in the order they appear, malformed ones included (with ``error`` set).
    """

    content: str
    calls: tuple[ParsedCall, ...] = ()


@dataclass(kw_only=True)
class ToolCallRecord:
    """One executed (or rejected) tool call, as reported in ``info["tool_calls"]``."""

    id: str
    name: str | None
    arguments: dict[str, JSON] | None
    result: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, JSON]:
        """Returns a fresh JSON-friendly dict (Gymnasium checks that infos share no objects)."""
        return {
            "id": self.id,
            "name": self.name,
            "arguments": _copy_json(self.arguments),
            "result": self.result,
            "error": self.error,
        }


@dataclass(frozen=True)
class EndEpisode:
    """Returned by a tool to end the episode after this call (a transfer to a human, a submit).

    The episode terminates with status ``ok`` and is graded like a final answer: it was the
    agent's choice to call the tool. ``result`` is what the agent reads as the call's result;
    ``answer``, when not ``None``, is the final answer the call commits to (e.g. a submit tool's
    validated arguments), seen by rewards and evaluators as ``EpisodeSummary.final_answer``.
    Calls after this one in the same message do not run. A tool that always ends the episode can
    instead be declared with ``Tool(..., ends_episode=True)``; its return value is the result.

    >>> EndEpisode("Transferred to a human agent.")
    EndEpisode(result='Transferred to a human agent.', answer=None)
    """

    result: JSON = ""
    answer: JSON = None


@dataclass(frozen=True, kw_only=True)
class Task:
    """One task instance an environment can present.

    Attributes:
        id: Stable identifier, unique within the environment's split.
        prompt: The user message that states the task.
        system: Optional system message (instructions, procedure text).
        answer: Hidden ground truth used by rewards and evaluators; never shown to the agent.
        metadata: Free-form extras for tools and evaluators (JSON-friendly).
    """

    id: str
    prompt: str
    system: str | None = None
    answer: JSON = None
    metadata: dict[str, JSON] = field(default_factory=dict)


def message(role: Role | str, content: str, **extra: JSON) -> dict[str, JSON]:
    """Builds a chat message dict in the OpenAI / transformers chat-template layout.

    >>> message("tool", "42", tool_call_id="call_0_0", name="add")
    {'role': 'tool', 'content': '42', 'tool_call_id': 'call_0_0', 'name': 'add'}
    """
    out: dict[str, JSON] = {"role": str(role), "content": content}
    out.update(extra)
    return out


def _copy_json(value: JSON) -> JSON:
    """Deep-copies a JSON-like value (faster than ``copy.deepcopy`` for plain data)."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_json(v) for v in value]
    return value


copy_json = _copy_json


# Checked on every tool call and answer: one regex scan in C, not a Python loop per character.
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: JSON, where: str = "") -> str | None:
    r"""Says where a JSON value holds text that is not valid Unicode, or ``None`` if it is clean.

    ``json.loads`` turns the six ASCII characters ``\ud800`` into a lone UTF-16 surrogate: a
    Python ``str`` that cannot be encoded as UTF-8, so it breaks whatever writes it to a file, a
    database or a socket. Agents can write such escapes, so environments check decoded arguments
    and answers with this function and show the problem to the agent as its own mistake.

    Args:
        value: A decoded JSON value (keys are checked too).
        where: Path prefix for the message (e.g. ``"argument 'query'"``).

    Returns:
        A message naming the place and the code point, or ``None``.

    >>> text_problem({"q": "ok", "bad": ["x", "a\ud800"]})
    "'bad[1]' holds a lone surrogate \\ud800 at position 1, which is not valid Unicode text"
    >>> text_problem({"q": "caf\u00e9"}) is None
    True
    """
    if isinstance(value, str):
        # Well-formed pairs never survive json.loads as two code units, so any surrogate code
        # point left in a str is unpaired.
        found = _SURROGATE.search(value)
        if found is None:
            return None
        label = f"'{where}'" if where else "the text"
        return (
            f"{label} holds a lone surrogate \\u{ord(found.group()):04x} at position "
            f"{found.start()}, which is not valid Unicode text"
        )
    if isinstance(value, dict):
        for k, v in value.items():
            key = escape_surrogates(str(k))  # the message itself must stay encodable
            problem = text_problem(str(k), f"{where}.{key}" if where else key)
            if problem is None:
                problem = text_problem(v, f"{where}.{key}" if where else key)
            if problem is not None:
                return problem
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            problem = text_problem(v, f"{where}[{i}]")
            if problem is not None:
                return problem
    return None


def escape_surrogates(value: JSON) -> JSON:
    r"""Returns ``value`` with every lone surrogate written back as its six-character escape.

    Records of what the agent wrote keep the information (``"\ud800"`` becomes the text
    ``\ud800``, as the agent typed it) and stay encodable as UTF-8 for logs, traces and the
    learner. Clean values come back equal (strings are returned unchanged).

    >>> escape_surrogates({"k": ["a\ud800", 1]})
    {'k': ['a\\ud800', 1]}
    """
    if isinstance(value, str):
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    if isinstance(value, dict):
        return {escape_surrogates(k): escape_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [escape_surrogates(v) for v in value]
    return value
