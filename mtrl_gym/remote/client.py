"""Clients: :class:`RemoteEnv`, a Gymnasium environment served elsewhere, and remote tools.

:class:`RemoteEnv` is an ordinary ``gymnasium.Env`` whose ``reset``/``step`` go over one WebSocket
session to a :mod:`mtrl_gym.remote` server, and whose ``astep`` lets the episode runner await the
network instead of blocking a thread. Results arrive exactly as the served environment returned
them (observation, reward, ``terminated``, ``truncated``, ``info`` with its ``status``).

When the network or the server fails mid-episode, ``step`` does not raise: it returns the result
:class:`~mtrl_gym.TextEnv` gives an infrastructure failure (status ``infra_error``, or ``timeout``
when no reply came in time; ``truncated=True``; reward 0.0), which the trainer excludes. The next
``reset`` opens a new session, retrying while the server restarts or is busy (429).

:func:`remote_tools` is the tools-only mode: a local :class:`~mtrl_gym.TextEnv` runs the episode
loop and calls tools a user serves from their own service, one tool session per episode.

Non-goals: rendering (``render`` returns ``None``) and non-JSON observations.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import gymnasium as gym

from mtrl_gym.remote.connection import (
    Link,
    RemoteConnectionError,
    RemoteRequestError,
    base_url,
    fetch_json,
    run_async,
    run_sync,
    submit,
)
from mtrl_gym.remote.protocol import ProtocolError, failure_step, read_step_reply
from mtrl_gym.resources import EpisodeResources
from mtrl_gym.spaces import TextSpace
from mtrl_gym.tools import Tool, ToolError, ToolInfraError
from mtrl_gym.types import Status

TOKEN_ENV_VAR = "MTRL_REMOTE_TOKEN"
StepResult = tuple[Any, float, bool, bool, dict[str, Any]]


class RemoteEnv(gym.Env):
    """An environment served by ``python -m mtrl_gym.remote serve`` (or :func:`serve`).

    Args:
        url: The server, ``http://host:port`` (``ws://`` also accepted).
        token: Bearer token; default: the ``MTRL_REMOTE_TOKEN`` environment variable.
        connect_timeout_s: Limit on opening one connection.
        reset_timeout_s: How long ``reset`` keeps retrying an unreachable or busy server before
            it raises :class:`RemoteConnectionError` / :class:`RemoteRequestError`.
        step_timeout_s: A step without a reply after this long ends the episode as ``timeout``.
        max_message_bytes: Largest reply accepted (observations can be large).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        connect_timeout_s: float = 10.0,
        reset_timeout_s: float = 60.0,
        step_timeout_s: float | None = 300.0,
        max_message_bytes: int = 64 << 20,
    ):
        self.url = base_url(url)
        self.token = token if token is not None else os.environ.get(TOKEN_ENV_VAR)
        self.connect_timeout_s = connect_timeout_s
        self.reset_timeout_s = reset_timeout_s
        self.step_timeout_s = step_timeout_s
        self.max_message_bytes = max_message_bytes
        self.spec_info: dict[str, Any] = run_sync(self._retrying(self._fetch_spec))
        env = self.spec_info.get("env") or {}
        if self.spec_info.get("kind") != "env":
            raise ValueError(f"{self.url} serves tools, not an environment: use RemoteTools")
        # Trainers refuse evaluation-only environments; the flag must survive the network.
        self.eval_only = bool(env.get("eval_only", False))
        self.eval_only_reason = str(env.get("eval_only_reason", ""))
        self.metadata = {**dict(env.get("metadata") or {}), "render_modes": []}
        max_chars = env.get("max_action_chars")
        self.action_space = TextSpace(max_chars if isinstance(max_chars, int) else 1_000_000)
        self.observation_space = TextSpace()
        self._link: Link | None = None
        self._episode: int | None = None
        self._active = False
        self._turn = 0
        self._counts: dict[str, int] | None = None

    def __repr__(self) -> str:
        return f"RemoteEnv({self.url!r}, env={self.spec_info.get('env', {}).get('id')!r})"

    # ---- Gymnasium API -------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Starts an episode on the server (reconnecting first if the connection was lost)."""
        super().reset(seed=seed)
        return run_sync(self._reset_io(seed, options))

    async def areset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Async :meth:`reset`."""
        super().reset(seed=seed)
        return await run_async(self._reset_io(seed, options))

    def step(self, action: Any) -> StepResult:
        """Sends one action; a lost connection or server yields an ``infra_error`` result."""
        self._check_active()
        return run_sync(self._step_io(action))

    async def astep(self, action: Any) -> StepResult:
        """Async :meth:`step` (the episode runner uses it)."""
        self._check_active()
        return await run_async(self._step_io(action))

    def close(self) -> None:
        """Closes the session; the server closes the environment (does not wait for it)."""
        self._active = False
        link, self._link = self._link, None
        if link is not None:
            submit(link.close())
        super().close()

    # ---- internals (run on the I/O loop) ------------------------------------------------------

    def _check_active(self) -> None:
        if not self._active:
            raise RuntimeError("the episode is over: call reset() before step()")

    async def _fetch_spec(self) -> dict[str, Any]:
        spec = await fetch_json(f"{self.url}/spec", self.token, self.connect_timeout_s)
        if not isinstance(spec, dict):
            raise RemoteConnectionError(f"{self.url}/spec is not a JSON object")
        return spec

    async def _retrying(self, attempt: Any) -> Any:
        """Runs ``attempt()`` until it succeeds, retrying connection failures and 429/503."""
        deadline = time.monotonic() + self.reset_timeout_s
        delay = 0.05
        while True:
            try:
                return await attempt()
            except (RemoteConnectionError, RemoteRequestError) as e:
                retry = isinstance(e, RemoteConnectionError) or e.retryable
                if not retry or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _reset_io(
        self, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[Any, dict[str, Any]]:
        self._active = False

        async def attempt() -> dict[str, Any]:
            if self._link is None or not self._link.alive:
                self._link = await Link.open(
                    self.url, self.token, self.connect_timeout_s, self.max_message_bytes
                )
            frame = {"op": "reset", "seed": seed, "options": options}
            try:
                return await self._link.request(frame, self.step_timeout_s)
            except TimeoutError:
                raise RemoteConnectionError("the server did not answer the reset in time") from None

        reply = await self._retrying(attempt)
        if reply.get("op") != "reset" or not isinstance(reply.get("info"), dict):
            raise RemoteConnectionError(f"malformed reset reply: {reply!r:.200}")
        self._episode, self._active, self._turn = reply.get("episode"), True, 0
        self._counts = None
        return reply.get("observation"), reply["info"]

    async def _step_io(self, action: Any) -> StepResult:
        assert self._link is not None
        self._turn += 1
        try:
            reply = await self._link.request({"op": "step", "action": action}, self.step_timeout_s)
            if reply.get("op") != "step" or reply.get("episode") != self._episode:
                await self._link.close()
                raise RemoteConnectionError(f"reply belongs to another episode: {reply!r:.200}")
            result = read_step_reply(reply)
        except TimeoutError:
            return self._fail(Status.TIMEOUT, f"no reply within {self.step_timeout_s} s")
        except (RemoteConnectionError, ProtocolError) as e:
            return self._fail(Status.INFRA_ERROR, f"{type(e).__name__}: {e}")
        except RemoteRequestError as e:
            if e.code >= 500:  # the environment itself failed on the server
                return self._fail(Status.INFRA_ERROR, f"{type(e).__name__}: {e}")
            self._active = False
            raise
        info = result[4]
        if isinstance(info.get("turn"), int):
            self._turn = info["turn"]
        if isinstance(info.get("counts"), dict):
            self._counts = info["counts"]
        if result[2] or result[3]:
            self._active = False
        return result

    def _fail(self, status: Status, error: str) -> StepResult:
        self._active = False
        link, self._link = self._link, None
        if link is not None:
            submit(link.close())
        return failure_step(status, error, turn=self._turn, counts=self._counts)


def make_remote(url: str, *, token: str | None = None, **kwargs: Any) -> RemoteEnv:
    """A ``gym.make``-compatible entry point: ``gym.register(id, entry_point=make_remote)``."""
    return RemoteEnv(url, token=token, **kwargs)


class ToolSession:
    """One tool session: the server's tools as local :class:`~mtrl_gym.Tool` objects.

    Calls go over the session's WebSocket. The agent's mistakes (``ToolError`` on the server,
    arguments the schema rejects) raise :class:`~mtrl_gym.ToolError`; anything else (the
    network, the server, the tool's own infrastructure) raises
    :class:`~mtrl_gym.ToolInfraError`, which ends the episode as ``infra_error``.
    """

    def __init__(self, link: Link, schemas: list[dict[str, Any]], call_timeout_s: float | None):
        self._link = link
        self._timeout = call_timeout_s
        self.tools: tuple[Tool, ...] = tuple(self._tool(schema) for schema in schemas)

    def _tool(self, schema: dict[str, Any]) -> Tool:
        name = schema.get("function", schema)["name"]

        async def call(**arguments: Any) -> str:
            return await run_async(self._call(name, arguments))

        return Tool.from_openai(schema, call)

    async def _call(self, name: str, arguments: dict[str, Any]) -> str:
        frame = {"op": "call", "name": name, "arguments": arguments}
        try:
            reply = await self._link.request(frame, self._timeout)
        except (RemoteConnectionError, RemoteRequestError, TimeoutError) as e:
            raise ToolInfraError(f"remote tool {name}: {type(e).__name__}: {e}") from None
        outcome = reply.get("outcome")
        if outcome == "result" and isinstance(reply.get("value"), str):
            return reply["value"]
        if outcome == "error":
            raise ToolError(str(reply.get("message")))
        raise ToolInfraError(f"remote tool {name} failed: {reply.get('message', reply)!r:.500}")

    def close(self) -> None:
        """Ends the session (fire and forget)."""
        submit(self._link.close())


class RemoteTools:
    """A tools-only server (``serve(tools=...)``): its schemas, and sessions to call them.

    Args:
        url: The server, ``http://host:port``.
        token: Bearer token; default: the ``MTRL_REMOTE_TOKEN`` environment variable.
        connect_timeout_s: Limit on opening one connection.
        call_timeout_s: Limit on one call before it fails as an infrastructure error.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        connect_timeout_s: float = 10.0,
        call_timeout_s: float | None = 300.0,
    ):
        self.url = base_url(url)
        self.token = token if token is not None else os.environ.get(TOKEN_ENV_VAR)
        self.connect_timeout_s = connect_timeout_s
        self.call_timeout_s = call_timeout_s
        spec = run_sync(fetch_json(f"{self.url}/spec", self.token, connect_timeout_s))
        if not isinstance(spec, dict) or spec.get("kind") != "tools":
            raise ValueError(f"{self.url} does not serve tools: use RemoteEnv for environments")
        self.schemas: list[dict[str, Any]] = list(spec["tools"])

    def open(self) -> ToolSession:
        """Opens a new tool session (its own per-session tool state on the server)."""
        return run_sync(self._open())

    async def _open(self) -> ToolSession:
        link = await Link.open(self.url, self.token, self.connect_timeout_s, 64 << 20)
        return ToolSession(link, self.schemas, self.call_timeout_s)


def remote_tools(server: RemoteTools, resources: EpisodeResources) -> list[Tool]:
    """The tools of a new session, closed with the episode's resources (for ``make_tools``)."""
    session = server.open()
    resources.on_release(session.close)
    return list(session.tools)
