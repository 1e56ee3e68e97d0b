"""Episode endings: tools that end the episode, free-text answers, ``ended_by`` everywhere."""

import asyncio
import json
from typing import Any

import pytest

from mtrl_gym import (
    EndedBy,
    EndEpisode,
    EpisodeSummary,
    TagAnswerExtractor,
    Tool,
    ToolError,
    check_reproducible,
)
from mtrl_gym.checker import ending_probe_actions
from tests.mtrl_gym.toy import ToyEnv


def call(name: str, **arguments: Any) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def transfer(reason: str) -> str:
    """Hands the chat to a human.

    Args:
        reason: Why.
    """
    return f"Transferred ({reason})."


def submit(total: int) -> EndEpisode:
    """Submits the sum; refuses negative totals.

    Args:
        total: The sum.
    """
    if total < 0:
        raise ToolError("a total cannot be negative")
    return EndEpisode({"submitted": total}, answer={"sum": total})


TRANSFER = Tool.from_function(transfer, ends_episode=True)
SUBMIT = Tool.from_function(submit)


class _Spy:
    def __init__(self) -> None:
        self.summary: EpisodeSummary | None = None

    def __call__(self, episode: EpisodeSummary) -> dict[str, Any]:
        self.summary = episode
        return {"success": True, "ended_by": str(episode.ended_by)}


def _env(**kwargs: Any) -> ToyEnv:
    env = ToyEnv(extra_tools=(TRANSFER, SUBMIT), **kwargs)
    env.reset(seed=0, options={"task_id": "t0"})
    return env


def test_ending_tool__ends_the_episode_ok_and_later_calls_do_not_run() -> None:
    spy = _Spy()
    env = _env(evaluator=spy)
    action = call("add", a=1, b=1) + call("transfer", reason="angry") + call("add", a=2, b=2)
    obs, reward, terminated, truncated, info = env.step(action)
    assert (terminated, truncated, info["status"], info["ended_by"]) == (True, False, "ok", "tool")
    assert reward == 0.0 and info["final_answer"] is None  # scored: no answer was committed
    assert [c["name"] for c in info["tool_calls"]] == ["add", "transfer"]
    assert info["tool_calls"][1]["result"] == "Transferred (angry)." and "Transferred" in obs
    assert info["counts"]["tool_calls"] == 2
    summary = spy.summary
    assert summary is not None and summary.ended_by is EndedBy.TOOL
    assert summary.tool_calls[-1]["name"] == "transfer"
    assert summary.messages[-1] == {
        "role": "tool",
        "content": "Transferred (angry).",
        "tool_call_id": "call_1_1",
        "name": "transfer",
    }


def test_end_episode__a_returned_ending_commits_its_answer_and_is_graded() -> None:
    env = _env()
    _, reward, terminated, _, info = env.step(call("submit", total=5))
    assert (reward, terminated, info["status"], info["ended_by"]) == (1.0, True, "ok", "tool")
    assert info["final_answer"] == {"raw": '{"sum": 5}', "value": {"sum": 5}, "error": None}
    assert info["tool_calls"][0]["result"] == '{"submitted": 5}'
    assert info["eval"]["success"] is True


def test_end_episode__a_tool_error_from_an_ending_tool_lets_the_agent_retry() -> None:
    env = _env()
    _, _, terminated, truncated, info = env.step(call("submit", total=-1))
    assert not (terminated or truncated)
    assert info["tool_calls"][0]["error"] == "a total cannot be negative"
    assert env.step(call("submit", total=4))[1:3] == (0.0, True)  # wrong sum: ended, scored 0


def test_end_episode__an_answer_json_cannot_encode_is_the_tools_bug() -> None:
    bad = Tool.from_function(lambda: EndEpisode("done", answer={1, 2}), name="bad")
    env = ToyEnv(extra_tools=(bad,))
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(call("bad"))
    assert (terminated, truncated, info["status"], info["ended_by"]) == (
        False,
        True,
        "infra_error",
        "failure",
    )


def test_ending_tool__astep_gives_what_step_gives() -> None:
    for action in (call("transfer", reason="x"), call("submit", total=5)):
        sync = _env().step(action)
        async_ = asyncio.run(_env().astep(action))
        assert sync == async_


def test_ended_by__answer_and_limit() -> None:
    env = _env(max_turns=1)
    assert env.step('<final_output>{"sum": 5}</final_output>')[4]["ended_by"] == "answer"
    env.reset(seed=0)
    _, _, _, truncated, info = env.step(call("add", a=1, b=2))
    assert truncated and (info["status"], info["ended_by"]) == ("truncated", "limit")


def test_check_reproducible__probes_ending_tools_with_a_script_of_their_own() -> None:
    env = _env()
    script = ending_probe_actions(env)
    assert script is not None and '"transfer"' in script[-1]
    # probe + ending probe, three plays each.
    assert check_reproducible(lambda: ToyEnv(extra_tools=(TRANSFER, SUBMIT)), seeds=(0,)) == 6


# ---- free-text final answers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("<final_output> The sum is five. </final_output>", "The sum is five."),
        ('<final_output>{"sum": 5}</final_output>', {"sum": 5}),
        ("<final_output>5</final_output>", 5),
        ("<final_output>```\nfive\n```</final_output>", "five"),
    ],
)
def test_tag_answer_extractor__allow_text_takes_prose_and_still_decodes_json(
    text: str, value: Any
) -> None:
    answer = TagAnswerExtractor(require_object=False, allow_text=True)(text)
    assert answer is not None and answer.error is None and answer.value == value


def test_tag_answer_extractor__allow_text_needs_require_object_false() -> None:
    with pytest.raises(ValueError, match="require_object=False"):
        TagAnswerExtractor(allow_text=True)
    unclosed = TagAnswerExtractor(require_object=False, allow_text=True)("<final_output>five")
    assert unclosed is not None and unclosed.error is not None


def test_text_answer__env_scores_a_free_text_final_answer() -> None:
    def reward(episode: EpisodeSummary) -> float:
        return float(episode.answer_value == "five")

    extractor = TagAnswerExtractor(require_object=False, allow_text=True)
    env = _env(answer_extractor=extractor, reward_fn=reward)
    _, r, terminated, _, info = env.step("<final_output>five</final_output>")
    assert (r, terminated, info["status"], info["final_answer"]["value"]) == (
        1.0,
        True,
        "ok",
        "five",
    )
