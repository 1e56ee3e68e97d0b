import json
import time
from collections.abc import Sequence

import pytest

pytest.importorskip("aiohttp", reason="mtrl_gym.remote needs the remote extra (aiohttp)")

import gymnasium as gym  # noqa: E402

from mtrl_envs.helpdesk.env import HelpdeskEnv, make_task  # noqa: E402
from mtrl_envs.helpdesk.scenarios import make_policy  # noqa: E402
from mtrl_gym import (  # noqa: E402
    EpisodeJob,
    EpisodeResources,
    EpisodeRunner,
    Task,
    TextEnv,
    Tool,
    ToolError,
    ensure_trainable,
    get_format,
)
from mtrl_gym.remote import (  # noqa: E402
    BackgroundServer,
    RemoteEnv,
    RemoteTools,
    ServerConfig,
    make_backend,
    make_remote,
    remote_tools,
)
from tests.mtrl_gym.toy import CRASH, ToyEnv  # noqa: E402

HERMES = get_format("hermes")


def toy_factory(**kwargs):
    return ToyEnv(extra_tools=(CRASH,), max_turns=4, **kwargs)


class EvalOnlyToy(ToyEnv):
    eval_only = True
    eval_only_reason = "licensed for evaluation only"


def as_json(value):
    return json.loads(json.dumps(value))


def play(env, script, *, seed, options):
    out = [as_json(env.reset(seed=seed, options=options))]
    for action in script:
        result = env.step(action)
        out.append(as_json(result))
        if result[2] or result[3]:
            break
    return out


SCRIPTS = {
    "answer": [
        HERMES.render_calls([("add", {"a": 2, "b": 3})]),
        '<final_output>{"sum": 5}</final_output>',
    ],
    "errors": [
        HERMES.render_calls([("lookup", {"key": "nope"}), ("add", {"a": "x", "b": 1})]),
        "no call at all",
        HERMES.render_calls([("missing", {})]),
        "still nothing",
    ],  # max_turns=4: ends truncated
    "crash": [HERMES.render_calls([("add", {"a": 1, "b": 1}), ("crash", {})])],
    "bad_answer": ["<final_output>{oops</final_output>"],
}


@pytest.fixture(scope="module")
def toy_server():
    with BackgroundServer(make_backend(toy_factory, name="toy"), ServerConfig(port=0)) as server:
        yield server


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_remote_env__results_equal_the_local_env(toy_server, name):
    local, remote = toy_factory(), RemoteEnv(toy_server.url)
    try:
        expected = play(local, SCRIPTS[name], seed=3, options={"task_id": "t0"})
        got = play(remote, SCRIPTS[name], seed=3, options={"task_id": "t0"})
    finally:
        local.close(), remote.close()
    assert got == expected
    last_info = got[-1][4]
    assert (
        last_info["status"]
        == {
            "answer": "ok",
            "errors": "truncated",
            "crash": "infra_error",
            "bad_answer": "format_error",
        }[name]
    )
    assert got[-1][2] != got[-1][3]  # terminated xor truncated, carried separately


def test_remote_env__spaces_and_make(toy_server):
    env = make_remote(toy_server.url)
    assert env.action_space.max_length == toy_factory().action_space.max_length
    assert env.metadata["render_fps"] == 1
    with pytest.raises(RuntimeError, match="reset"):
        env.step("x")
    # Outside the mtrl namespace and removed again: other tests make every mtrl/ id.
    gym.register("RemoteToyTest-v0", entry_point=make_remote, disable_env_checker=True)
    try:
        made = gym.make("RemoteToyTest-v0", url=toy_server.url)
        assert made.reset(options={"task_id": "t2"})[1]["task_id"] == "t2"
        made.close(), env.close()
    finally:
        del gym.registry["RemoteToyTest-v0"]


def test_remote_env__bad_reset_options_raise_like_the_local_env(toy_server):
    env = RemoteEnv(toy_server.url)
    with pytest.raises(Exception, match="unknown task_id"):
        env.reset(options={"task_id": "nope"})
    assert env.reset(options={"task_id": "t1"})[1]["task_id"] == "t1"
    env.close()


def test_remote_env__eval_only_flag_crosses_the_network():
    with BackgroundServer(make_backend(EvalOnlyToy), ServerConfig(port=0)) as server:
        env = RemoteEnv(server.url)
        assert env.eval_only and "evaluation only" in env.eval_only_reason
        with pytest.raises(Exception, match="evaluation-only"):
            ensure_trainable(env)
        env.close()


def oracle_for_remote():
    """The helpdesk oracle, rebuilt on the client from the task id the reset reports."""
    state = {}

    def policy(observation, info):
        if "policy" not in state:
            index = int(info["task_id"].rsplit("-", 1)[1])
            state["policy"] = make_policy(make_task("train", index).metadata["hints"], HERMES)
        return state["policy"](observation, info)

    return policy


