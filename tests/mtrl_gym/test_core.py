import asyncio
import json
import random

import numpy as np
import pytest

from mtrl_gym import ToolInfraError
from mtrl_gym.core import NO_CALL_FEEDBACK
from mtrl_gym.evaluation import ExactMatchEvaluator, ExactMatchReward
from mtrl_gym.sandbox import SandboxInfraError
from tests.mtrl_gym.toy import ASYNC_SLEEPY, SLEEPY, ToyEnv


def call(name, **arguments):
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call>'


def test_reset__info_has_tools_messages_and_task(toy_env):
    obs, info = toy_env.reset(options={"task_id": "t0"})
    assert info["task_id"] == "t0"
    assert [t["function"]["name"] for t in info["tools"]] == [
        "add",
        "lookup",
        "crash",
        "sleepy",
        "async_sleepy",
    ]
    assert info["tools"][0] == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds two integers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "description": "First addend."},
                    "b": {"type": "integer", "description": "Second addend."},
                },
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    }
    assert info["messages"] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Add 2 and 3."},
    ]
    assert obs.startswith("Be exact.") and obs.endswith("Add 2 and 3.")
    assert info["tools_prompt"] and info["tools_prompt"] in obs
    assert all(name in info["tools_prompt"] for name in ("add", "lookup", "crash"))


def test_step__tool_call_result_and_final_answer(toy_env):
    toy_env.reset(options={"task_id": "t0"})
    obs, reward, terminated, truncated, info = toy_env.step("I'll add. " + call("add", a=2, b=3))
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_calls"] == [
        {
            "id": "call_1_0",
            "name": "add",
            "arguments": {"a": 2, "b": 3},
            "result": "5",
            "error": None,
        }
    ]
    assert info["messages"] == [
        {"role": "tool", "content": "5", "tool_call_id": "call_1_0", "name": "add"}
    ]
    assert "5" in obs and info["format_error"] is False
    assert "status" not in info
    obs, reward, terminated, truncated, info = toy_env.step(
        '<final_output>{"sum": 5}</final_output>'
    )
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["status"] == "ok"
    assert info["final_answer"]["value"] == {"sum": 5}
    assert info["eval"]["success"] is True
    assert info["counts"] == {
        "tool_calls": 1,
        "invalid_tool_calls": 0,
        "format_errors": 0,
        "user_turns": 0,
    }


def test_step__several_calls_in_one_turn_run_in_order(toy_env):
    toy_env.reset(options={"task_id": "t0"})
    _, _, _, _, info = toy_env.step(call("add", a=1, b=1) + call("lookup", key="k"))
    assert [c["id"] for c in info["tool_calls"]] == ["call_1_0", "call_1_1"]
    assert [c["result"] for c in info["tool_calls"]] == ["2", '{"key": "k", "value": 7}']


def test_step__agent_mistakes_are_errors_and_the_episode_goes_on(toy_env):
    toy_env.reset(options={"task_id": "t0"})
    action = (
        call("nope")
        + call("add", a=1, b="2")
        + "<tool_call>{not json</tool_call>"
        + call("lookup", key="zz")
    )
    obs, reward, terminated, truncated, info = toy_env.step(action)
    assert not terminated and not truncated
    errors = [c["error"] for c in info["tool_calls"]]
    assert errors[0].startswith("unknown tool 'nope'; available tools: add, async_sleepy")
    assert errors[1] == "invalid arguments for add: argument 'b': '2' is not of type 'integer'"
    assert errors[2].startswith("malformed tool call:")
    assert errors[3] == "no such key 'zz'"  # a ToolError raised by the tool itself
    assert all(m["content"].startswith("Error: ") for m in info["messages"])
    # Three calls were rejected before running; the fourth ran and reported a lookup miss.
    assert info["counts"] == {
        "tool_calls": 4,
        "invalid_tool_calls": 3,
        "format_errors": 0,
        "user_turns": 0,
    }
    assert obs.count("Error: ") == 4


def test_step__no_call_no_answer_is_format_feedback(toy_env):
    toy_env.reset(seed=0)
    obs, reward, terminated, truncated, info = toy_env.step("hmm, let me think")
    assert obs == NO_CALL_FEEDBACK.format()
    assert info["format_error"] is True and info["messages"][0]["role"] == "user"
    assert info["counts"]["format_errors"] == 1 and not (terminated or truncated)


