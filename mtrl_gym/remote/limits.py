"""Connection limits of the remote server: silent or slow clients cannot hold its sockets.

Every open connection costs the server a file descriptor, and aiohttp keeps one open for as long
as its peer does. A few dozen sockets that connect and say nothing (or send half a request head
and stop) would exhaust a server running under a low descriptor limit; real requests would then
wait in the listen backlog until they time out. :class:`ConnectionLimits` sits between the event
loop and aiohttp's protocol (it wraps the protocol factory) and enforces three limits:

- a header timeout: a connection must deliver a complete request head within
  ``header_timeout_s`` of connecting, or, on a kept-alive connection, of the first byte of its
  next request;
- a keep-alive timeout: a connection with no request in progress is closed after
  ``keepalive_timeout_s``;
- a per-address cap: one client address holds at most ``max_per_address`` connections; one more
  is answered ``503`` and closed at once, so it costs the server only the accept.

When descriptors do run out, asyncio logs a traceback for every failed ``accept`` (hundreds per
burst); :func:`quiet_accept_errors` turns those into one line a second.

A request is in progress from the moment aiohttp hands it to the application (the server's
middleware wraps every handler in :meth:`ConnectionLimits.request`) until the handler returns.
So a slow environment step or a long-lived session WebSocket is never cut off here: those have
their own limits (the client's step timeout, the WebSocket heartbeat, the session idle TTL).

Non-goals: a global connection cap and rate limiting (put a proxy in front), and telling apart
clients that share one address (behind a proxy they all have its address: raise the cap there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from mtrl_gym.remote.protocol import encode, error_reply

log = logging.getLogger(__name__)
ProtocolFactory = Callable[[], asyncio.Protocol]
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message


class ConnectionLimits:
    """Header and keep-alive timeouts and a per-address cap for every connection of a server.

    Args:
        header_timeout_s: Seconds a connection has to deliver a complete request head.
        keepalive_timeout_s: Seconds a connection may stay open with no request in progress.
        max_per_address: Connections one client address may hold open at once.
    """

    def __init__(
        self, *, header_timeout_s: float, keepalive_timeout_s: float, max_per_address: int
    ):
        self.header_timeout_s = header_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_per_address = max_per_address
        self.open_per_address: dict[str, int] = {}
        self._connections: dict[asyncio.BaseTransport, _LimitedConnection] = {}

    def protocol_factory(self, make_protocol: ProtocolFactory) -> ProtocolFactory:
        """A protocol factory for ``loop.create_server``: ``make_protocol``'s, under limits.

        A refused connection never reaches ``make_protocol``.
        """
        return lambda: _LimitedConnection(self, make_protocol)

    @contextlib.contextmanager
    def request(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """Marks a request in progress on ``transport``: no timeout closes it meanwhile."""
        connection = self._connections.get(transport) if transport is not None else None
        if connection is not None:
            connection.request_started()
        try:
            yield
        finally:
            if connection is not None:
                connection.request_finished()

    def _admit(self, address: str, connection: _LimitedConnection) -> bool:
        count = self.open_per_address.get(address, 0)
        if count >= self.max_per_address:
            return False
        self.open_per_address[address] = count + 1
        assert connection.transport is not None
        self._connections[connection.transport] = connection
        return True

    def _release(self, address: str, connection: _LimitedConnection) -> None:
        if connection.transport is not None:
            self._connections.pop(connection.transport, None)
        count = self.open_per_address.get(address, 0) - 1
        if count > 0:
            self.open_per_address[address] = count
        else:
            self.open_per_address.pop(address, None)


def _address_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    # (host, port) for IPv4, (host, port, flow, scope) for IPv6; anything else is one bucket.
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class _LimitedConnection(asyncio.Protocol):
    """One connection: forwards every event to the wrapped protocol and runs the timers.

    State: a timer is armed while no request is in progress, either for the head being read
    (``header_timeout_s``, from the connection or from the first byte after an idle spell) or
    for the idle spell itself (``keepalive_timeout_s``, from the end of the last request).
    """

    def __init__(self, limits: ConnectionLimits, make_protocol: ProtocolFactory):
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self._make_protocol = make_protocol
        self._inner: asyncio.Protocol | None = None  # None: refused (or not yet connected)
        self._address = ""
        self._requests = 0  # requests in progress (more than one only when pipelined)
        self._idle = False  # between requests, as opposed to reading a request head
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._address = _address_of(transport)
        if not self.limits._admit(self._address, self):
            cap = self.limits.max_per_address
            log.info("refused a connection from %s: it already holds %d", self._address, cap)
            self.transport.write(_refusal(cap))
            self.transport.close()
            return
        self._arm_head_timer()
        self._inner = self._make_protocol()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._inner is not None:
            self.limits._release(self._address, self)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._idle:  # the first bytes of the next request: its head is now on the clock
            self._idle = False
            self._arm_head_timer()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def request_started(self) -> None:
        """The application took a request: no timer runs until it is answered."""
        self._requests += 1
        self._idle = False
        self._disarm()

    def request_finished(self) -> None:
        """The application answered a request: an idle spell starts if none is left."""
        self._requests -= 1
        if self._requests == 0:
            self._idle = True
            delay_s = self.limits.keepalive_timeout_s
            self._arm(delay_s, f"idle for {delay_s:g} s")

    def _arm_head_timer(self) -> None:
        delay_s = self.limits.header_timeout_s
        self._arm(delay_s, f"no complete request head within {delay_s:g} s")

    def _arm(self, delay_s: float, reason: str) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._expire, reason)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, reason: str) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # An idle keep-alive connection closing is routine; a head that never came is not.
        level = logging.DEBUG if self._idle else logging.INFO
        log.log(level, "closing a connection from %s: %s", self._address, reason)
        # close() would wait for unsent bytes a peer that stopped reading never takes.
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()


def _refusal(cap: int) -> bytes:
    """A complete ``503`` response, sent before the refused connection is closed."""
    message = f"too many connections from your address (at most {cap}); retry after one closes"
    body = encode(error_reply(None, 503, message)).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Makes ``loop`` report failing to accept (no descriptors left) as one line a second.

    asyncio logs a traceback for each failed ``accept`` and retries a second later; a burst of
    connections against a low descriptor limit would print hundreds. Every other error goes to
    the handler the loop had before.
    """
    previous = loop.get_exception_handler()
    last_logged = -1e9

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal last_logged
        if context.get("message") != _ACCEPT_FAILED:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - last_logged >= 1.0:
            last_logged = now
            log.warning("cannot accept connections (%s); asyncio retries", context.get("exception"))

    loop.set_exception_handler(handler)
