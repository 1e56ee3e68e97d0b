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
request gets a 4xx with a message (and one log line, :mod:`~mtrl_gym.remote.logs`); a session is
reachable only through its own WebSocket or its unguessable id. Connections that stay silent, send
half a request or idle too long are closed, and one client address holds a bounded number of them
(:mod:`~mtrl_gym.remote.limits`), so a few stuck sockets cannot use up the server's descriptors.

Status codes: a 4xx means the request was bad (the client's or the agent's fault: malformed JSON,
an action the environment cannot take, such as text with a lone surrogate); a 5xx means the server
or its environment failed, and is logged with its traceback. Either answers only the request that
caused it: the server and every other session go on. Replies are JSON with non-ASCII escaped, so
any string an environment returns (lone surrogates included) can be sent.

Non-goals: TLS (terminate it in front, e.g. at the ingress) and multi-process serving (run several
servers behind a load balancer).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mtrl_gym.remote._deps import require_aiohttp
from mtrl_gym.remote.limits import ConnectionLimits, quiet_accept_errors
from mtrl_gym.remote.logs import QuietParseErrors, describe, one_line
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
_LIMITS = web.AppKey("limits", ConnectionLimits)
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
        header_timeout_s: Seconds a connection has to send a complete request head, counted from
            connecting (or, on a kept-alive connection, from the next request's first byte);
            the connection is closed otherwise. A plain-HTTP session operation gets as long
            again for its body (408). Clients are programs, so a few seconds is plenty.
        keepalive_timeout_s: Seconds an HTTP connection may stay open with no request in progress.
            Keep it above the idle timeout of whatever pools connections to the server (aiohttp
            clients: 15 s; nginx upstreams: 60 s), or a pooled connection may be reused just as
            the server closes it. Session WebSockets are not idle in this sense: they end with
            their session (``idle_ttl_s``) or a missed heartbeat.
        max_connections_per_client: Connections one client address may hold at once; one more is
            answered 503 and closed. A trainer holds one WebSocket per session plus a few short
            HTTP connections, so keep it well above ``max_sessions``; behind a proxy every client
            has the proxy's address.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_sessions: int = 256
    idle_ttl_s: float = 900.0
    max_request_bytes: int = 1 << 20
    threads: int = 32
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    max_connections_per_client: int = 1024

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
        for name in ("max_sessions", "max_request_bytes", "threads", "max_connections_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_ttl_s", "header_timeout_s", "keepalive_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def _json(status: int, payload: Any) -> Any:
    return web.Response(status=status, text=encode(payload), content_type="application/json")


def _error(status: int, message: str) -> Any:
    response = _json(status, error_reply(None, status, message))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mtrl"'
    if status == 408:
        response.force_close()  # the rest of a body that stalled is not worth waiting for
    return response


def _refuse(request: Any, status: int, message: str) -> Any:
    """The error reply to ``request``, logged as one line.

    A 5xx's traceback, if any, was logged where it was caught.
    """
    level = logging.INFO if status < 500 else logging.WARNING
    where = describe(request.method, request.path, request.match_info)
    log.log(level, "%d for %s from %s: %s", status, where, request.remote, one_line(message))
    return _error(status, message)


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
    limits = ConnectionLimits(
        header_timeout_s=config.header_timeout_s,
        keepalive_timeout_s=config.keepalive_timeout_s,
        max_per_address=config.max_connections_per_client,
    )

    @web.middleware
    async def guard(request: Any, handler: Callable[[Any], Any]) -> Any:
        # Authentication first, then every failure becomes a JSON 4xx (or a logged 500 for bugs).
        # While a request is handled, no connection timeout may close its connection.
        with limits.request(request.transport):
            protected = config.token is not None and request.path not in _OPEN_PATHS
            authorization = request.headers.get("Authorization", "")
            if protected and not _authorized(authorization, config.token):
                message = "missing or wrong bearer token (Authorization: Bearer <token>)"
                return _refuse(request, 401, message)
            try:
                return await handler(request)
            except ProtocolError as e:
                return _refuse(request, e.code, e.message)
            except web.HTTPException as e:
                if e.status < 400:
                    raise
                return _refuse(request, e.status, e.text or e.reason)
            except Exception:
                where = describe(request.method, request.path, request.match_info)
                log.exception("unexpected error serving %s from %s", where, request.remote)
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
            async with asyncio.timeout(config.header_timeout_s):
                body = await request.read()
        except _PayloadError as e:
            raise ProtocolError(400, f"cannot read the request body: {e}") from None
        except TimeoutError:
            message = f"the request body did not arrive within {config.header_timeout_s:g} s"
            raise ProtocolError(408, message) from None
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
            await _serve_frames(manager, session, ws, config.max_request_bytes, request.remote)
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
    app[_LIMITS] = limits
    app.cleanup_ctx.append(start_reaper)
    app.router.add_get("/health", health)
    app.router.add_get("/spec", spec)
    app.router.add_get("/ws", websocket)
    app.router.add_post("/sessions", open_session)
    app.router.add_delete("/sessions/{session_id}", delete_session)
    app.router.add_post("/sessions/{session_id}/{op}", session_op)
    return app


async def _serve_frames(
    manager: SessionManager, session: Session, ws: Any, limit: int, peer: str | None
) -> None:
    """Answers a WebSocket's frames in order until it closes or sends ``close``."""
    aiohttp = require_aiohttp()
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            text, closing = await _answer(manager, session, msg.data, peer)
            await ws.send_str(text)
            if closing:
                await ws.close()
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_str(encode(error_reply(None, 400, "send JSON in text frames")))
        elif msg.type == aiohttp.WSMsgType.ERROR:
            log.info("closing session WebSocket: %s (frame limit %d bytes)", ws.exception(), limit)
            break


async def _answer(
    manager: SessionManager, session: Session, data: str, peer: str | None
) -> tuple[str, bool]:
    """The reply to one frame; any failure is an error reply to that frame only."""
    rid = None
    try:
        frame = decode(data)
        if isinstance(frame, dict) and type(frame.get("id")) is int:
            rid = frame["id"]
        request = parse_request(frame)
        _, text = await manager.handle(session, request)
        return text, request.op == "close"
    except ProtocolError as e:
        level = logging.INFO if e.code < 500 else logging.WARNING
        log.log(level, "%d for a /ws frame from %s: %s", e.code, peer, one_line(e.message))
        return encode(error_reply(rid, e.code, e.message)), False
    except Exception:
        # A bug here must not end the session's WebSocket (and with it the episode).
        log.exception("unexpected error answering a /ws frame from %s", peer)
        return encode(error_reply(rid, 500, "internal server error")), False


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


async def _start(app: Any, config: ServerConfig) -> tuple[Callable[[], Awaitable[None]], int]:
    """Starts serving ``app``; returns the coroutine function that stops it, and the port."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        keepalive_timeout=config.keepalive_timeout_s,  # aiohttp's own idle timer agrees with ours
        logger=QuietParseErrors(logging.getLogger("aiohttp.server")),
    )
    await runner.setup()
    assert runner.server is not None
    quiet_accept_errors(asyncio.get_running_loop())  # the loop is the server's own
    # Our own listener instead of web.TCPSite: the protocol factory must be wrapped in the
    # connection limits, which a site offers no way to do. The runner still tracks and shuts
    # down every connection aiohttp's protocol makes.
    listener = await asyncio.get_running_loop().create_server(
        app[_LIMITS].protocol_factory(runner.server), config.host, config.port, backlog=1024
    )
    port = listener.sockets[0].getsockname()[1]

    async def stop() -> None:
        listener.close()  # accept nothing new, then close the connections (as sites do)
        await runner.cleanup()

    return stop, port


def serve(backend: EnvBackend | ToolsBackend, config: ServerConfig = ServerConfig()) -> None:
    """Serves until SIGINT or SIGTERM; prints ``listening on http://host:port`` when ready."""

    async def main() -> None:
        stop_serving, port = await _start(create_app(backend, config), config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"mtrl_gym.remote: listening on http://{config.host}:{port}", flush=True)
        try:
            await stop.wait()
        finally:
            await stop_serving()

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
        self._stop: Callable[[], Awaitable[None]] | None = None
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
        self._stop, self.port = future.result(timeout=30)
        return self

    def stop(self) -> None:
        """Closes every session and connection, then the loop (idempotent)."""
        if self._stop is not None:
            stop, self._stop = self._stop, None
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
