"""User simulators: the other side of the conversation, where the agent talks to a user.

When a :class:`~mtrl_gym.TextEnv` has a user (``TextEnv(user=...)``), an assistant message that
holds neither a tool call nor a final answer is a message *to the user*, and the user's reply is
the next observation (a ``user`` message). The user sees only the conversation, as a human
customer would: the task's prompt (its own opening message), the agent's messages to it (tool-call
markup removed) and its own replies; never the system prompt, tool calls or tool results.

A :class:`UserSimulator` is configuration shared by any number of environments and threads; at
every reset it starts a :class:`UserConversation` that holds one episode's state, as
:meth:`~mtrl_gym.replay.Recording.new_episode` does for recorded tools. Three simulators:

- :class:`ScriptedUser`: a list of replies, or a function of the conversation and the task;
- :class:`RecordedUser`: replies replayed from a :class:`UserRecording` (JSON or JSONL), keyed by
  the agent's message (its :func:`canonical_text`) or by the index of the user turn;
- :class:`~mtrl_gym.user_model.ModelUser`: a model behind an OpenAI-compatible endpoint.

:class:`UserRecorder` records any simulator's replies so that a live (model) user can be pinned
as a recording.

Who is at fault:

- The simulator is the environment's machinery: an exception from ``reply`` (an endpoint that is
  down, a script with a bug) ends the episode as ``infra_error``, excluded from training.
- A recording with no reply for what the agent said is a limitation of the environment, not a
  failure: the recorded user answers with its ``fallback`` reply, the episode goes on and is
  scored, and the step's ``info["user"]["log"]`` says ``{"recorded": False}``. It cannot be
  ``infra_error`` because the agent's own words decide it: a policy would learn to leave the
  script to have its episodes excluded. Evaluate replayed users on episodes that stayed recorded.

Non-goals: choosing what the user knows or wants (the environment's task data), and LLM judges.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mtrl_gym.invocation import TOOL_POOL, InfraFailure
from mtrl_gym.types import JSON, Status, Task, escape_surrogates

Conversation = Sequence[Mapping[str, str]]  # [{"role": "user" | "assistant", "content": ...}]


@dataclass(frozen=True)
class UserReply:
    """One reply of the user.

    Attributes:
        text: What the user says (may be empty when it ends the conversation).
        done: The user ends the conversation: the episode terminates and is graded.
        log: A deterministic, JSON-friendly record of how the reply was made (the endpoint call,
            the recording key), reported as ``info["user"]["log"]``; no timings or request ids.
    """

    text: str
    done: bool = False
    log: Mapping[str, JSON] | None = None


class UserConversation(Protocol):
    """One episode's user: answers the agent's latest message."""

    def reply(self, conversation: Conversation) -> UserReply:
        """Returns the reply to ``conversation``, whose last message is the agent's."""
        ...


class UserSimulator(Protocol):
    """Starts one :class:`UserConversation` per episode.

    Simulators may set ``reproducible = False`` (a model sampled at a positive temperature):
    :func:`~mtrl_gym.check_reproducible` then refuses the environment instead of reporting a
    spurious difference.
    """

    def start(self, task: Task, rng: np.random.Generator) -> UserConversation:
        """Starts the user of one episode of ``task``; ``rng`` comes from the env's seed."""
        ...


def is_reproducible(user: UserSimulator | None) -> bool:
    """Whether ``user`` gives the same replies to the same conversation (``reproducible``)."""
    return bool(getattr(user, "reproducible", True))


def canonical_text(text: str) -> str:
    r"""The key of an agent message in a recording: whitespace runs collapsed, ends stripped.

    >>> canonical_text("  What is\n your   order id? ")
    'What is your order id?'
    """
    return " ".join(text.split())


# ---- the environment's side ----------------------------------------------------------------------


def ask_user(conversation: UserConversation, dialogue: Conversation) -> UserReply | InfraFailure:
    """Asks for the user's reply on this thread; a failing simulator is an infrastructure failure.

    The reply's text is made safe to encode (a lone surrogate from a model is written back as its
    escape): it is the environment's text, and what the learner receives must encode.
    """
    try:
        reply = conversation.reply([dict(m) for m in dialogue])
        if not isinstance(reply, UserReply) or not isinstance(reply.text, str):
            raise TypeError(f"reply() must return a UserReply with str text, got {reply!r}")
        json.dumps(reply.log)  # a log that cannot be logged is the simulator's bug
    except Exception as e:  # noqa: BLE001 - the simulator is the environment's machinery
        return InfraFailure(Status.INFRA_ERROR, f"user simulator failed: {e!r}")
    return UserReply(escape_surrogates(reply.text), reply.done, reply.log)


