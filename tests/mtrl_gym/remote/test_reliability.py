"""Loopback reliability: many sessions, a server killed mid-run, fuzzed requests, silent sockets.

The silent sockets go against a server with a 64-descriptor limit.
"""

import asyncio
import json
import select
import socket
import time

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="mtrl_gym.remote needs the remote extra (aiohttp)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mtrl_gym import EpisodeJob, EpisodeRunner  # noqa: E402
from mtrl_gym.remote import BackgroundServer, RemoteEnv, ServerConfig, make_backend  # noqa: E402
from tests.mtrl_gym.remote.echo import EchoEnv  # noqa: E402
from tests.mtrl_gym.remote.helpers import TOKEN, ServerProcess  # noqa: E402

ECHO = "tests.mtrl_gym.remote.echo:EchoEnv"


def echo_policy(tag: str, seen: list):
    """Sends ``tag:k`` at step k and records every observation it is shown."""

    def policy(observation, info):
        seen.append(observation)
        return f"{tag}:{len(seen)}"

    return policy


def run_many(url: str, sessions: int, steps: int):
    seen = {f"ep{i}": [] for i in range(sessions)}
    jobs = [
        EpisodeJob(
            env=lambda: RemoteEnv(url),
            policy=echo_policy(tag, seen[tag]),
            options={"tag": tag, "steps": steps},
            tag=tag,
        )
        for tag in seen
    ]
    start = time.perf_counter()
    results = EpisodeRunner(max_concurrency=sessions).run_sync(jobs)
    return results, seen, time.perf_counter() - start


def check_no_lost_duplicated_or_crossed(results, seen, steps):
    assert len(results) == len(seen) and len({r.tag for r in results}) == len(seen)
    for r in results:
        tag = r.tag
        assert (r.status, r.terminated, r.truncated, len(r.steps)) == ("ok", True, False, steps)
        expected = [f"{tag}|{k}|{tag}:{k}" for k in range(1, steps + 1)]
        assert [s["observation"] for s in r.steps] == expected
        assert [s["info"]["k"] for s in r.steps] == list(range(1, steps + 1))
        assert seen[tag] == [f"{tag}|start", *expected[:-1]]
        assert r.reward == float(steps)


def test_reliability__256_sessions_x_40_steps():
    with ServerProcess(ECHO) as server:
        results, seen, seconds = run_many(server.url, 256, 40)
    check_no_lost_duplicated_or_crossed(results, seen, 40)
    print(f"256 x 40 steps in {seconds:.2f} s")


def test_reliability__server_killed_mid_run_is_infra_error_then_reconnects():
    server = ServerProcess(ECHO).start()
    try:
        envs = [RemoteEnv(server.url, reset_timeout_s=30) for _ in range(8)]
        for i, env in enumerate(envs):
            env.reset(options={"tag": f"before{i}", "steps": 10})
            assert env.step("a")[0] == f"before{i}|1|a"
        server.kill()  # SIGKILL: no goodbye on any connection
        for env in envs:
            obs, reward, terminated, truncated, info = env.step("b")
            assert (obs, reward, terminated, truncated) == ("", 0.0, False, True)
            assert info["status"] == "infra_error" and info["eval"]["status"] == "infra_error"
            assert info["eval"]["success"] is False and info["turn"] == 2
            with pytest.raises(RuntimeError, match="reset"):
                env.step("c")  # the lost episode is over
        server.start()  # same port
        for i, env in enumerate(envs):
            assert env.reset(options={"tag": f"after{i}", "steps": 2})[0] == f"after{i}|start"
            assert env.step("x")[0] == f"after{i}|1|x"
            env.close()
        # The runner view: episodes in flight at the kill are infra_error, and later runs work.
        seen: dict = {}
        jobs = [
            EpisodeJob(
                env=lambda: RemoteEnv(server.url),
                policy=slow_killer(server)
                if i == 0
                else echo_policy(f"r{i}", seen.setdefault(i, [])),
                options={"tag": f"r{i}", "steps": 10**6},
                tag=i,
            )
            for i in range(4)
        ]
        results = EpisodeRunner(max_concurrency=4).run_sync(jobs)
        assert {r.status for r in results} == {"infra_error"}
        server.start()
        results, seen2, _ = run_many(server.url, 8, 5)
        check_no_lost_duplicated_or_crossed(results, seen2, 5)
    finally:
        server.kill()


