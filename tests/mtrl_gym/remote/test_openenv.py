"""OpenEnvClient against a small stand-in that speaks OpenEnv's WebSocket format."""

import asyncio
import json
import threading

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="mtrl_gym.remote needs the remote extra (aiohttp)")
from aiohttp import web  # noqa: E402

from mtrl_gym import EpisodeJob, EpisodeRunner  # noqa: E402
from mtrl_gym.remote import OpenEnvClient, RemoteConnectionError  # noqa: E402


async def openenv_ws(request):
    """Echo environment in OpenEnv's wire format; done after three messages."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    count = 0
    async for msg in ws:
        message = json.loads(msg.data)
        if message["type"] == "close":
            break
        if message["type"] == "reset":
            count = 0
            data = {
                "observation": {"echoed": "", "count": 0, "seed": message["data"].get("seed")},
                "reward": None,
                "done": False,
            }
        elif "message" not in message["data"]:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "error",
                        "data": {"message": "field 'message' required", "code": "VALIDATION_ERROR"},
                    }
                )
            )
            continue
        elif message["data"]["message"] == "explode":
            await ws.send_str(
                json.dumps(
                    {"type": "error", "data": {"message": "env crashed", "code": "EXECUTION_ERROR"}}
                )
            )
            continue
        else:
            count += 1
            data = {
                "observation": {"echoed": message["data"]["message"], "count": count},
                "reward": 0.5 * count,
                "done": count >= 3,
                "metadata": {"n": count},
            }
        await ws.send_str(json.dumps({"type": "observation", "data": data}))
    return ws


class FakeOpenEnv:
    def __enter__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            app = web.Application()
            app.router.add_get("/ws", openenv_ws)
            runner = web.AppRunner(app, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner

        self.runner = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def test_openenv_client__maps_done_reward_and_metadata():
    with FakeOpenEnv() as server:
        env = OpenEnvClient(server.url, max_turns=8)
        obs, info = env.reset(seed=7)
        assert json.loads(obs) == {"count": 0, "echoed": "", "seed": 7}
        assert env.step('{"message": "a"}')[:4] == (
            '{"count": 1, "echoed": "a"}',
            0.5,
            False,
            False,
        )
        obs, reward, terminated, truncated, info = env.step("not json")
        assert obs.startswith("Error: your action could not be parsed") and info["format_error"]
        obs, reward, terminated, truncated, info = env.step('{"wrong": 1}')
        assert "field 'message' required" in obs and not (terminated or truncated)
        env.step('{"message": "b"}')
        obs, reward, terminated, truncated, info = env.step('{"message": "c"}')
        assert (reward, terminated, truncated, info["status"]) == (1.5, True, False, "ok")
        assert info["openenv"]["metadata"] == {"n": 3}
        with pytest.raises(RuntimeError, match="reset"):
            env.step('{"message": "d"}')
        env.close()


def test_openenv_client__local_max_turns_truncates():
    with FakeOpenEnv() as server:
        env = OpenEnvClient(server.url, max_turns=2)
        env.reset()
        env.step('{"message": "a"}')
        _, _, terminated, truncated, info = env.step('{"message": "b"}')
        assert (terminated, truncated, info["status"]) == (False, True, "truncated")
        env.close()


def test_openenv_client__server_errors_and_lost_connections_are_infra_error():
    with FakeOpenEnv() as server:
        env = OpenEnvClient(server.url)
        env.reset()
        obs, reward, terminated, truncated, info = env.step('{"message": "explode"}')
        assert (obs, reward, terminated, truncated) == ("", 0.0, False, True)
        assert info["status"] == "infra_error" and "env crashed" in info["eval"]["error"]
        env.reset()
        url = server.url
    _, _, _, truncated, info = env.step('{"message": "x"}')  # the server is gone
    assert truncated and info["status"] == "infra_error"
    with pytest.raises(RemoteConnectionError):
        OpenEnvClient(url).reset()


def test_openenv_client__runs_under_the_episode_runner():
    with FakeOpenEnv() as server:
        jobs = [
            EpisodeJob(
                env=lambda: OpenEnvClient(server.url),
                policy=lambda o, i: '{"message": "hi"}',
                tag=k,
            )
            for k in range(5)
        ]
        results = EpisodeRunner(max_concurrency=5).run_sync(jobs)
    assert [(r.status, r.reward, len(r.steps)) for r in results] == [("ok", 1.5, 3)] * 5