def test_step__malformed_final_answer_ends_with_format_error(toy_env):
    toy_env.reset(options={"task_id": "t0"})
    _, reward, terminated, truncated, info = toy_env.step("<final_output>{sum: 5}</final_output>")
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert info["status"] == "format_error"
    assert info["final_answer"]["error"].startswith("final answer is not valid JSON")
    assert info["eval"]["success"] is False


def test_step__wrong_answer_scores_zero_and_fails_eval(toy_env):
    toy_env.reset(options={"task_id": "t1"})
    _, reward, terminated, _, info = toy_env.step('<final_output>{"sum": 14}</final_output>')
    assert reward == 0.0 and terminated and info["status"] == "ok"
    assert info["eval"] == {
        "success": False,
        "field_accuracy": 0.0,
        "fields": {"sum": False},
        "status": "ok",
    }


def test_step__tool_exception_is_infra_error_not_a_zero_score(toy_env):
    toy_env.reset(seed=0)
    _, reward, terminated, truncated, info = toy_env.step(call("crash") + call("add", a=1, b=2))
    assert info["status"] == "infra_error" and truncated and not terminated
    assert "ConnectionError" in info["tool_calls"][0]["error"]
    assert len(info["tool_calls"]) == 1  # later calls are not run after an infra failure


class Raising:
    """An evaluator or reward function that counts its calls and raises ``error``."""

    def __init__(self, error):
        self.error, self.calls = error, 0

    def __call__(self, episode):
        self.calls += 1
        raise self.error