def test_remote_env__helpdesk_oracle_through_the_runner_matches_local():
    backend = make_backend("mtrl/Helpdesk-v0", env_kwargs={"num_tasks": 10})
    with BackgroundServer(backend, ServerConfig(port=0)) as server:
        jobs = [
            EpisodeJob(
                env=lambda: RemoteEnv(server.url),
                policy=oracle_for_remote(),
                options={"task_index": i},
                tag=i,
            )
            for i in range(10)
        ]
        remote = EpisodeRunner(max_concurrency=10).run_sync(jobs)
        local_jobs = [
            EpisodeJob(
                env=lambda: HelpdeskEnv(num_tasks=10),
                policy=oracle_for_remote(),
                options={"task_index": i},
                tag=i,
            )
            for i in range(10)
        ]
        local = EpisodeRunner(max_concurrency=10).run_sync(local_jobs)
    assert [r.status for r in remote] == ["ok"] * 10
    assert all(r.eval["success"] for r in remote) and all(r.reward == 1.0 for r in remote)
    for r, lo in zip(remote, local, strict=True):
        assert [s["observation"] for s in r.steps] == [s["observation"] for s in lo.steps]
        assert [s["info"] for s in r.steps] == [as_json(s["info"]) for s in lo.steps]
        assert (r.eval, r.final_answer, r.task_id) == (
            as_json(lo.eval),
            lo.final_answer,
            lo.task_id,
        )


# ---- tools-only mode ----------------------------------------------------------------------------


def session_tools() -> Sequence[Tool]:
    """Per-session tools: a counter (state), a picky tool (ToolError) and a broken one."""
    count = {"n": 0}

    def bump(by: int) -> dict:
        """Adds to this session's counter.

        Args:
            by: Amount.
        """
        count["n"] += by
        return {"n": count["n"]}

    def picky(word: str) -> str:
        """Accepts only 'please'.

        Args:
            word: The word.
        """
        if word != "please":
            raise ToolError(f"say please, not {word!r}")
        return "thanks"

    def broken() -> str:
        """Always fails."""
        raise ConnectionError("database down")

    return [Tool.from_function(f) for f in (bump, picky, broken)]


class LocalLoopEnv(TextEnv):
    """The episode loop runs here; the tools live on the server."""

    def __init__(self, server: RemoteTools, **kwargs):
        super().__init__(**kwargs)
        self.server = server

    def tasks(self):
        return (Task(id="count", prompt="Bump the counter.", answer={"n": 3}),)

    def make_tools(self, task, resources: EpisodeResources):
        return remote_tools(self.server, resources)


@pytest.fixture(scope="module")
def tools_server():
    with BackgroundServer(make_backend(tools=session_tools), ServerConfig(port=0)) as server:
        yield server


def test_remote_tools__spec_lists_schemas(tools_server):
    client = RemoteTools(tools_server.url)
    local = [t.schema for t in session_tools()]
    assert client.schemas == local
    with pytest.raises(ValueError, match="serves tools"):
        RemoteEnv(tools_server.url)


def test_remote_tools__local_episode_loop_with_remote_tools(tools_server):
    env = LocalLoopEnv(RemoteTools(tools_server.url))
    for _ in range(2):  # per-session state: each episode counts from zero
        obs, info = env.reset(seed=0)
        assert [t["function"]["name"] for t in info["tools"]] == ["bump", "picky", "broken"]
        _, _, _, _, info = env.step(HERMES.render_calls([("bump", {"by": 1}), ("bump", {"by": 2})]))
        assert [c["result"] for c in info["tool_calls"]] == ['{"n": 1}', '{"n": 3}']
        _, _, _, _, info = env.step(HERMES.render_calls([("picky", {"word": "now"})]))
        assert info["tool_calls"][0]["error"] == "say please, not 'now'"
        _, _, _, _, info = env.step(HERMES.render_calls([("bump", {"by": "x"})]))
        assert "invalid arguments" in info["tool_calls"][0]["error"]  # checked locally
        _, reward, terminated, _, info = env.step('<final_output>{"n": 3}</final_output>')
        assert terminated and reward == 1.0 and info["status"] == "ok"
    env.reset(seed=0)
    result = env.step(HERMES.render_calls([("broken", {})]))
    assert result[4]["status"] == "infra_error" and result[3] and not result[2]
    assert "database down" in result[4]["tool_calls"][0]["error"]
    env.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and tools_server.manager.sessions:
        time.sleep(0.02)
    assert not tools_server.manager.sessions  # each episode's tool session was closed


async def _async_episode(env):
    env.reset(seed=0)
    return await env.astep(HERMES.render_calls([("bump", {"by": 5})]))


def test_remote_tools__async_step_awaits_remote_tools(tools_server):
    import asyncio

    env = LocalLoopEnv(RemoteTools(tools_server.url))
    _, _, _, _, info = asyncio.run(_async_episode(env))
    assert info["tool_calls"][0]["result"] == '{"n": 5}'
    env.close()
