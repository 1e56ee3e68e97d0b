import asyncio
import json
import logging
import socket
import time

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="mtrl_gym.remote needs the remote extra (aiohttp)")

from mtrl_gym.remote import (  # noqa: E402
    BackgroundServer,
    RemoteEnv,
    RemoteRequestError,
    ServerConfig,
    make_backend,
)
from tests.mtrl_gym.remote import echo  # noqa: E402
from tests.mtrl_gym.remote.helpers import TOKEN  # noqa: E402


def http(method: str, url: str, body=None, *, token: str | None = None, raw: bytes | None = None):
    """One HTTP request with a fresh client; returns (status, decoded JSON body)."""

    async def go():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, url, data=data, headers=headers) as r,
        ):
            return r.status, json.loads(await r.text())

    return asyncio.run(go())


def test_server_config__refuses_non_loopback_without_token():
    with pytest.raises(ValueError, match="without a token"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 16"):
        ServerConfig(host="0.0.0.0", token="short")
    ServerConfig(host="0.0.0.0", token=TOKEN)  # allowed with a token
    assert ServerConfig().host == "127.0.0.1"


def test_server__health_and_spec(echo_server):
    assert http("GET", f"{echo_server.url}/health") == (200, {"status": "ok"})
    status, spec = http("GET", f"{echo_server.url}/spec")
    assert status == 200
    assert spec["server"] == "mtrl_gym.remote" and spec["protocol"] == 1 and spec["version"]
    assert spec["kind"] == "env" and spec["env"]["id"] == "echo"
    assert spec["env"]["max_action_chars"] == 4096 and spec["env"]["eval_only"] is False


def test_server__http_session_round_trip_and_isolation(echo_server):
    url = echo_server.url
    status, a = http("POST", f"{url}/sessions")
    _, b = http("POST", f"{url}/sessions")
    assert status == 201 and a["session_id"] != b["session_id"] and len(a["session_id"]) >= 43
    sa, sb = f"{url}/sessions/{a['session_id']}", f"{url}/sessions/{b['session_id']}"
    assert http("POST", f"{sa}/step", {"action": "x"})[0] == 409  # no reset yet
    assert http("POST", f"{sa}/reset", {"options": {"tag": "A", "steps": 5}})[0] == 200
    assert http("POST", f"{sb}/reset", {"options": {"tag": "B", "steps": 5}})[0] == 200
    status, reply = http("POST", f"{sa}/step", {"action": "hi"})
    assert status == 200 and reply["observation"] == "A|1|hi"
    assert http("POST", f"{sb}/step", {"action": "yo"})[1]["observation"] == "B|1|yo"
    assert http("POST", f"{sa}/step", {"action": "again"})[1]["observation"] == "A|2|again"
    # Another id reaches nothing, and a closed session is gone.
    assert http("POST", f"{url}/sessions/{'x' * 43}/step", {"action": "x"})[0] == 404
    assert http("DELETE", sa)[0] == 200
    assert http("POST", f"{sa}/step", {"action": "x"})[0] == 404
    assert http("POST", f"{sb}/step", {"action": "still"})[1]["observation"] == "B|2|still"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("reset", b"{not json", 400),
        ("reset", b"[1, 2]", 400),
        ("reset", json.dumps({"seed": -1}).encode(), 422),
        ("reset", json.dumps({"seed": "7"}).encode(), 422),
        ("reset", json.dumps({"options": [1]}).encode(), 422),
        ("reset", json.dumps({"op": "step"}).encode(), 400),
        ("step", json.dumps({}).encode(), 400),
        ("frobnicate", b"{}", 404),
        ("call", json.dumps({"name": "t"}).encode(), 400),  # an env server serves no tools
    ],
)
def test_server__malformed_requests_get_a_4xx_with_a_message(echo_server, path, body, status):
    _, session = http("POST", f"{echo_server.url}/sessions")
    got, reply = http(
        "POST", f"{echo_server.url}/sessions/{session['session_id']}/{path}", raw=body
    )
    assert got == status
    assert reply["ok"] is False and reply["error"]["code"] == status and reply["error"]["message"]
    assert http("GET", f"{echo_server.url}/health")[0] == 200


def test_server__non_text_action_is_422(echo_server):
    _, session = http("POST", f"{echo_server.url}/sessions")
    base = f"{echo_server.url}/sessions/{session['session_id']}"
    http("POST", f"{base}/reset", {})
    assert http("POST", f"{base}/step", {"action": 5})[0] == 422
    assert http("POST", f"{base}/step", {"action": "x" * 4097})[0] == 422


