"""A user simulated by a model behind any OpenAI-compatible ``/v1/chat/completions`` endpoint.

:class:`ModelUser` plays the user of :mod:`mtrl_gym.users` with plain HTTP (``urllib``; no SDK):
the model gets the user's instructions as its system message and the conversation with roles
flipped (the agent's messages are ``user`` turns to it, its own replies ``assistant`` turns). It
ends the conversation by writing ``stop_marker``, which is removed from the text.

Reproducibility: every request carries a ``seed`` (fixed, or drawn per episode from the
environment's generator, so ``reset(seed=s)`` fixes it) and the temperature (default 0). A model
user is ``reproducible`` only at temperature 0, and even then only as far as the server is
deterministic; to pin one for good, record it with :class:`~mtrl_gym.users.UserRecorder` and
replay the recording. Each reply's ``log`` (model, seed, temperature, finish reason, usage) lands
in ``info["user"]["log"]``; timings and response ids are left out so ``info`` stays deterministic.

Any failure of the endpoint (connection, HTTP status, timeout, a reply without text) raises
:class:`UserInfraError`: the environment ends the episode as ``infra_error``, never the agent's
fault. Keep the agent's messages within the model's context with ``TextEnv``'s
``max_action_chars`` / ``max_episode_chars``: a request the server rejects as too long is
reported as an endpoint failure too.

Non-goals: streaming, tool use by the user model, retries (a serving layer's job).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mtrl_gym.tools import ToolInfraError
from mtrl_gym.types import JSON, Task
from mtrl_gym.users import Conversation, UserReply

STOP_HINT = (
    "You are the user in this conversation; the assistant is a support agent. Reply with the "
    "user's next message only. When your request is resolved or you want to stop, end your "
    "message with {marker}."
)


class UserInfraError(ToolInfraError):
    """The user simulator's endpoint failed: an infrastructure failure, not the agent's."""


class ModelUser:
    """A user played by a chat model over HTTP.

    Args:
        base_url: The API root, e.g. ``"http://localhost:8000/v1"``; requests go to
            ``{base_url}/chat/completions``.
        model: The model name sent with every request.
        instructions: The user's instructions (who they are, what they want and know): a string,
            a function of the task, or ``None`` for ``task.metadata["user_instructions"]``.
        temperature: Sampling temperature (0 for reproducible users).
        seed: Fixed request seed, or ``None`` to draw one per episode from the env's generator.
        max_tokens: Cap on the reply's tokens, or ``None`` for the server's default.
        api_key: Sent as ``Authorization: Bearer <key>`` when given.
        timeout_s: Wall-clock limit of one request.
        stop_marker: Text by which the model ends the conversation.
        greeting: The agent's greeting placed before the user's opening message, since chat
            models expect the first turn to be the other side's.
        extra_body: More request fields (``top_p``, ``stop``, ...), merged into every request.
    """

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        instructions: str | Callable[[Task], str] | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        max_tokens: int | None = 512,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        stop_marker: str = "###STOP###",
        greeting: str = "Hi! How can I help you today?",
        extra_body: Mapping[str, JSON] | None = None,
    ):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not stop_marker:
            raise ValueError("stop_marker must be non-empty")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.instructions = model, instructions
        self.temperature, self.seed, self.max_tokens = temperature, seed, max_tokens
        self.api_key, self.timeout_s = api_key, timeout_s
        self.stop_marker, self.greeting = stop_marker, greeting
        self.extra_body = dict(extra_body or {})

    @property
    def reproducible(self) -> bool:
        """Greedy sampling with a seed: the same conversation gets the same reply."""
        return self.temperature == 0

    def system_prompt(self, task: Task) -> str:
        """The model's system message for ``task``: its instructions and how to stop."""
        if callable(self.instructions):
            text = self.instructions(task)
        elif self.instructions is not None:
            text = self.instructions
        else:
            text = task.metadata.get("user_instructions")
            if not isinstance(text, str):
                raise ValueError(
                    f"task {task.id!r} has no metadata['user_instructions']; "
                    "pass ModelUser(instructions=...)"
                )
        return f"{text}\n\n{STOP_HINT.format(marker=self.stop_marker)}"

    def start(self, task: Task, rng: np.random.Generator) -> _ModelConversation:
        """Starts one episode: fixes its system prompt and request seed."""
        seed = self.seed if self.seed is not None else int(rng.integers(2**31 - 1))
        return _ModelConversation(self, self.system_prompt(task), seed)

    def request(self, messages: list[dict[str, str]], seed: int) -> dict[str, Any]:
        """The chat-completions request body."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "seed": seed,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        return body

    def post(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Sends one request; any failure is a :class:`UserInfraError`."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode("utf-8")  # ASCII escapes: any str encodes
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read(500).decode("utf-8", "replace")
            raise UserInfraError(f"user endpoint {self.url} answered {e.code}: {detail}") from e
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise UserInfraError(f"user endpoint {self.url} unreachable: {e}") from e
        except ValueError as e:  # undecodable or non-JSON body
            raise UserInfraError(f"user endpoint {self.url} sent invalid JSON: {e}") from e
        if not isinstance(payload, dict):
            raise UserInfraError(f"user endpoint {self.url} sent {type(payload).__name__}")
        return payload


class _ModelConversation:
    def __init__(self, user: ModelUser, system: str, seed: int):
        self.user, self.system, self.seed = user, system, seed

    def messages(self, conversation: Conversation) -> list[dict[str, str]]:
        """The request's messages: system, greeting, then the conversation with roles flipped."""
        flip = {"user": "assistant", "assistant": "user"}
        out = [{"role": "system", "content": self.system}]
        out.append({"role": "user", "content": self.user.greeting})
        out += [{"role": flip[m["role"]], "content": m["content"]} for m in conversation]
        return out

    def reply(self, conversation: Conversation) -> UserReply:
        user = self.user
        body = user.request(self.messages(conversation), self.seed)
        payload = user.post(body)
        try:
            choice = payload["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            detail = f"user endpoint reply has no choices[0].message.content: {e!r}"
            raise UserInfraError(detail) from e
        if not isinstance(content, str):
            raise UserInfraError(f"user endpoint reply content is {type(content).__name__}")
        done = user.stop_marker in content
        text = content.replace(user.stop_marker, "").strip() if done else content.strip()
        log: dict[str, JSON] = {
            "model": user.model,
            "seed": self.seed,
            "temperature": user.temperature,
            "messages": len(body["messages"]),
            "finish_reason": choice.get("finish_reason") if isinstance(choice, dict) else None,
        }
        if isinstance(payload.get("usage"), dict):
            log["usage"] = payload["usage"]
        return UserReply(text, done, log)
