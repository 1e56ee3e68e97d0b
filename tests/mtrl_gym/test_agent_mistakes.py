"""The fault line between the agent and the environment's machinery.

Anything the agent's text or arguments cause (unexpected or missing arguments, wrong types, text
that is not valid Unicode) is the agent's mistake: shown to it as ``Error: ...`` and scored. Only
failures of the environment's own machinery end an episode as ``infra_error``, which the trainer
excludes. If an agent could provoke ``infra_error``, a policy could learn to dodge its penalty.
The fuzz test at the end holds the rule on every built-in environment.
"""

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtrl_gym import EpisodeResources, Task, TextEnv, Tool, ToolInfraError, registered_env_ids
from mtrl_gym.types import text_problem
from tests.mtrl_gym.toy import TASKS, ToyEnv

LONE = "\ud800"  # What json.loads makes of the six ASCII characters \ud800 an agent may write.


def _call(name: str, arguments: Any) -> str:
    # json.dumps escapes the surrogate as ASCII, exactly what an agent's text would hold.
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def _answer(value: Any) -> str:
    return f"<final_output>{json.dumps(value)}</final_output>"


def _loose(fn: Any, name: str = "loose", params: dict | None = None) -> Tool:
    """A tool declared from a production schema that leaves the arguments open."""
    schema = {"name": name, "parameters": params or {"type": "object", "properties": {}}}
    return Tool.from_openai(schema, fn)


def _step_once(env: TextEnv, action: str) -> tuple[float, bool, bool, dict[str, Any]]:
    env.reset(seed=0, options={"task_index": 0})
    _, reward, terminated, truncated, info = env.step(action)
    return reward, terminated, truncated, info


def _assert_agent_error(info: dict[str, Any], terminated: bool, truncated: bool, text: str) -> None:
    assert not terminated and not truncated, info.get("status")
    (call,) = info["tool_calls"]
    assert text in call["error"], call["error"]
    assert info["messages"][0]["content"].startswith("Error: ")
    assert info["counts"]["invalid_tool_calls"] == 1


def test_text_problem__finds_lone_surrogates_in_keys_values_and_nesting() -> None:
    assert text_problem({"a": [1, {"b": "x"}], "c": "é😀"}) is None
    assert "'a[1].b'" in text_problem({"a": [1, {"b": "x" + LONE}]})
    assert "'k\\udfff'" in text_problem({"k\udfff": 1})  # keys are agent text too
    assert "\\udfff at position 2" in text_problem("ab\udfff")


def test_from_openai__extra_argument_is_the_agent_error() -> None:
    # The schema allows any property; the function takes one. Before the rule this reached the
    # body as TypeError and ended the episode as infra_error (excluded instead of scored).
    env = ToyEnv(extra_tools=[_loose(lambda city: f"sunny in {city}")])
    _, terminated, truncated, info = _step_once(env, _call("loose", {"city": "x", "units": "c"}))
    _assert_agent_error(info, terminated, truncated, "unexpected argument 'units'")
    assert "loose takes: city" in info["tool_calls"][0]["error"]


def test_from_openai__missing_argument_is_the_agent_error() -> None:
    env = ToyEnv(extra_tools=[_loose(lambda city, units="c": city)])
    _, terminated, truncated, info = _step_once(env, _call("loose", {"units": "f"}))
    _assert_agent_error(info, terminated, truncated, "missing required argument 'city'")


def test_from_openai__wrong_type_against_the_hints_is_the_agent_error() -> None:
    def double(n: int) -> int:
        return n * 2 + 0  # "ab" * 2 would pass silently; + 0 makes a str raise TypeError

    env = ToyEnv(extra_tools=[_loose(double, "double")])
    _, terminated, truncated, info = _step_once(env, _call("double", {"n": "ab"}))
    _assert_agent_error(info, terminated, truncated, "argument 'n': 'ab' is not of type 'integer'")
    env.reset(seed=0, options={"task_index": 0})
    _, _, _, _, info = env.step(_call("double", {"n": 4}))
    assert info["tool_calls"][0]["result"] == "8"


