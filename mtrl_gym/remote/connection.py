"""Client-side plumbing: one background event loop for all network I/O, and one session link.

Gymnasium calls ``reset`` and ``step`` from any thread, and the episode runner calls ``reset`` on a
worker thread but ``astep`` on its own loop. A WebSocket belongs to the loop that opened it, so all
client I/O runs on one private loop thread: sync callers block on it, async callers await it.
After a ``fork`` the child starts its own loop thread (threads do not survive a fork).

Non-goals: connection pooling across sessions (each session owns its WebSocket, by design).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from mtrl_gym.remote._deps import require_aiohttp
from mtrl_gym.remote.protocol import ProtocolError, decode, encode

T = TypeVar("T")
aiohttp = require_aiohttp()


class RemoteConnectionError(ConnectionError):
    """The server could not be reached, or the connection broke or misbehaved."""


class RemoteRequestError(RuntimeError):
    """The server refused a request; ``code`` is the HTTP-like status it gave."""

    def __init__(self, code: int, message: str):
        super().__init__(f"server refused the request ({code}): {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """Busy (429) or unavailable (502/503/504): worth retrying later."""
        return self.code in (429, 502, 503, 504)


class _IOThread:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._session: Any = None
        thread = threading.Thread(target=self.loop.run_forever, name="mtrl-remote-io", daemon=True)
        thread.start()
        atexit.register(self.shutdown)

    def shutdown(self) -> None:
        """Closes the shared HTTP session (at interpreter exit), waiting at most a second."""
        if self._session is not None and self.pid == os.getpid() and self.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._session.close(), self.loop)
            with contextlib.suppress(Exception):
                future.result(timeout=1.0)

    def http(self) -> Any:
        """The shared ``aiohttp.ClientSession`` (made on the I/O loop, used only there)."""
        if self._session is None:
            # Unlimited: every remote session holds its own WebSocket connection.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session


_io: _IOThread | None = None
_io_lock = threading.Lock()


def io_thread() -> _IOThread:
    """The process's I/O loop thread, started on first use (and again after a fork)."""
    global _io
    with _io_lock:
        if _io is None or _io.pid != os.getpid():
            _io = _IOThread()
        return _io


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Runs ``coro`` on the I/O loop and blocks until it finishes."""
    io = io_thread()
    if threading.current_thread().name == "mtrl-remote-io":
        coro.close()
        raise RuntimeError("blocking remote call made from the remote I/O loop itself")
    return asyncio.run_coroutine_threadsafe(coro, io.loop).result()


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Runs ``coro`` on the I/O loop and awaits it from the caller's loop."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, io_thread().loop))


def submit(coro: Coroutine[Any, Any, Any]) -> None:
    """Starts ``coro`` on the I/O loop without waiting (fire and forget, e.g. closing)."""
    asyncio.run_coroutine_threadsafe(coro, io_thread().loop)


def headers(token: str | None) -> dict[str, str]:
    """Request headers carrying the bearer token, if any."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def base_url(url: str) -> str:
    """``http(s)://host:port[/prefix]`` from an http(s) or ws(s) URL."""
    url = url.rstrip("/")
    for ws, http in (("ws://", "http://"), ("wss://", "https://")):
        if url.startswith(ws):
            url = http + url[len(ws) :]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"server URL must start with http(s):// or ws(s)://, got {url!r}")
    return url.removesuffix("/ws")


async def fetch_json(url: str, token: str | None, timeout_s: float) -> Any:
    """``GET url`` as JSON. Runs on the I/O loop.

    Refusals (4xx/5xx) raise :class:`RemoteRequestError`; anything else that goes wrong raises
    :class:`RemoteConnectionError`.
    """
    try:
        async with asyncio.timeout(timeout_s):
            async with io_thread().http().get(url, headers=headers(token)) as response:
                text = await response.text()
                status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise RemoteConnectionError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
    try:
        body = decode(text)
    except ProtocolError:
        raise RemoteConnectionError(
            f"{url} answered {status} with a body that is not JSON"
        ) from None
    if status >= 400:
        message = body.get("error", {}).get("message", text) if isinstance(body, dict) else text
        raise RemoteRequestError(status, str(message))
    return body


class Link:
    """One WebSocket session with the server: numbered requests, replies checked against them.

    Any network failure, an out-of-order reply or a cancelled request breaks the link for good
    (the session's state on the server is then unknown); the owner opens a new one.
    """

    def __init__(self, ws: Any):
        self.ws = ws
        self._next_id = 0
        self._lock = asyncio.Lock()
        self.broken = False

    @classmethod
    async def open(cls, url: str, token: str | None, timeout_s: float, max_bytes: int) -> Link:
        """Opens a session WebSocket at ``url`` (the server's base URL). Runs on the I/O loop."""
        try:
            async with asyncio.timeout(timeout_s):
                ws = (
                    await io_thread()
                    .http()
                    .ws_connect(
                        f"{url}/ws",
                        headers=headers(token),
                        max_msg_size=max_bytes,
                        compress=0,
                        autoping=True,
                    )
                )
        except aiohttp.WSServerHandshakeError as e:
            raise RemoteRequestError(e.status, e.message or "WebSocket handshake refused") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise RemoteConnectionError(
                f"cannot connect to {url}: {type(e).__name__}: {e}"
            ) from None
        return cls(ws)

    @property
    def alive(self) -> bool:
        """Whether requests can still be sent."""
        return not self.broken and not self.ws.closed

    async def request(self, frame: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
        """Sends one request and returns its reply. Runs on the I/O loop.

        Raises:
            RemoteConnectionError: The link is or became unusable.
            RemoteRequestError: The server answered ``ok: false``.
            TimeoutError: No reply within ``timeout_s`` (the link is then broken).
        """
        async with self._lock:
            if not self.alive:
                raise RemoteConnectionError("the connection to the server is closed")
            self._next_id += 1
            rid = self._next_id
            text = encode({**frame, "id": rid})
            try:
                async with asyncio.timeout(timeout_s):
                    await self.ws.send_str(text)
                    msg = await self.ws.receive()
            except BaseException as e:
                await self._break()
                if isinstance(e, aiohttp.ClientError | OSError):
                    raise RemoteConnectionError(f"connection lost: {type(e).__name__}: {e}") from e
                raise
            if msg.type != aiohttp.WSMsgType.TEXT:
                await self._break()
                code, extra = self.ws.close_code, f" ({msg.extra})" if msg.extra else ""
                raise RemoteConnectionError(f"connection closed by the server: code {code}{extra}")
            try:
                reply = decode(msg.data)
            except ProtocolError as e:
                await self._break()
                raise RemoteConnectionError(f"server sent a frame that is not JSON: {e}") from None
            if not isinstance(reply, dict) or reply.get("id") != rid:
                await self._break()
                raise RemoteConnectionError(f"reply does not answer request {rid}: {reply!r:.200}")
            if not reply.get("ok"):
                error = reply.get("error") or {}
                raise RemoteRequestError(int(error.get("code", 500)), str(error.get("message")))
            return reply

    async def _break(self) -> None:
        self.broken = True
        await self.close()

    async def close(self) -> None:
        """Closes the WebSocket (the server then closes the session). Runs on the I/O loop."""
        if not self.ws.closed:
            try:
                async with asyncio.timeout(1.0):
                    await self.ws.close()
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