class Counting:
    """Wraps an evaluator or reward function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, episode):
        self.calls += 1
        return self.fn(episode)


def run_step(env, action, runner):
    return env.step(action) if runner == "step" else asyncio.run(env.astep(action))


GRADING_INFRA_EVAL = {
    "success": False,
    "status": "infra_error",
    "error": "ToolInfraError: grader unreachable",
}


@pytest.mark.parametrize("runner", ["step", "astep"])
def test_step__evaluator_infra_failure_is_infra_error(runner):
    evaluator, reward_fn = (
        Raising(ToolInfraError("grader unreachable")),
        Counting(ExactMatchReward()),
    )
    env = ToyEnv(evaluator=evaluator, reward_fn=reward_fn)
    env.reset(options={"task_id": "t0"})
    _, reward, terminated, truncated, info = run_step(
        env, '<final_output>{"sum": 5}</final_output>', runner
    )
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    assert info["eval"] == GRADING_INFRA_EVAL
    assert info["final_answer"] == {"raw": '{"sum": 5}', "value": {"sum": 5}, "error": None}
    assert (evaluator.calls, reward_fn.calls) == (1, 0)  # no reward for an ungraded episode
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("again")


@pytest.mark.parametrize("runner", ["step", "astep"])
def test_step__reward_infra_failure_is_infra_error(runner):
    evaluator, reward_fn = (
        Counting(ExactMatchEvaluator()),
        Raising(ToolInfraError("grader unreachable")),
    )
    env = ToyEnv(evaluator=evaluator, reward_fn=reward_fn)
    env.reset(options={"task_id": "t0"})
    _, reward, terminated, truncated, info = run_step(
        env, '<final_output>{"sum": 5}</final_output>', runner
    )
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    assert info["eval"] == GRADING_INFRA_EVAL  # not the evaluator's success
    assert info["final_answer"]["value"] == {"sum": 5}
    assert (evaluator.calls, reward_fn.calls) == (1, 1)


def test_step__sandbox_infra_error_in_grading_is_a_tool_infra_error():
    assert issubclass(SandboxInfraError, ToolInfraError)
    env = ToyEnv(evaluator=Raising(SandboxInfraError("could not start the sandbox")))
    env.reset(options={"task_id": "t0"})
    _, reward, terminated, truncated, info = env.step("<final_output>{}</final_output>")
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    assert info["eval"]["error"] == "SandboxInfraError: could not start the sandbox"


@pytest.mark.parametrize("runner", ["step", "astep"])
@pytest.mark.parametrize("where", ["evaluator", "reward_fn"])
def test_step__other_grading_exceptions_are_bugs_and_propagate(runner, where):
    env = ToyEnv(**{where: Raising(ValueError("grader bug"))})
    env.reset(options={"task_id": "t0"})
    with pytest.raises(ValueError, match="grader bug"):
        run_step(env, '<final_output>{"sum": 5}</final_output>', runner)


@pytest.mark.parametrize("tool_name", ["sleepy", "async_sleepy"])
def test_step__tool_timeout_is_timeout_status(tool_name):
    env = ToyEnv(extra_tools=(SLEEPY, ASYNC_SLEEPY), tool_timeout_s=0.2)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(call(tool_name, seconds=2))
    assert info["status"] == "timeout" and truncated and not terminated
    assert "timed out after 0.2 s" in info["tool_calls"][0]["error"]
    env.close()


def test_step__max_turns_truncates(toy_env):
    env = ToyEnv(max_turns=2)
    env.reset(seed=0)
    assert not env.step(call("add", a=1, b=1))[3]
    _, reward, terminated, truncated, info = env.step(call("add", a=1, b=1))
    assert truncated and not terminated and info["status"] == "truncated" and reward == 0.0


def test_step__character_and_token_budgets_truncate():
    env = ToyEnv(max_episode_chars=200)
    obs, _ = env.reset(seed=0)
    _, _, _, truncated, info = env.step("x" * 200)
    assert truncated and info["status"] == "truncated"
    env = ToyEnv(max_episode_tokens=1000, token_counter=lambda s: len(s.split()))
    env.reset(options={"task_id": "t0"})  # the prompt and the tools take a few hundred words
    _, _, _, truncated, _ = env.step(call("add", a=1, b=1))
    assert not truncated
    _, _, _, truncated, info = env.step(" ".join(["word"] * 1000))
    assert truncated and info["status"] == "truncated"


def test_step__wall_clock_limit_truncates_with_timeout():
    env = ToyEnv(extra_tools=(SLEEPY,), time_limit_s=0.1)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(call("sleepy", seconds=0.2))
    assert truncated and not terminated and info["status"] == "timeout"


def test_step__too_many_calls_in_one_turn_are_rejected():
    env = ToyEnv(max_tool_calls_per_turn=2)
    env.reset(seed=0)
    _, _, _, _, info = env.step(call("add", a=1, b=1) * 3)
    assert [c["error"] is None for c in info["tool_calls"]] == [True, True, False]
    assert info["tool_calls"][2]["error"].startswith("too many tool calls")


def test_step__after_the_end_is_an_error(toy_env):
    toy_env.reset(seed=0)
    toy_env.step("<final_output>{}</final_output>")
    with pytest.raises(RuntimeError, match="call reset"):
        toy_env.step("again")
    with pytest.raises(TypeError):
        toy_env.reset(seed=0) and toy_env.step(b"bytes")


def test_astep__equals_step(toy_env):
    actions = [
        call("add", a=2, b=3) + call("lookup", key="x"),
        call("async_sleepy", seconds=0.01),
        "thinking",
        '<final_output>{"sum": 5}</final_output>',
    ]
    sync = [toy_env.reset(options={"task_id": "t0"})] + [toy_env.step(a) for a in actions]

    async def play():
        out = [toy_env.reset(options={"task_id": "t0"})]
        for a in actions:
            out.append(await toy_env.astep(a))
        return out

    assert asyncio.run(play()) == sync


def test_reset__same_seed_same_task_and_global_rngs_untouched(toy_env):
    random.seed(123)
    np.random.seed(123)
    py_state, np_state = random.getstate(), np.random.get_state()[1].copy()
    ids = {toy_env.reset(seed=s)[1]["task_id"] for s in range(20)}
    assert ids == {"t0", "t1", "t2"}
    assert toy_env.reset(seed=5)[1]["task_id"] == toy_env.reset(seed=5)[1]["task_id"]
    toy_env.step(call("add", a=1, b=2))
    assert random.getstate() == py_state
    assert (np.random.get_state()[1] == np_state).all()


def test_reset__task_selection_errors(toy_env):
    with pytest.raises(ValueError, match="unknown task_id 'zz'"):
        toy_env.reset(options={"task_id": "zz"})
    with pytest.raises(ValueError, match=r"task_index must be an int in \[0, 3\)"):
        toy_env.reset(options={"task_index": 3})


def test_render__ansi_transcript():
    env = ToyEnv(render_mode="ansi")
    env.reset(options={"task_id": "t0"})
    env.step(call("add", a=2, b=3))
    text = env.render()
    assert (
        "[user] Add 2 and 3." in text and "[assistant] <tool_call>" in text and "[tool] 5" in text
    )


def test_init__bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="max_turns"):
        ToyEnv(max_turns=0)
    with pytest.raises(ValueError, match="token_counter"):
        ToyEnv(max_episode_tokens=10)
    with pytest.raises(ValueError, match="unknown tool-call format|Unknown|unknown"):
        ToyEnv(tool_format="xml")


@pytest.mark.parametrize("fmt", ["hermes", "json", "react"])
def test_step__every_format_drives_the_same_episode(fmt):
    env = ToyEnv(tool_format=fmt)
    obs, info = env.reset(options={"task_id": "t0"})
    assert "add" in info["tools_prompt"]
    obs, _, _, _, info = env.step(env.format.render_calls([("add", {"a": 2, "b": 3})]))
    assert info["tool_calls"][0]["result"] == "5" and "5" in obs
    _, reward, *_ = env.step('<final_output>{"sum": 5}</final_output>')
    assert reward == 1.0


def test_diagnostics__opt_in_only(toy_env):
    _, info = toy_env.reset(seed=0)
    assert "diagnostics" not in info
    env = ToyEnv(diagnostics=True)
    _, info = env.reset(seed=0)
    assert "elapsed_s" in info["diagnostics"]
    assert "elapsed_s" in env.step("x")[4]["diagnostics"]


def test_ensure_trainable__refuses_eval_only_envs():
    import gymnasium as gym

    from mtrl_gym import EpisodeJob, EpisodeRunner, EvalOnlyError, ensure_trainable

    ensure_trainable(gym.make("mtrl/OrderLookup-v0"))  # ordinary envs pass

    class Benchmark(ToyEnv):
        eval_only = True
        eval_only_reason = "CC BY-NC 4.0, evaluation only"

    with pytest.raises(EvalOnlyError, match="cannot be used for training: CC BY-NC 4.0"):
        ensure_trainable(Benchmark())
    (result,) = EpisodeRunner().run_sync([EpisodeJob(env=Benchmark, policy=lambda o, i: "x")])
    assert result.eval_only


def test_unlisted_tools__callable_but_not_advertised():
    from mtrl_gym import Tool

    secret = Tool.from_function(lambda: "hidden result", name="secret", description="Hidden.")

    class Hidden(ToyEnv):
        def unlisted_tools(self, task):
            return (secret,)

        def unknown_tool_error(self, name):
            return f"no tool {name}"

    env = Hidden()
    obs, info = env.reset(seed=0)
    assert "secret" not in [t["function"]["name"] for t in info["tools"]]
    assert "secret" not in info["tools_prompt"]
    _, _, _, _, info = env.step(call("secret") + call("nope"))
    assert info["tool_calls"][0]["result"] == "hidden result"
    assert info["tool_calls"][1]["error"] == "no tool nope"


def test_grade_episode__runs_once_and_is_shared_by_reward_and_evaluator():
    from mtrl_gym import ToolInfraError

    calls = []

    class Graded(ToyEnv):
        fail = False

        def grade_episode(self, episode):
            calls.append(episode.task.id)
            if self.fail:
                raise ToolInfraError("grader down")
            return {"score": 0.25}

    env = Graded(
        reward_fn=lambda ep: ep.grade["score"],
        evaluator=lambda ep: {"success": ep.grade["score"] > 0.5, "grade": ep.grade},
    )
    env.reset(options={"task_id": "t0"})
    _, reward, _, _, info = env.step("<final_output>{}</final_output>")
    assert calls == ["t0"] and reward == 0.25
    assert info["eval"] == {"success": False, "grade": {"score": 0.25}}
    env.fail = True
    env.reset(options={"task_id": "t1"})
    _, reward, terminated, truncated, info = env.step("<final_output>{}</final_output>")
    assert (info["status"], reward, terminated, truncated) == ("infra_error", 0.0, False, True)
    assert info["eval"]["error"] == "ToolInfraError: grader down"
