"""The remote server: an environment or plain tools behind HTTP and WebSocket sessions (aiohttp).

Endpoints (JSON bodies, the frames of :mod:`mtrl_gym.remote.protocol`):

- ``GET /health``: liveness, no authentication, no details;
- ``GET /spec``: server version, protocol, environment metadata or tool schemas, limits;
- ``GET /ws``: a WebSocket session, the low-overhead path; one session per connection, closed
  (with its environment) when the connection closes;
- ``POST /sessions``, ``POST /sessions/{id}/{reset|step|call|close}``, ``DELETE /sessions/{id}``:
  the same operations as plain HTTP, for clients without WebSockets.

Security: the server binds 127.0.0.1 unless told otherwise and refuses to bind any other address
without a bearer token (compared in constant time); bodies and frames are size-limited; every bad
request gets a 4xx with a message; a session is reachable only through its own WebSocket or its
unguessable id. Non-goals: TLS (terminate it in front, e.g. at the ingress) and multi-process
serving (run several servers behind a load balancer).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mtrl_gym.remote._deps import require_aiohttp
from mtrl_gym.remote.protocol import ProtocolError, decode, encode, error_reply, parse_request
from mtrl_gym.remote.sessions import (
    EnvBackend,
    Session,
    SessionManager,
    ToolsBackend,
    resolve_env_factory,
)
from mtrl_gym.tools import Tool

web = require_aiohttp().web
_PayloadError = require_aiohttp().web_protocol.RequestPayloadError
log = logging.getLogger(__name__)
_MANAGER = web.AppKey("manager", SessionManager)
_OPEN_PATHS = frozenset({"/health"})
WS_IDLE_CLOSE = 4408  # application close code: the session expired


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How the server listens and what it allows.

    Attributes:
        host: Address to bind; anything but loopback requires ``token``.
        port: TCP port (0: any free port, reported by :class:`BackgroundServer`).
        token: Bearer token every request but ``/health`` must carry, or ``None`` (loopback only).
        max_sessions: Open sessions at once; more are refused with 429.
        idle_ttl_s: Seconds without a request after which a session and its environment close.
        max_request_bytes: Largest HTTP body or WebSocket frame accepted (413 / close 1009).
        threads: Worker threads running environment and tool calls.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_sessions: int = 256
    idle_ttl_s: float = 900.0
    max_request_bytes: int = 1 << 20
    threads: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("token must be at least 16 characters (use secrets.token_urlsafe())")
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"refusing to bind {self.host!r} without a token: anyone who can reach it could "
                "drive its environments; pass token= (or bind 127.0.0.1)"
            )
        for name in ("max_sessions", "max_request_bytes", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.idle_ttl_s <= 0:
            raise ValueError(f"idle_ttl_s must be > 0, got {self.idle_ttl_s}")


def _json(status: int, payload: Any) -> Any:
    return web.Response(status=status, text=encode(payload), content_type="application/json")


def _error(status: int, message: str) -> Any:
    response = _json(status, error_reply(None, status, message))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mtrl"'
    return response


def _authorized(header: str, token: str) -> bool:
    scheme, _, credentials = header.partition(" ")
    given = credentials.strip().encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, token.encode())


def create_app(backend: EnvBackend | ToolsBackend, config: ServerConfig) -> Any:
    """The aiohttp application serving ``backend`` under ``config``'s limits."""
    manager = SessionManager(
        backend,
        max_sessions=config.max_sessions,
        idle_ttl_s=config.idle_ttl_s,
        threads=config.threads,
    )

    @web.middleware
    async def guard(request: Any, handler: Callable[[Any], Any]) -> Any:
        # Authentication first, then every failure becomes a JSON 4xx (or a logged 500 for bugs).
        protected = config.token is not None and request.path not in _OPEN_PATHS
        if protected and not _authorized(request.headers.get("Authorization", ""), config.token):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        try:
            return await handler(request)
        except ProtocolError as e:
            return _error(e.code, e.message)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _error(e.status, e.text or e.reason)
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            return _error(500, "internal server error")

    async def health(request: Any) -> Any:
        return _json(200, {"status": "ok"})

    async def spec(request: Any) -> Any:
        return _json(200, manager.spec())

    async def open_session(request: Any) -> Any:
        return _json(201, {"session_id": manager.open().id})

    async def delete_session(request: Any) -> Any:
        await manager.close(manager.get(request.match_info["session_id"]))
        return _json(200, {"ok": True})

    async def session_op(request: Any) -> Any:
        session = manager.get(request.match_info["session_id"])
        op = request.match_info["op"]
        if op not in ("reset", "step", "call", "close"):
            raise ProtocolError(404, f"unknown operation {op!r}")
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise ProtocolError(415, "compressed request bodies are not accepted")
        try:
            body = await request.read()
        except _PayloadError as e:
            raise ProtocolError(400, f"cannot read the request body: {e}") from None
        frame = decode(body) if body.strip() else {}
        status, text = await manager.handle(session, parse_request(frame, default_op=op))
        return web.Response(status=status, text=text, content_type="application/json")

    async def websocket(request: Any) -> Any:
        ws = web.WebSocketResponse(
            max_msg_size=config.max_request_bytes, compress=False, heartbeat=30.0
        )
        if not ws.can_prepare(request).ok:
            raise ProtocolError(400, "GET /ws needs a WebSocket upgrade")
        session = manager.open()
        try:
            await ws.prepare(request)
            session.ws = ws
            session.on_expire = lambda: asyncio.ensure_future(
                ws.close(code=WS_IDLE_CLOSE, message=b"session idle timeout")
            )
            await _serve_frames(manager, session, ws, config.max_request_bytes)
        finally:
            await manager.close(session)
        return ws

    async def start_reaper(app: Any) -> None:
        task = asyncio.create_task(manager.reap_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await manager.close_all()

    async def going_away(app: Any) -> None:
        # Open WebSockets would hold the shutdown for its whole timeout; clients see 1001 and
        # report their episodes as infra_error.
        for session in list(manager.sessions.values()):
            if session.ws is not None:
                await session.ws.close(code=1001, message=b"server shutting down")

    app = web.Application(client_max_size=config.max_request_bytes, middlewares=[guard])
    app.on_shutdown.append(going_away)
    app[_MANAGER] = manager
    app.cleanup_ctx.append(start_reaper)
    app.router.add_get("/health", health)
    app.router.add_get("/spec", spec)
    app.router.add_get("/ws", websocket)
    app.router.add_post("/sessions", open_session)
    app.router.add_delete("/sessions/{session_id}", delete_session)
    app.router.add_post("/sessions/{session_id}/{op}", session_op)
    return app


async def _serve_frames(manager: SessionManager, session: Session, ws: Any, limit: int) -> None:
    """Answers a WebSocket's frames in order until it closes or sends ``close``."""
    aiohttp = require_aiohttp()
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            text, closing = await _answer(manager, session, msg.data)
            await ws.send_str(text)
            if closing:
                await ws.close()
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_str(encode(error_reply(None, 400, "send JSON in text frames")))
        elif msg.type == aiohttp.WSMsgType.ERROR:
            log.info("closing session WebSocket: %s (frame limit %d bytes)", ws.exception(), limit)
            break


async def _answer(manager: SessionManager, session: Session, data: str) -> tuple[str, bool]:
    rid = None
    try:
        frame = decode(data)
        if isinstance(frame, dict) and type(frame.get("id")) is int:
            rid = frame["id"]
        request = parse_request(frame)
        _, text = await manager.handle(session, request)
        return text, request.op == "close"
    except ProtocolError as e:
        return encode(error_reply(rid, e.code, e.message)), False


def make_backend(
    env: str | Callable[..., Any] | None = None,
    *,
    tools: Sequence[Tool] | Callable[[], Sequence[Tool]] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    name: str | None = None,
) -> EnvBackend | ToolsBackend:
    """The backend for an environment (id, ``module:attr`` or factory) or for tools; one of."""
    if (env is None) == (tools is None):
        raise ValueError("serve either an environment (env=) or tools (tools=), exactly one")
    if tools is not None:
        return ToolsBackend(tools, name=name or "tools")
    label = name or (env if isinstance(env, str) else getattr(env, "__qualname__", repr(env)))
    return EnvBackend(resolve_env_factory(env, **(env_kwargs or {})), name=str(label))


async def _start(app: Any, config: ServerConfig) -> tuple[Any, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def serve(backend: EnvBackend | ToolsBackend, config: ServerConfig = ServerConfig()) -> None:
    """Serves until SIGINT or SIGTERM; prints ``listening on http://host:port`` when ready."""

    async def main() -> None:
        runner, port = await _start(create_app(backend, config), config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"mtrl_gym.remote: listening on http://{config.host}:{port}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


class BackgroundServer:
    """A server on its own thread and event loop, for notebooks, examples and tests.

    Example:
        >>> with BackgroundServer(make_backend("mtrl/Calculator-v0"), ServerConfig(port=0)) as s:
        ...     s.url.startswith("http://127.0.0.1:")
        True
    """

    def __init__(self, backend: EnvBackend | ToolsBackend, config: ServerConfig = ServerConfig()):
        self.config = config
        self.app = create_app(backend, config)
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._runner: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.config.host}:{self.port}"

    @property
    def manager(self) -> SessionManager:
        """The server's sessions (for inspection in tests)."""
        return self.app[_MANAGER]

    def start(self) -> BackgroundServer:
        """Starts serving and returns once the port is bound."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(_start(self.app, self.config), self._loop)
        self._runner, self.port = future.result(timeout=30)
        return self

    def stop(self) -> None:
        """Closes every session and connection, then the loop (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(timeout=30)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
