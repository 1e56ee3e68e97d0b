"""Connection limits: silent, half-sent and idle connections are closed; one address is capped.

The server here runs with timeouts of a fraction of a second, so each test takes about one.
"""

import json
import select
import socket
import time

import pytest

pytest.importorskip("aiohttp", reason="mtrl_gym.remote needs the remote extra (aiohttp)")

from mtrl_gym.remote import BackgroundServer, RemoteEnv, ServerConfig, make_backend  # noqa: E402
from mtrl_gym.remote.__main__ import main  # noqa: E402
from tests.mtrl_gym.remote.echo import EchoEnv  # noqa: E402

HEAD_S, IDLE_S = 0.3, 0.6


def limited_server(head_s: float = HEAD_S, idle_s: float = IDLE_S, cap: int = 4):
    config = ServerConfig(
        port=0, header_timeout_s=head_s, keepalive_timeout_s=idle_s, max_connections_per_client=cap
    )
    return BackgroundServer(make_backend(EchoEnv), config)


@pytest.fixture
def server():
    with limited_server() as s:
        yield s


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """Everything the server sent before closing ``sock``, or None if it is still open."""
    got, deadline = b"", time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
    return None


def get_health(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    return head


def test_server_config__connection_limits_are_validated():
    for bad in (
        {"header_timeout_s": 0},
        {"keepalive_timeout_s": -1.0},
        {"header_timeout_s": float("nan")},
        {"max_connections_per_client": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServerConfig(**bad)
    config = ServerConfig()
    assert (config.header_timeout_s, config.keepalive_timeout_s) == (10.0, 75.0)
    assert config.max_connections_per_client > 2 * config.max_sessions


def test_connection_limits__cli_flags_reach_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr("mtrl_gym.remote.__main__.serve", lambda b, c: seen.setdefault("c", c))
    monkeypatch.setattr("logging.basicConfig", lambda **kwargs: None)  # leave pytest's logging
    main(
        ["serve", "tests.mtrl_gym.remote.echo:EchoEnv", "--header-timeout", "2.5"]
        + ["--keepalive-timeout", "7", "--max-connections-per-client", "9"]
    )
    config = seen["c"]
    assert (config.header_timeout_s, config.keepalive_timeout_s) == (2.5, 7.0)
    assert config.max_connections_per_client == 9


def test_connection_limits__silent_and_half_sent_heads_are_closed(server):
    silent = connect(server.port)
    half = connect(server.port)
    half.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
    start = time.monotonic()
    assert closed_within(silent, 3) == b"" and closed_within(half, 3) == b""
    assert HEAD_S * 0.8 < time.monotonic() - start < HEAD_S + 2


def test_connection_limits__next_head_is_timed_from_its_first_byte():
    with limited_server(idle_s=30.0) as server, connect(server.port) as sock:
        get_health(sock)  # a kept-alive connection, now idle
        start = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next head starts, and never ends
        assert closed_within(sock, 5) == b""  # after the head's timeout, not the idle one
        assert time.monotonic() - start < HEAD_S + 2


def test_connection_limits__idle_keepalive_connection_is_closed(server):
    sock = connect(server.port)
    get_health(sock)
    time.sleep(IDLE_S / 2)
    get_health(sock)  # a request in time keeps the connection
    start = time.monotonic()
    assert closed_within(sock, 3) == b""
    assert IDLE_S * 0.8 < time.monotonic() - start < IDLE_S + 2


def test_connection_limits__slow_steps_and_quiet_websockets_are_not_cut():
    with limited_server(head_s=0.1, idle_s=0.2) as server:
        env = RemoteEnv(server.url)
        env.reset(options={"tag": "slow", "steps": 3, "delay": 0.5})
        assert env.step("a")[0] == "slow|1|a"  # the step outlasted both timeouts
        time.sleep(0.5)  # the session's WebSocket idles longer than the keep-alive timeout
        assert env.step("b")[0] == "slow|2|b"
        env.close()


def test_connection_limits__stalled_body_gets_408_and_is_closed(server):
    sock = connect(server.port)
    sock.sendall(b"POST /sessions HTTP/1.1\r\nHost: x\r\n\r\n")
    sid = json.loads(sock.recv(65536).split(b"\r\n\r\n", 1)[1])["session_id"]
    head = f"POST /sessions/{sid}/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    sock.sendall(head.encode() + b'{"seed"')  # 7 bytes of 100, then silence
    reply = closed_within(sock, 3)
    assert reply is not None and reply.startswith(b"HTTP/1.1 408"), reply
    assert b"did not arrive within" in reply


def test_connection_limits__one_address_is_capped_with_503_and_freed_on_close():
    with limited_server(head_s=30.0, idle_s=30.0, cap=4) as server:
        held = [connect(server.port) for _ in range(4)]
        with connect(server.port) as extra:
            reply = closed_within(extra, 2)
        assert reply is not None and reply.startswith(b"HTTP/1.1 503"), reply
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == 503
        assert b"too many connections" in reply
        with connect(server.port, source="127.0.0.2") as other:
            get_health(other)  # another address is not affected
        held.pop().close()
        time.sleep(0.2)  # the server sees the close
        with connect(server.port) as again:
            get_health(again)  # the freed slot is taken
        for sock in held:
            get_health(sock)  # the held connections were never disturbed
            sock.close()