def test_tool_call__lone_surrogate_argument_is_the_agent_error_and_never_reaches_the_tool() -> None:
    seen: list[str] = []

    def echo(text: str) -> str:
        seen.append(text)
        return text.encode("utf-8").decode()  # what a file, database or socket would do

    env = ToyEnv(extra_tools=[Tool.from_function(echo)])
    _, terminated, truncated, info = _step_once(env, _call("echo", {"text": "a" + LONE}))
    _assert_agent_error(info, terminated, truncated, "lone surrogate \\ud800 at position 1")
    assert seen == []
    # The message is plain text the learner can tokenise and any log can write.
    info["messages"][0]["content"].encode("utf-8")


def test_final_answer__lone_surrogate_is_a_format_error_and_scored() -> None:
    env = ToyEnv()
    reward, terminated, truncated, info = _step_once(env, _answer({"sum": "5" + LONE}))
    assert (terminated, truncated, reward) == (True, False, 0.0)
    assert info["status"] == "format_error"
    assert "lone surrogate \\ud800" in info["final_answer"]["error"]
    assert info["final_answer"]["value"] is None
    json.dumps(info, ensure_ascii=False).encode("utf-8")


def test_tool_bug__exception_on_allowed_arguments_is_still_infra_error() -> None:
    # The other half of the rule: arguments that pass schema, signature and hints reach the body,
    # and the body's own failure is the machinery's.
    def broken(n: int) -> int:
        return {}[n]  # KeyError: a bug, whatever the agent sent

    env = ToyEnv(extra_tools=[_loose(broken, "broken")])
    _, terminated, truncated, info = _step_once(env, _call("broken", {"n": 1}))
    assert (terminated, truncated, info["status"]) == (False, True, "infra_error")


def test_tool__positional_only_parameter_is_refused_at_declaration() -> None:
    def f(a: int, /) -> int:
        return a

    with pytest.raises(ValueError, match="positional-only parameter 'a'"):
        Tool.from_openai({"name": "f"}, f)


def test_tool__kwargs_callable_accepts_any_names() -> None:
    t = _loose(lambda **kw: json.dumps(kw))
    assert t.validate({"anything": 1}) is None