async def aask_user(
    conversation: UserConversation, dialogue: Conversation
) -> UserReply | InfraFailure:
    """:func:`ask_user` on a worker thread, so a slow user never blocks the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(TOOL_POOL, ask_user, conversation, dialogue)


# ---- scripted -----------------------------------------------------------------------------------

Script = Sequence[str | UserReply] | Callable[[Conversation, Task], str | UserReply]


class ScriptedUser:
    """Replies from a list (the i-th user turn gets the i-th reply) or from a function.

    Args:
        script: A list of replies (``str`` or :class:`UserReply`), or a function
            ``(conversation, task) -> str | UserReply``. A function should derive everything from
            its arguments (count earlier replies in ``conversation`` rather than keep a counter),
            which keeps it reproducible and shareable across environments.
        exhausted: The reply once a list has run out; default: the user ends the conversation.

    >>> convo = ScriptedUser(["O-1", "yes"]).start(Task(id="t", prompt="hi"), None)
    >>> [convo.reply([]).text for _ in range(3)], convo.reply([]).done
    (['O-1', 'yes', ''], True)
    """

    def __init__(self, script: Script, *, exhausted: UserReply | None = None):
        self.script = script if callable(script) else tuple(script)
        self.exhausted = exhausted if exhausted is not None else UserReply("", done=True)

    def start(self, task: Task, rng: np.random.Generator | None) -> _ScriptedConversation:
        """Starts one episode's script."""
        return _ScriptedConversation(self, task)


class _ScriptedConversation:
    def __init__(self, user: ScriptedUser, task: Task):
        self.user, self.task, self.turn = user, task, 0

    def reply(self, conversation: Conversation) -> UserReply:
        script, turn = self.user.script, self.turn
        self.turn += 1
        if callable(script):
            out = script(conversation, self.task)
        else:
            out = script[turn] if turn < len(script) else self.user.exhausted
        return out if isinstance(out, UserReply) else UserReply(str(out))


# ---- recorded -----------------------------------------------------------------------------------

# Key of a recorded reply: (task id or None for every task, "message" or "turn", the key).
_Key = tuple[str | None, str, str | int]


class UserRecording:
    """Recorded user replies, keyed by the agent's message or by the user-turn index.

    One record (a JSON object) is ``{"reply": str, "done": bool (optional), "task_id": str
    (optional: without it the record applies to every task), "message": str | "turn": int}``
    with exactly one of ``message`` (the agent's message, compared by :func:`canonical_text`)
    or ``turn`` (0 for the user's first reply). A message key wins over a turn key.
    """

    def __init__(self) -> None:
        self._replies: dict[_Key, UserReply] = {}

    def __len__(self) -> int:
        return len(self._replies)

    def add(
        self,
        reply: UserReply,
        *,
        message: str | None = None,
        turn: int | None = None,
        task_id: str | None = None,
    ) -> None:
        """Records a reply; the same key twice is an error unless the replies are equal."""
        if (message is None) == (turn is None):
            raise ValueError("give exactly one of 'message' or 'turn'")
        if turn is not None and (not isinstance(turn, int) or isinstance(turn, bool) or turn < 0):
            raise ValueError(f"'turn' must be an int >= 0, got {turn!r}")
        key: _Key = (
            (task_id, "turn", turn)
            if turn is not None
            else (task_id, "message", canonical_text(message or ""))
        )
        known = self._replies.get(key)
        if known is not None and (known.text, known.done) != (reply.text, reply.done):
            raise ValueError(f"conflicting recorded replies for {key}")
        self._replies[key] = UserReply(reply.text, reply.done)

    def lookup(self, task_id: str, message: str, turn: int) -> tuple[UserReply, str] | None:
        """The recorded reply and the kind of key that matched (``"message"`` or ``"turn"``)."""
        text = canonical_text(message)
        for key in (
            (task_id, "message", text),
            (None, "message", text),
            (task_id, "turn", turn),
            (None, "turn", turn),
        ):
            if key in self._replies:
                return self._replies[key], key[1]
        return None

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], where: str = "") -> UserRecording:
        """Builds a recording from record objects (see the class docstring)."""
        rec = cls()
        for i, r in enumerate(records):
            at = f"{where}record {i}" if not where else f"{where}:{i + 1}"
            if not isinstance(r, Mapping) or not isinstance(r.get("reply"), str):
                raise ValueError(f"{at}: each record needs a string 'reply'")
            unknown = set(r) - {"reply", "done", "task_id", "message", "turn"}
            if unknown:
                raise ValueError(f"{at}: unknown fields {sorted(unknown)}")
            done, task_id, message = r.get("done", False), r.get("task_id"), r.get("message")
            if not isinstance(done, bool):
                raise ValueError(f"{at}: 'done' must be a boolean")
            if task_id is not None and not isinstance(task_id, str):
                raise ValueError(f"{at}: 'task_id' must be a string")
            if message is not None and not isinstance(message, str):
                raise ValueError(f"{at}: 'message' must be a string")
            try:
                rec.add(
                    UserReply(r["reply"], done),
                    message=message,
                    turn=r.get("turn"),
                    task_id=task_id,
                )
            except ValueError as e:
                raise ValueError(f"{at}: {e}") from None
        return rec

    @classmethod
    def load(cls, path: str | Path) -> UserRecording:
        """Loads a ``.jsonl`` file (one record a line) or a ``.json`` file (a list of records)."""
        text = Path(path).read_text(encoding="utf-8")
        if str(path).endswith(".jsonl"):
            records = []
            for lineno, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from e
            return cls.from_records(records, str(path))
        records = json.loads(text)
        if not isinstance(records, list):
            raise ValueError(f"{path}: a .json recording must hold a list of records")
        return cls.from_records(records, str(path))