def _silent_sockets(port: int, source: str, silent: int, half: int) -> list[socket.socket]:
    """``silent`` connections that send nothing and ``half`` that send half a request head."""
    socks = []
    for i in range(silent + half):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        if i >= silent:
            sock.sendall(b"GET /spec HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    return socks


def _all_closed_within(socks: list[socket.socket], seconds: float) -> bool:
    """Whether the server closed every socket (a refusal's 503 may come first) in time."""
    open_, deadline = set(socks), time.monotonic() + seconds
    while open_ and (left := deadline - time.monotonic()) > 0:
        for sock in select.select(list(open_), [], [], left)[0]:
            try:
                if not sock.recv(65536):
                    open_.discard(sock)
            except ConnectionError:
                open_.discard(sock)
    for sock in socks:
        sock.close()
    return not open_


def _authenticated_episode(url: str, tag: str) -> float:
    """Seconds a normal client takes to open a session, reset and step."""
    start = time.monotonic()
    env = RemoteEnv(url, token=TOKEN, connect_timeout_s=3, reset_timeout_s=5, step_timeout_s=5)
    assert env.reset(options={"tag": tag})[0] == f"{tag}|start"
    assert env.step("x")[0] == f"{tag}|1|x"
    env.close()
    return time.monotonic() - start


def test_reliability__silent_sockets_cannot_starve_a_64_descriptor_server(tmp_path):
    # 70 silent and 5 half-sent connections would take every descriptor of a 64-descriptor
    # server, and requests would then wait in the listen backlog until they time out. A burst
    # larger than the free descriptors still stalls accepting for asyncio's 1 s retry delay.
    limits = ["--header-timeout", "0.5", "--keepalive-timeout", "1"]
    limits += ["--max-connections-per-client", "16"]
    log = tmp_path / "server.log"
    with ServerProcess(ECHO, *limits, token=TOKEN, max_open_files=64, log_path=log) as server:
        # From another address: the cap refuses all but 16 at once, so a client gets through.
        socks = _silent_sockets(server.port, "127.0.0.2", silent=70, half=5)
        assert _authenticated_episode(server.url, "other-address") < 3.0
        assert _all_closed_within(socks, 3.0)  # the refused at once, the rest on the timeout
        # From the client's own address: the header timeout frees the slots within a second.
        socks = _silent_sockets(server.port, "127.0.0.1", silent=70, half=5)
        assert _authenticated_episode(server.url, "same-address") < 4.0
        assert _all_closed_within(socks, 3.0)
        assert _authenticated_episode(server.url, "after") < 2.0
    text = log.read_text()
    assert "Traceback" not in text  # one line per refusal, timeout or failed accept burst
    assert "no complete request head within 0.5 s" in text and "refused a connection" in text


def slow_killer(server):
    """A policy that kills the server on its third call, in the middle of everyone's episode."""
    calls = []

    async def policy(observation, info):
        calls.append(observation)
        await asyncio.sleep(0.01)
        if len(calls) == 3:
            server.kill()
        return "go"

    return policy


# ---- fuzzing: no 5xx, and the server stays healthy --------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_frames = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"op": st.sampled_from(["reset", "step", "call", "close", "nope"])},
        optional={
            "id": _json_values,
            "seed": _json_values,
            "options": _json_values,
            "action": _json_values,
            "name": _json_values,
            "arguments": _json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
)
_paths = st.sampled_from(["reset", "step", "call", "close", "nope", "", "reset/extra"])
_headers = st.dictionaries(
    st.sampled_from(["Authorization", "Content-Type", "X-Junk", "Content-Encoding"]),
    st.sampled_from(["gzip", "deflate", "br", "identity", "Bearer x", "application/json"])
    | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    max_size=3,
)


@pytest.fixture(scope="module")
def fuzz_server():
    config = ServerConfig(port=0, max_request_bytes=4096, max_sessions=10_000)
    with BackgroundServer(make_backend(EchoEnv), config) as server:
        yield server


def _statuses(url, frames, path, headers):
    async def go():
        out = []
        # A fresh connection per request: a server may close one after refusing a body.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            async with s.post(f"{url}/sessions") as r:
                sid = (await r.json())["session_id"]
            for frame in frames:
                async with s.post(f"{url}/sessions/{sid}/{path}", data=frame, headers=headers) as r:
                    out.append((r.status, await r.text()))
            async with s.ws_connect(f"{url}/ws") as ws:
                for frame in frames:
                    await ws.send_str(frame.decode("utf-8", "replace"))
                    msg = await ws.receive(timeout=5)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        out.append((msg.type.name, ""))
                        break
                    reply = json.loads(msg.data)
                    code = 200 if reply.get("ok") else reply["error"]["code"]
                    out.append((code, msg.data))
            async with s.get(f"{url}/health") as r:
                out.append((r.status, "health"))
        return out

    return asyncio.run(go())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=st.lists(_frames, min_size=1, max_size=4), path=_paths, headers=_headers)
def test_reliability__fuzzed_requests_never_get_5xx(fuzz_server, frames, path, headers):
    for status, body in _statuses(fuzz_server.url, frames, path, headers):
        if isinstance(status, int):
            assert status < 500, body
            if status >= 400:  # our JSON error, or aiohttp's parser's text for broken HTTP
                assert body.strip()
                if body.startswith("{"):
                    assert json.loads(body)["error"]["message"]
        else:
            assert status in ("CLOSE", "CLOSING", "CLOSED")  # only an oversized frame closes


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=st.integers(4097, 20_000))
def test_reliability__oversized_bodies_are_413(fuzz_server, size):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{fuzz_server.url}/sessions") as r:
                sid = (await r.json())["session_id"]
            async with s.post(f"{fuzz_server.url}/sessions/{sid}/step", data=b"x" * size) as r:
                return r.status

    assert asyncio.run(go()) == 413
