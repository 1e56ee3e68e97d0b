import asyncio
import time

import pytest

from mtrl_gym import EpisodeJob, EpisodeRunner
from tests.mtrl_gym.toy import ASYNC_SLEEPY, SLEEPY, ToyEnv


def scripted(actions):
    """A policy replaying fixed actions, one per turn (a fresh copy per episode)."""
    it = iter(actions)
    return lambda obs, info: next(it)


def call(name, **args):
    import json

    return f'<tool_call>{{"name": "{name}", "arguments": {json.dumps(args)}}}</tool_call>'


ANSWER = '<final_output>{"sum": 5}</final_output>'


@pytest.mark.parametrize("slow_tool", ["sleepy", "async_sleepy"])
def test_runner__a_slow_tool_does_not_delay_fast_episodes(slow_tool):
    # Episode 0 calls a tool that takes 500 ms; seven episodes make three fast calls each.
    jobs = [
        EpisodeJob(
            env=lambda: ToyEnv(extra_tools=(SLEEPY, ASYNC_SLEEPY)),
            policy=scripted([call(slow_tool, seconds=0.5), ANSWER]),
            options={"task_id": "t0"},
            tag="slow",
        )
    ]
    for i in range(7):
        jobs.append(
            EpisodeJob(
                env=lambda: ToyEnv(extra_tools=(SLEEPY, ASYNC_SLEEPY)),
                policy=scripted([call("add", a=2, b=3)] * 3 + [ANSWER]),
                options={"task_id": "t0"},
                tag=i,
            )
        )
    start = time.monotonic()
    results = EpisodeRunner(max_concurrency=8).run_sync(jobs)
    assert [r.tag for r in results] == ["slow", *range(7)]
    assert all(r.status == "ok" and r.reward == 1.0 for r in results)
    slow, fast = results[0], results[1:]
    assert slow.duration_s >= 0.5
    # Every fast episode finished while the slow tool was still running.
    assert max(r.end_s for r in fast) < slow.start_s + 0.5 <= slow.end_s
    assert time.monotonic() - start < 2.0


def test_runner__episode_timeout_reports_timeout_and_frees_the_slot():
    env_slow = ToyEnv(extra_tools=(ASYNC_SLEEPY,))
    jobs = [
        EpisodeJob(env=env_slow, policy=scripted([call("async_sleepy", seconds=5), ANSWER])),
        EpisodeJob(env=ToyEnv, policy=scripted([ANSWER]), options={"task_id": "t0"}),
    ]
    results = EpisodeRunner(max_concurrency=1, episode_timeout_s=0.3).run_sync(jobs)
    assert results[0].status == "timeout" and results[0].truncated and results[0].reward == 0.0
    assert results[1].status == "ok" and results[1].reward == 1.0
    assert results[0].duration_s < 1.0


def test_runner__concurrency_limit_is_respected():
    live, peak = 0, 0

    async def policy(obs, info):
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.02)
        live -= 1
        return ANSWER

    jobs = [EpisodeJob(env=ToyEnv, policy=policy, seed=i) for i in range(12)]
    results = EpisodeRunner(max_concurrency=3).run_sync(jobs)
    assert len(results) == 12 and peak == 3


def test_runner__results_carry_steps_eval_and_final_answer():
    (result,) = EpisodeRunner().run_sync(
        [
            EpisodeJob(
                env=ToyEnv,
                policy=scripted([call("add", a=2, b=3), ANSWER]),
                options={"task_id": "t0"},
            )
        ]
    )
    assert result.task_id == "t0" and len(result.steps) == 2
    assert result.final_answer["value"] == {"sum": 5} and result.eval["success"]
    assert result.steps[0]["info"]["tool_calls"][0]["result"] == "5"


def test_runner__bad_config_is_an_error():
    with pytest.raises(ValueError, match="max_concurrency"):
        EpisodeRunner(max_concurrency=0)