DEFAULT_FALLBACK = "Sorry, I'm not sure what you mean."


class RecordedUser:
    """Replays a :class:`UserRecording`; what it has no reply for gets ``fallback``.

    Args:
        recording: The recorded replies (or a path to load).
        fallback: The reply to a message the recording does not cover (see the module docstring);
            pass ``UserReply("", done=True)`` to end such conversations instead.
    """

    def __init__(self, recording: UserRecording | str | Path, *, fallback: UserReply | None = None):
        self.recording = (
            recording if isinstance(recording, UserRecording) else UserRecording.load(recording)
        )
        self.fallback = fallback if fallback is not None else UserReply(DEFAULT_FALLBACK)

    def start(self, task: Task, rng: np.random.Generator | None) -> _RecordedConversation:
        """Starts one episode's replay (the turn index starts at 0)."""
        return _RecordedConversation(self, task.id)


class _RecordedConversation:
    def __init__(self, user: RecordedUser, task_id: str):
        self.user, self.task_id, self.turn = user, task_id, 0

    def reply(self, conversation: Conversation) -> UserReply:
        turn, self.turn = self.turn, self.turn + 1
        said = conversation[-1]["content"] if conversation else ""
        found = self.user.recording.lookup(self.task_id, said, turn)
        if found is None:
            fb = self.user.fallback
            return UserReply(fb.text, fb.done, {"recorded": False, "turn": turn})
        reply, kind = found
        return UserReply(reply.text, reply.done, {"recorded": True, "key": kind, "turn": turn})


class UserRecorder:
    """Wraps a simulator and records every reply it gives, for replay by :class:`RecordedUser`.

    Records are keyed by the agent's message (``key="message"``) or by the turn (``"turn"``).
    Pinning a model user: play episodes through a recorder, save :meth:`records` as JSONL, and
    train or evaluate against ``RecordedUser(path)``.
    """

    def __init__(self, inner: UserSimulator, *, key: str = "message"):
        if key not in ("message", "turn"):
            raise ValueError(f"key must be 'message' or 'turn', got {key!r}")
        self.inner, self.key = inner, key
        self.reproducible = is_reproducible(inner)
        self._records: list[dict[str, JSON]] = []  # list.append is atomic: safe across threads

    def start(self, task: Task, rng: np.random.Generator) -> UserConversation:
        """Starts the inner simulator's conversation, recording its replies."""
        return _RecorderConversation(self, task.id, self.inner.start(task, rng))

    def records(self) -> list[dict[str, JSON]]:
        """The records so far, in the :class:`UserRecording` format."""
        return [dict(r) for r in self._records]

    def write_jsonl(self, path: str | Path) -> None:
        """Writes :meth:`records` as JSONL (load it with :meth:`UserRecording.load`)."""
        lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in self._records)
        Path(path).write_text("".join(lines), encoding="utf-8")


class _RecorderConversation:
    def __init__(self, recorder: UserRecorder, task_id: str, inner: UserConversation):
        self.recorder, self.task_id, self.inner, self.turn = recorder, task_id, inner, 0

    def reply(self, conversation: Conversation) -> UserReply:
        reply = self.inner.reply(conversation)
        said = conversation[-1]["content"] if conversation else ""
        key: JSON = self.turn if self.recorder.key == "turn" else said
        self.recorder._records.append(
            {
                "task_id": self.task_id,
                self.recorder.key: key,
                "reply": reply.text,
                "done": reply.done,
            }
        )
        self.turn += 1
        return reply