class _SlowGraderEnv(TextEnv):
    """Grading takes ``grade_s`` seconds (think: hidden tests in a sandbox)."""

    def __init__(self, grade_s: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.grade_s = grade_s

    def tasks(self) -> Sequence[Task]:
        return TASKS

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        return ()

    def grade_episode(self, episode: Any) -> Any:
        time.sleep(self.grade_s)
        if episode.answer_value == {"sum": -1}:
            raise ToolInfraError("grader backend down")
        return None


def test_astep__slow_grader_does_not_block_the_event_loop() -> None:
    async def run() -> tuple[float, list[tuple]]:
        envs = [_SlowGraderEnv(0.5) for _ in range(4)]
        for env in envs:
            env.reset(seed=0, options={"task_index": 0})
        lag = 0.0

        async def ticker(stop: asyncio.Event) -> None:
            nonlocal lag
            while not stop.is_set():
                start = time.monotonic()
                await asyncio.sleep(0.01)
                lag = max(lag, time.monotonic() - start - 0.01)

        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        answers = [{"sum": 5}, {"sum": 4}, {"sum": 5}, {"sum": -1}]
        results = await asyncio.gather(
            *(e.astep(_answer(a)) for e, a in zip(envs, answers, strict=True))
        )
        stop.set()
        await tick
        return lag, results

    start = time.monotonic()
    lag, results = asyncio.run(run())
    elapsed = time.monotonic() - start
    # Graded on the loop, four 0.5 s graders would stall it 2 s in a row.
    assert lag < 0.25, lag
    assert elapsed < 1.5, elapsed
    rewards = [r[1] for r in results]
    statuses = [r[4]["status"] for r in results]
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    assert statuses == ["ok", "ok", "ok", "infra_error"]
    assert [r[2] for r in results] == [True, True, True, False]  # infra: truncated, not terminated


def test_astep_and_step__grade_the_same() -> None:
    env_a, env_b = _SlowGraderEnv(0.0), _SlowGraderEnv(0.0)
    for action in (_answer({"sum": 5}), _answer({"sum": -1}), _answer([1]), "<final_output>{"):
        env_a.reset(seed=0, options={"task_index": 0})
        env_b.reset(seed=0, options={"task_index": 0})
        sync = env_a.step(action)
        async_ = asyncio.run(env_b.astep(action))
        assert sync[1:] == async_[1:]


# ---- fuzzing the boundary on every built-in environment ----------------------------------------

_NASTY_TEXT = st.sampled_from(
    [
        LONE,
        "a\udfffb",
        "\ud83d",  # the first half of an emoji's surrogate pair, alone
        "\x00",
        "'; DROP TABLE orders; --",
        "../../../../etc/passwd",
        "import os; os.kill(os.getpid(), 9)",
        "SELECT * FROM sqlite_master",
        "{{}}%s%n",
        "x" * 5000,
        "",
        "é😀",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _NASTY_TEXT,
    st.text(max_size=20),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NASTY_TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def _adversarial_action(draw: st.DrawFn, tool_names: Sequence[str], params: dict) -> str:
    kind = draw(st.sampled_from(["call", "call", "call", "answer", "raw"]))
    if kind == "answer":
        return _answer(draw(st.dictionaries(_NASTY_TEXT | st.text(max_size=8), _VALUES)))
    if kind == "raw":
        return draw(_NASTY_TEXT | st.text(max_size=50))
    name = draw(st.sampled_from([*tool_names, "no_such_tool"]))
    known = list(params.get(name, {}))
    keys = draw(st.lists(st.sampled_from(known) if known else _NASTY_TEXT, max_size=4))
    extra = draw(st.dictionaries(_NASTY_TEXT, _VALUES, max_size=2))
    arguments: Any = {**{k: draw(_VALUES) for k in keys}, **extra}
    if draw(st.integers(0, 9)) == 0:
        arguments = draw(_VALUES)  # not an object at all
    return _call(name, arguments)


# Sandboxed environments start a process per call: fewer examples keep CI bounded. The campaign
# script (benchmarks/bench_hardening.py) runs thousands per environment.
_SLOW_ENVS = {"mtrl/SqlQuery-v0": 8, "mtrl/PythonTests-v0": 8}


@pytest.mark.parametrize("env_id", registered_env_ids())
def test_builtin_env__no_agent_input_escapes_step_or_becomes_infra_error(env_id: str) -> None:
    env = gym.make(env_id).unwrapped
    _, info = env.reset(seed=0)
    names = [t["function"]["name"] for t in info["tools"]]
    params = {
        t["function"]["name"]: t["function"]["parameters"].get("properties", {})
        for t in info["tools"]
    }

    @settings(
        max_examples=_SLOW_ENVS.get(env_id, 40),
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(_adversarial_action(names, params), min_size=1, max_size=4))
    def episode(actions: list[str]) -> None:
        env.reset(seed=0)
        for action in actions:
            _, reward, terminated, truncated, info = env.step(action)
            assert info.get("status") not in ("infra_error", "timeout"), (action, info)
            json.dumps(info, ensure_ascii=False).encode(
                "utf-8"
            )  # everything the learner or a log receives encodes
            if terminated or truncated:
                break

    try:
        episode()
    finally:
        env.close()


@pytest.mark.parametrize(
    ("env_id", "tool", "field"),
    [("mtrl/SqlQuery-v0", "run_query", "sql"), ("mtrl/PythonTests-v0", "run_tests", "code")],
)
def test_sandboxed_env__lone_surrogate_in_call_and_answer_is_the_agents_mistake(
    env_id: str, tool: str, field: str
) -> None:
    # Before the rule: the call ended the episode as infra_error (UnicodeEncodeError in the
    # sandbox) and the answer raised UnicodeEncodeError out of step.
    env = gym.make(env_id).unwrapped
    try:
        env.reset(seed=0)
        text = "SELECT 1 -- " + LONE if field == "sql" else "def f():\n    return '" + LONE + "'\n"
        _, _, terminated, truncated, info = env.step(_call(tool, {field: text}))
        _assert_agent_error(info, terminated, truncated, "lone surrogate \\ud800")
        reward, terminated, truncated, info = env.step(_answer({field: text}))[1:]
        assert (terminated, truncated, info["status"], reward) == (True, False, "format_error", 0.0)
    finally:
        env.close()
