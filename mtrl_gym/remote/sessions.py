"""Sessions of the remote server: one environment (or tool set) per session, limits, idle expiry.

A :class:`SessionManager` owns every live session. A session's environment is built on its first
``reset`` and only that session's requests reach it: requests of one session run one at a time
(a lock), environment calls run on a thread pool so one slow environment never blocks the others,
and a session idle for longer than its time-to-live is closed with its environment. Session ids
come from :func:`secrets.token_urlsafe` (256 bits), so they cannot be guessed.

Whatever a request's handling raises becomes a :class:`ProtocolError` for that request alone: a
4xx when the request was at fault (bad reset arguments; an action that is not valid Unicode and
that the environment cannot take), otherwise a 5xx, logged with its traceback.

Non-goals: the HTTP and WebSocket layer (``server``) and persistence across restarts (a restart
loses every session; clients report those episodes as ``infra_error``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from mtrl_gym.remote.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    Request,
    encode,
    has_lone_surrogates,
    step_reply,
)
from mtrl_gym.tools import Tool, ToolError, render_result

EnvFactory = Callable[[], gym.Env]
ToolsFactory = Callable[[], Sequence[Tool]]
# Exceptions a reset raises for bad seeds/options from the client (a 400, not a server fault).
_CLIENT_FAULTS = (ValueError, TypeError, KeyError, IndexError)
log = logging.getLogger(__name__)


def resolve_env_factory(env: str | Callable[..., gym.Env], **kwargs: Any) -> EnvFactory:
    """A zero-argument factory making the environment ``env`` with ``kwargs``.

    ``env`` is a registered id (``mtrl/Helpdesk-v0``, made with ``gym.make``), a ``module:attr``
    string naming a callable, or a callable.
    """
    if callable(env):
        return lambda: env(**kwargs)
    if not isinstance(env, str) or not env:
        raise TypeError(f"env must be an environment id, 'module:attr' or a callable, got {env!r}")
    if "/" not in env and ":" in env:
        module, _, attr = env.partition(":")
        target = getattr(importlib.import_module(module), attr)
        return lambda: target(**kwargs)
    if env.startswith("mtrl/"):
        import mtrl_gym  # noqa: F401 - registers the built-in ids before gym.make looks them up
    return lambda: gym.make(env, **kwargs)


def _jsonable(value: Any) -> Any:
    """A JSON copy of metadata, with anything JSON cannot carry written as its ``repr``."""
    return json.loads(json.dumps(value, default=repr))


class EnvBackend:
    """Serves a Gymnasium environment: each session gets its own instance from ``factory``.

    One instance is built (and closed) at construction to describe the environment in ``spec``
    and to fail fast when the factory is broken.
    """

    kind = "env"

    def __init__(self, factory: EnvFactory, *, name: str):
        self.factory = factory
        probe = factory()
        try:
            inner = probe.unwrapped
            self.action_space = probe.action_space
            self.description: dict[str, Any] = {
                "id": name,
                "class": f"{type(inner).__module__}.{type(inner).__qualname__}",
                "metadata": _jsonable(dict(getattr(inner, "metadata", {}) or {})),
                "action_space": repr(probe.action_space),
                "observation_space": repr(probe.observation_space),
                "max_action_chars": getattr(probe.action_space, "max_length", None),
                "eval_only": bool(getattr(inner, "eval_only", False)),
                "eval_only_reason": str(getattr(inner, "eval_only_reason", "")),
            }
        finally:
            probe.close()

    def spec(self) -> dict[str, Any]:
        """What ``GET /spec`` reports; tools are per episode and come in the reset ``info``."""
        return {"kind": self.kind, "env": self.description, "tools": None}


class ToolsBackend:
    """Serves plain tools: each session gets the tools from ``factory`` (or the shared list).

    A factory lets tools keep per-session state (a database handle, a sandbox); a plain list is
    shared by all sessions and must then be stateless.
    """

    kind = "tools"

    def __init__(self, tools: Sequence[Tool] | ToolsFactory, *, name: str):
        self.factory: ToolsFactory = tools if callable(tools) else (lambda: tuple(tools))
        probe = list(self.factory())
        names = [t.name for t in probe]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        if not all(isinstance(t, Tool) for t in probe):
            raise TypeError("tools must be mtrl_gym.Tool objects (use Tool.from_function)")
        self.name = name
        self.schemas = [t.schema for t in probe]

    def spec(self) -> dict[str, Any]:
        """What ``GET /spec`` reports: the tools' OpenAI function schemas."""
        return {"kind": self.kind, "env": {"id": self.name}, "tools": self.schemas}