def test_server__oversized_body_is_413():
    config = ServerConfig(port=0, max_request_bytes=1000)
    with BackgroundServer(make_backend(echo.EchoEnv), config) as server:
        _, session = http("POST", f"{server.url}/sessions")
        big = json.dumps({"action": "x" * 2000}).encode()
        status, reply = http("POST", f"{server.url}/sessions/{session['session_id']}/step", raw=big)
        assert status == 413 and "1000" in reply["error"]["message"]
        assert http("GET", f"{server.url}/health")[0] == 200


def test_server__oversized_websocket_frame_closes_only_that_session():
    config = ServerConfig(port=0, max_request_bytes=1000)
    with BackgroundServer(make_backend(echo.EchoEnv), config) as server:
        env, other = RemoteEnv(server.url), RemoteEnv(server.url)
        env.reset(options={"tag": "big"})
        other.reset(options={"tag": "other"})
        result = env.step("x" * 2000)  # the frame exceeds the limit: the server drops the socket
        assert result[4]["status"] == "infra_error" and result[3] is True
        assert other.step("fine")[0] == "other|1|fine"
        env.close(), other.close()


def test_server__token_required_and_checked():
    config = ServerConfig(port=0, token=TOKEN)
    with BackgroundServer(make_backend(echo.EchoEnv), config) as server:
        assert http("GET", f"{server.url}/health")[0] == 200  # liveness stays open
        assert http("GET", f"{server.url}/spec")[0] == 401
        assert http("GET", f"{server.url}/spec", token="wrong-token-0123456789")[0] == 401
        assert http("POST", f"{server.url}/sessions", token=TOKEN[:-1])[0] == 401
        assert http("GET", f"{server.url}/spec", token=TOKEN)[0] == 200
        with pytest.raises(Exception, match="401"):
            RemoteEnv(server.url, token="wrong-token-0123456789")
        env = RemoteEnv(server.url, token=TOKEN)
        assert env.reset(options={"tag": "t"})[0] == "t|start"
        env.close()


def test_server__session_limit_is_429_and_frees_on_close():
    with BackgroundServer(make_backend(echo.EchoEnv), ServerConfig(port=0, max_sessions=2)) as s:
        a, b = http("POST", f"{s.url}/sessions"), http("POST", f"{s.url}/sessions")
        status, reply = http("POST", f"{s.url}/sessions")
        assert status == 429 and "session limit" in reply["error"]["message"]
        env = RemoteEnv(s.url, reset_timeout_s=0.3)
        with pytest.raises(Exception, match="429"):
            env.reset()
        http("DELETE", f"{s.url}/sessions/{a[1]['session_id']}")
        assert env.reset(options={"tag": "ok"})[0] == "ok|start"
        env.close()
        assert b[0] == 201


def test_server__idle_sessions_expire_and_close_their_env():
    config = ServerConfig(port=0, idle_ttl_s=0.2)
    with BackgroundServer(make_backend(echo.EchoEnv), config) as server:
        env = RemoteEnv(server.url)
        env.reset(options={"tag": "idle-ws", "steps": 5})
        _, session = http("POST", f"{server.url}/sessions")
        base = f"{server.url}/sessions/{session['session_id']}"
        http("POST", f"{base}/reset", {"options": {"tag": "idle-http"}})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and server.manager.sessions:
            time.sleep(0.05)
        assert not server.manager.sessions
        assert {"idle-ws", "idle-http"} <= set(echo.CLOSED)
        assert http("POST", f"{base}/step", {"action": "x"})[0] == 404
        result = env.step("late")  # the expired WebSocket surfaces as infra_error
        assert result[4]["status"] == "infra_error"
        assert env.reset(options={"tag": "back"})[0] == "back|start"  # a new session
        env.close()


def test_server__closing_the_websocket_closes_the_env(echo_server):
    env = RemoteEnv(echo_server.url)
    env.reset(options={"tag": "bye"})
    env.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "bye" not in echo.CLOSED:
        time.sleep(0.02)
    assert "bye" in echo.CLOSED and not echo_server.manager.sessions


def test_server__garbage_bytes_get_400_and_server_survives(echo_server):
    host, port = "127.0.0.1", echo_server.port
    for payload in (
        b"\x00\xff garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /sessions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    ):
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(payload)
            head = sock.recv(64)
        assert head.startswith(b"HTTP/1.") and head[9:10] == b"4", head
    assert http("GET", f"{echo_server.url}/health")[0] == 200


def test_server__stopping_with_open_sessions_is_quick_and_clients_see_infra_error():
    server = BackgroundServer(make_backend(echo.EchoEnv), ServerConfig(port=0)).start()
    env = RemoteEnv(server.url, reset_timeout_s=0.5)
    env.reset(options={"tag": "open", "steps": 5})
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 3.0
    assert env.step("x")[4]["status"] == "infra_error"
    with pytest.raises(Exception, match="cannot connect"):
        env.reset()  # nothing listens any more; reset gives up after reset_timeout_s


# ---- logging: one line per refused request, no tracebacks --------------------------------------


def raw_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(64)


def test_server__malformed_requests_log_one_line_each(echo_server, caplog):
    caplog.set_level(logging.INFO)
    url, port = echo_server.url, echo_server.port
    sid = http("POST", f"{url}/sessions")[1]["session_id"]
    cases = [
        (lambda: raw_exchange(port, b"\x00\xff garbage\r\n\r\n"), "Invalid method"),
        (lambda: raw_exchange(port, b"GET / HTTP/9.9\r\n\r\n"), "Invalid HTTP version"),
        (
            lambda: raw_exchange(port, b"POST /sessions HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
            "Content-Length",
        ),
        (
            lambda: http("POST", f"{url}/sessions/{sid}/reset", raw=b"{not json"),
            "400 for POST /sessions/{session_id}/reset from 127.0.0.1: body is not valid JSON",
        ),
        (
            lambda: http("POST", f"{url}/sessions/{sid}/frobnicate", raw=b"{}"),
            "404 for POST /sessions/{session_id}/frobnicate from 127.0.0.1: unknown operation",
        ),
        # A newline in the path (sent as %0A) cannot start a forged log line.
        (lambda: http("GET", f"{url}/nope%0Aforged"), "404 for GET /nope forged from 127.0.0.1"),
    ]
    for send, expected in cases:
        before = len(caplog.records)
        send()
        records = caplog.records[before:]
        assert len(records) == 1, [r.getMessage() for r in records]
        record = records[0]
        message = record.getMessage()
        assert record.levelno == logging.INFO and record.exc_info is None, message
        assert expected in message and "127.0.0.1" in message
        assert "\n" not in message and sid not in message  # one line; the session id stays secret
    assert http("GET", f"{url}/health")[0] == 200


# ---- agent text that is not valid Unicode; failures answer only their request -------------------


def test_server__lone_surrogate_action_is_a_4xx_and_the_server_stays_healthy():
    # \ud800 arrives escaped in JSON and decodes to a lone surrogate, which UTF-8 cannot encode.
    with BackgroundServer(make_backend(echo.Utf8EchoEnv), ServerConfig(port=0)) as server:
        env = RemoteEnv(server.url)
        env.reset(options={"tag": "bad-text"})
        with pytest.raises(RemoteRequestError) as refused:
            env.step("a\ud800b")
        assert refused.value.code == 422 and "lone surrogate" in refused.value.message
        # The same over plain HTTP: a well-formed JSON refusal, not a 500.
        sid = http("POST", f"{server.url}/sessions")[1]["session_id"]
        base = f"{server.url}/sessions/{sid}"
        http("POST", f"{base}/reset", {})
        status, reply = http("POST", f"{base}/step", raw=b'{"action": "x\\ud800"}')
        assert (status, reply["ok"], reply["error"]["code"]) == (422, False, 422)
        # Healthy after: health, the same client's next episode, valid text with non-ASCII.
        assert http("GET", f"{server.url}/health")[0] == 200
        assert env.reset(options={"tag": "ok"})[0] == "ok|start"
        assert env.step("é ✓")[0] == "ok|1|é ✓"
        env.close()


def test_server__lone_surrogates_in_replies_are_sent_escaped(echo_server):
    # EchoEnv takes any text and echoes it in the observation: the reply must still encode.
    env = RemoteEnv(echo_server.url)
    env.reset(options={"tag": "\udfff-tag", "steps": 2})
    obs, _, _, _, info = env.step("\ud800 x \udc00")
    assert obs == "\udfff-tag|1|\ud800 x \udc00" and info["tag"] == "\udfff-tag"
    env.close()
    sid = http("POST", f"{echo_server.url}/sessions")[1]["session_id"]
    base = f"{echo_server.url}/sessions/{sid}"
    http("POST", f"{base}/reset", {"options": {"tag": "t"}})
    status, reply = http("POST", f"{base}/step", raw=b'{"action": "\\udbff"}')
    assert status == 200 and reply["observation"] == "t|1|\udbff"


def test_server__environment_failure_answers_only_that_request(echo_server, caplog):
    caplog.set_level(logging.INFO)
    env = RemoteEnv(echo_server.url, reset_timeout_s=1.0)
    env.reset(options={"tag": "first"})
    with pytest.raises(RemoteRequestError) as failed:
        env.reset(options={"explode": True})  # the environment raises: a server-side fault
    assert failed.value.code == 500 and "RuntimeError" in failed.value.message
    assert env.reset(options={"tag": "again"})[0] == "again|start"  # same session, next request
    assert env.step("x")[0] == "again|1|x"
    assert echo_server.manager.served["sessions"] == 1  # the WebSocket session was never lost
    env.close()
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1 and "failed on the server" in tracebacks[0].getMessage()