@dataclass(eq=False)
class Session:
    """One client's private state on the server."""

    id: str
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    env: gym.Env | None = None
    tools: dict[str, Tool] | None = None
    episode: int = 0
    in_episode: bool = False
    busy: bool = False
    closed: bool = False
    on_expire: Callable[[], Any] | None = None  # how to tell the client (close its WebSocket)
    ws: Any = None  # the session's WebSocket, if it has one


class SessionManager:
    """Creates, looks up, runs and expires sessions.

    Args:
        backend: What each session serves.
        max_sessions: Sessions open at once; one more is refused with 429.
        idle_ttl_s: A session without requests for this long is closed with its environment.
        threads: Worker threads for environment and tool calls.
    """

    def __init__(
        self,
        backend: EnvBackend | ToolsBackend,
        *,
        max_sessions: int,
        idle_ttl_s: float,
        threads: int,
    ):
        self.backend = backend
        self.max_sessions = max_sessions
        self.idle_ttl_s = idle_ttl_s
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="mtrl-remote")
        self.sessions: dict[str, Session] = {}
        self.served = {"sessions": 0, "resets": 0, "steps": 0, "calls": 0, "expired": 0}

    def open(self) -> Session:
        """A new session, or a 429 :class:`ProtocolError` when the limit is reached."""
        if len(self.sessions) >= self.max_sessions:
            raise ProtocolError(
                429, f"session limit reached ({self.max_sessions} open); retry after one closes"
            )
        session = Session(id=secrets.token_urlsafe(32), last_used=time.monotonic())
        self.sessions[session.id] = session
        self.served["sessions"] += 1
        return session

    def get(self, session_id: str) -> Session:
        """The live session with this id, or a 404 :class:`ProtocolError`."""
        session = self.sessions.get(session_id)
        if session is None:
            raise ProtocolError(404, "no such session (closed, expired or never opened)")
        return session

    async def close(self, session: Session) -> None:
        """Removes the session and closes its environment (idempotent)."""
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        env, session.env, session.tools = session.env, None, None
        if env is not None:
            await self._run(env.close)

    async def close_all(self) -> None:
        """Closes every session (server shutdown)."""
        for session in list(self.sessions.values()):
            await self.close(session)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def reap_forever(self) -> None:
        """Closes idle sessions; runs as a background task for the server's lifetime."""
        interval = max(0.01, min(1.0, self.idle_ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if not session.busy and now - session.last_used > self.idle_ttl_s:
                    self.served["expired"] += 1
                    if session.on_expire is not None:
                        session.on_expire()
                    await self.close(session)

    def spec(self) -> dict[str, Any]:
        """Metadata for ``GET /spec``."""
        from mtrl_gym import __version__

        return {
            "server": "mtrl_gym.remote",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            **self.backend.spec(),
            "limits": {"max_sessions": self.max_sessions, "idle_ttl_s": self.idle_ttl_s},
            "sessions_open": len(self.sessions),
        }

    async def handle(self, session: Session, request: Request) -> tuple[int, str]:
        """Runs one request of one session; returns an HTTP-like status and the encoded reply."""
        async with session.lock:
            if session.closed:
                raise ProtocolError(404, "no such session (closed, expired or never opened)")
            session.busy = True
            try:
                reply = await self._dispatch(session, request)
            except ProtocolError:
                raise
            except Exception as e:
                # The environment (or tool factory) failed: a server-side fault. The episode's
                # state is unknown, so it ends; the session stays for a new reset.
                session.in_episode = False
                log.exception("op %r of a session failed on the server", request.op)
                raise ProtocolError(
                    500, f"{request.op} failed on the server: {type(e).__name__}: {e}"
                ) from None
            finally:
                session.busy, session.last_used = False, time.monotonic()
        try:
            return 200, encode(reply)
        except (TypeError, ValueError, RecursionError) as e:
            session.in_episode = False
            raise ProtocolError(
                500, f"the environment returned a value JSON cannot carry: {e}"
            ) from None

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    async def _dispatch(self, session: Session, request: Request) -> dict[str, Any]:
        op = request.op
        if op == "close":
            await self.close(session)
            return {"id": request.id, "ok": True, "op": "close"}
        if (op == "call") != (self.backend.kind == "tools"):
            what = "tools (op 'call')" if self.backend.kind == "tools" else "an environment"
            raise ProtocolError(400, f"op {op!r} is not served here: this server serves {what}")
        if op == "reset":
            return await self._reset(session, request)
        if op == "step":
            return await self._step(session, request)
        return await self._call(session, request)

    async def _reset(self, session: Session, request: Request) -> dict[str, Any]:
        assert isinstance(self.backend, EnvBackend)
        if session.env is None:
            session.env = await self._run(self.backend.factory)
        session.in_episode = False
        try:
            obs, info = await self._run(
                session.env.reset, seed=request.seed, options=request.options
            )
        except _CLIENT_FAULTS as e:
            raise ProtocolError(400, f"reset failed: {type(e).__name__}: {e}") from None
        self.served["resets"] += 1
        session.episode += 1
        session.in_episode = True
        reply = {"id": request.id, "ok": True, "op": "reset", "episode": session.episode}
        reply.update(observation=obs, info=info)
        return reply

    async def _step(self, session: Session, request: Request) -> dict[str, Any]:
        if session.env is None or not session.in_episode:
            raise ProtocolError(409, "no episode in progress: send a reset first")
        if not session.env.action_space.contains(request.action):
            raise ProtocolError(
                422, f"the action is not in the action space {session.env.action_space!r}"
            )
        try:
            result = await self._run(session.env.step, request.action)
        except UnicodeError as e:
            if not has_lone_surrogates(request.action):
                raise  # the environment's own bug: a 500 (see handle)
            # The agent's text is at fault, not the server: say so with a 4xx.
            session.in_episode = False
            raise ProtocolError(
                422,
                "the action is not valid Unicode text (it holds a lone surrogate such as "
                f"\\ud800) and the environment cannot take it: {type(e).__name__}: {e}",
            ) from None
        self.served["steps"] += 1
        if result[2] or result[3]:
            session.in_episode = False
        return step_reply(request.id, session.episode, result)

    async def _call(self, session: Session, request: Request) -> dict[str, Any]:
        assert isinstance(self.backend, ToolsBackend) and request.name is not None
        if session.tools is None:
            tools = await self._run(self.backend.factory)
            session.tools = {t.name: t for t in tools}
        tool = session.tools.get(request.name)
        if tool is None:
            raise ProtocolError(404, f"unknown tool {request.name!r}; see GET /spec")
        self.served["calls"] += 1
        base = {"id": request.id, "ok": True, "op": "call"}
        problem = tool.validate(request.arguments)
        if problem is not None:
            return {**base, "outcome": "error", "message": f"invalid arguments: {problem}"}
        arguments = request.arguments or {}
        try:
            if inspect.iscoroutinefunction(tool.fn):
                value = await asyncio.wait_for(tool.fn(**arguments), tool.timeout_s)
            else:
                call = self._run(tool.fn, **arguments)
                value = await asyncio.wait_for(call, tool.timeout_s)
            error = tool.returned_error(value)  # an "Error: ..." string is the agent's mistake
            if error is not None:
                return {**base, "outcome": "error", "message": error}
            return {**base, "outcome": "result", "value": render_result(value)}
        except ToolError as e:
            return {**base, "outcome": "error", "message": str(e)}
        except Exception as e:  # noqa: BLE001 - any other failure is the tool's infrastructure
            return {**base, "outcome": "infra_error", "message": f"{type(e).__name__}: {e}"}
