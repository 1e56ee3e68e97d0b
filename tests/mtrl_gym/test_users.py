"""User turns: scripted, recorded and model users, who is at fault, reproducibility."""

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mtrl_gym import (
    EndedBy,
    EpisodeJob,
    EpisodeRunner,
    EpisodeSummary,
    ModelUser,
    RecordedUser,
    ReproducibilityError,
    ScriptedUser,
    UserRecorder,
    UserRecording,
    UserReply,
    check_reproducible,
)
from mtrl_gym.users import DEFAULT_FALLBACK, canonical_text
from tests.mtrl_gym.fake_chat import FakeChat, completion, fake_chat_server
from tests.mtrl_gym.toy import ToyEnv

LONE = "\ud800"


def call(name: str, **arguments: Any) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


class _Spy:
    """A reward function that keeps the summary it graded."""

    def __init__(self) -> None:
        self.summary: EpisodeSummary | None = None

    def __call__(self, episode: EpisodeSummary) -> float:
        self.summary = episode
        return 0.5


def _env(user: Any, **kwargs: Any) -> ToyEnv:
    env = ToyEnv(user=user, **kwargs)
    env.reset(seed=0, options={"task_id": "t0"})
    return env


# ---- scripted users and the step contract --------------------------------------------------------


def test_scripted_user__reply_is_the_next_observation_and_a_user_message() -> None:
    env = _env(ScriptedUser(["It is 2 and 3.", "Yes."]))
    obs, reward, terminated, truncated, info = env.step("Which numbers should I add?")
    assert (obs, reward, terminated, truncated) == ("It is 2 and 3.", 0.0, False, False)
    assert info["messages"] == [{"role": "user", "content": "It is 2 and 3."}]
    assert info["format_error"] is False and info["tool_calls"] == []
    assert info["user"] == {"done": False, "log": None}
    assert info["counts"] == {
        "tool_calls": 0,
        "invalid_tool_calls": 0,
        "format_errors": 0,
        "user_turns": 1,
    }
    assert env.transcript[-2:] == [
        {"role": "assistant", "content": "Which numbers should I add?"},
        {"role": "user", "content": "It is 2 and 3."},
    ]


def test_scripted_user__function_sees_only_the_conversation() -> None:
    seen: list[list[dict[str, str]]] = []

    def reply(conversation: Any, task: Any) -> str:
        seen.append([dict(m) for m in conversation])
        return f"reply {len(seen)} for {task.id}"

    env = _env(ScriptedUser(reply))
    env.step(call("add", a=2, b=3))  # a tool call never reaches the user
    obs = env.step("  The sum is five.  ")[0]
    assert obs == "reply 1 for t0"
    # No system prompt, no tool call or result; the agent's text as the format parsed it.
    assert seen == [
        [
            {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "The sum is five."},
        ]
    ]


def test_user__ends_conversation_terminates_and_grades_with_the_transcript() -> None:
    spy = _Spy()
    user = ScriptedUser(["Thanks.", UserReply("Great, bye!", done=True)])
    env = _env(user, reward_fn=spy, answer_from_last_message=True)
    env.step("Hello, what do you need?")
    obs, reward, terminated, truncated, info = env.step("The sum is 5.")
    assert (obs, reward, terminated, truncated) == ("Great, bye!", 0.5, True, False)
    assert info["status"] == "ok" and info["ended_by"] == "user"
    assert info["user"] == {"done": True, "log": None}
    assert info["final_answer"] == {"raw": "The sum is 5.", "value": "The sum is 5.", "error": None}
    summary = spy.summary
    assert summary is not None
    assert summary.ended_by is EndedBy.USER and summary.user_turns == 2
    assert summary.final_answer is not None and summary.answer_value == "The sum is 5."
    assert [m["role"] for m in summary.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert summary.messages[-1]["content"] == "Great, bye!"


def test_user__exhausted_script_ends_without_an_empty_message_or_answer() -> None:
    env = _env(ScriptedUser([]))
    obs, reward, terminated, truncated, info = env.step("Anything else?")
    assert (obs, terminated, truncated, info["messages"]) == ("", True, False, [])
    assert info["final_answer"] is None and info["ended_by"] == "user"
    assert info["status"] == "ok" and reward == 0.0  # graded: the expected answer is missing


def test_user__without_a_user_a_plain_message_is_still_a_format_error() -> None:
    env = _env(None)
    _, _, _, _, info = env.step("Which numbers?")
    assert info["format_error"] is True and info["counts"]["user_turns"] == 0
    assert "user" not in info


def test_user__invalid_unicode_is_the_agents_mistake_and_never_reaches_the_user() -> None:
    asked: list[Any] = []
    env = _env(ScriptedUser(lambda conversation, task: asked.append(1) or "hi"))
    obs, _, terminated, truncated, info = env.step("a" + LONE)
    assert asked == [] and not (terminated or truncated)
    assert info["format_error"] is True and info["counts"]["format_errors"] == 1
    assert obs.startswith("Error: the text holds a lone surrogate \\ud800")


def test_user__simulator_failure_is_infra_error_not_a_score() -> None:
    def broken(conversation: Any, task: Any) -> str:
        raise ConnectionError("user service down")

    env = _env(ScriptedUser(broken))
    _, reward, terminated, truncated, info = env.step("Hello?")
    assert (reward, terminated, truncated, info["status"]) == (0.0, False, True, "infra_error")
    assert info["ended_by"] == "failure"
    assert "user service down" in info["user"]["error"]


def test_user__astep_gives_what_step_gives() -> None:
    user = ScriptedUser(["One.", UserReply("Bye.", done=True)])
    sync_env, async_env = _env(user), _env(user)
    for action in ("Hi?", "Done."):
        sync = sync_env.step(action)
        async_ = asyncio.run(async_env.astep(action))
        assert sync == async_


def test_user__reset_starts_a_fresh_conversation() -> None:
    env = _env(ScriptedUser(["first", "second"]))
    assert env.step("a?")[0] == "first"
    env.reset(seed=0, options={"task_id": "t0"})
    assert env.step("a?")[0] == "first"


# ---- recorded users ------------------------------------------------------------------------------


def test_recorded_user__replies_by_message_then_turn_and_falls_back(tmp_path: Any) -> None:
    path = tmp_path / "user.jsonl"
    records = [
        {"message": "What are the numbers?", "reply": "2 and 3.", "task_id": "t0"},
        {"message": "What are the numbers?", "reply": "Not this task's."},
        {"turn": 1, "reply": "Turn one."},
        {"turn": 2, "reply": "Bye.", "done": True},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    env = _env(RecordedUser(path))
    _, _, _, _, info = env.step("What are   the numbers?\n")  # canonical text: same key
    assert info["messages"][0]["content"] == "2 and 3."
    assert info["user"]["log"] == {"recorded": True, "key": "message", "turn": 0}
    _, _, _, _, info = env.step("Something else entirely.")
    assert info["messages"][0]["content"] == "Turn one."
    assert info["user"]["log"] == {"recorded": True, "key": "turn", "turn": 1}
    _, _, terminated, _, info = env.step("Anything more?")
    assert terminated and info["ended_by"] == "user" and info["status"] == "ok"


def test_recorded_user__unrecorded_message_gets_the_fallback_and_stays_scored() -> None:
    recording = UserRecording.from_records([{"turn": 0, "reply": "Hi."}])
    env = _env(RecordedUser(recording))
    env.step("hello")
    obs, _, terminated, truncated, info = env.step("off script")
    assert (obs, terminated, truncated) == (DEFAULT_FALLBACK, False, False)
    assert info["user"]["log"] == {"recorded": False, "turn": 1}
    ended = _env(RecordedUser(recording, fallback=UserReply("", done=True)))
    ended.step("hello")
    _, _, terminated, _, info = ended.step("off script")
    assert terminated and info["status"] == "ok"  # never infra_error: the agent chose the words


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([{"turn": 0}], "needs a string 'reply'"),
        ([{"turn": 0, "message": "x", "reply": "r"}], "exactly one of 'message' or 'turn'"),
        ([{"reply": "r"}], "exactly one of 'message' or 'turn'"),
        ([{"turn": -1, "reply": "r"}], "'turn' must be an int >= 0"),
        ([{"turn": 0, "reply": "r", "done": "yes"}], "'done' must be a boolean"),
        ([{"turn": 0, "reply": "r", "extra": 1}], "unknown fields"),
        ([{"turn": 0, "reply": "a"}, {"turn": 0, "reply": "b"}], "conflicting recorded replies"),
    ],
)
def test_user_recording__bad_records_are_clear_errors(records: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UserRecording.from_records(records)


def test_user_recording__json_list_loads_and_duplicates_that_agree_are_one(tmp_path: Any) -> None:
    path = tmp_path / "user.json"
    path.write_text(json.dumps([{"turn": 0, "reply": "a"}, {"turn": 0, "reply": "a"}]))
    assert len(UserRecording.load(path)) == 1
    assert canonical_text(" a \n\t b ") == "a b"


def test_user_recorder__a_recorded_episode_replays_identically(tmp_path: Any) -> None:
    recorder = UserRecorder(ScriptedUser(lambda c, t: f"You said {len(c)} things."))
    actions = ["Hi.", call("add", a=2, b=3), "Sum is 5?", '<final_output>{"sum": 5}</final_output>']

    def play(env: ToyEnv) -> list[tuple]:
        return [env.step(a)[:4] for a in actions]

    live = play(_env(recorder))
    path = tmp_path / "recorded.jsonl"
    recorder.write_jsonl(path)
    assert [r["message"] for r in recorder.records()] == ["Hi.", "Sum is 5?"]
    assert play(_env(RecordedUser(path))) == live


# ---- a model user behind a chat-completions endpoint (a local fake server) ---------------------


@pytest.fixture
def chat() -> Iterator[FakeChat]:
    with fake_chat_server() as server:
        yield server


def test_model_user__talks_chat_completions_with_seed_temperature_and_flipped_roles(
    chat: FakeChat,
) -> None:
    replies = iter(["They are 2 and 3.", "Thanks! ###STOP###"])
    chat.respond = lambda body: (200, completion(next(replies)))
    user = ModelUser(
        base_url=chat.url, model="tiny-user", instructions="You want 2+3.", api_key="k"
    )
    env = _env(user)
    obs, _, _, _, info = env.step("Which numbers?")
    assert obs == "They are 2 and 3."
    log = info["user"]["log"]
    assert log["model"] == "tiny-user" and log["temperature"] == 0.0 and log["messages"] == 4
    assert log["usage"]["total_tokens"] == 13 and "id" not in log
    assert log["finish_reason"] == "stop"
    request = chat.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer k"
    assert (request["model"], request["temperature"], request["seed"]) == (
        "tiny-user",
        0.0,
        log["seed"],
    )
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
    assert request["messages"][0]["content"].startswith("You want 2+3.")
    assert request["messages"][2:] == [
        {"role": "assistant", "content": "Add 2 and 3."},  # the user's own opening
        {"role": "user", "content": "Which numbers?"},  # the agent, as the model's user
    ]
    obs, _, terminated, _, info = env.step("It is 5.")
    assert (obs, terminated, info["ended_by"], info["status"]) == ("Thanks!", True, "user", "ok")


def test_model_user__seed_follows_the_reset_seed(chat: FakeChat) -> None:
    env = ToyEnv(user=ModelUser(base_url=chat.url, model="m", instructions="x"))
    for seed in (0, 0, 1):
        env.reset(seed=seed, options={"task_id": "t0"})
        env.step("hi")
    seeds = [r["seed"] for r in chat.requests]
    assert seeds[0] == seeds[1] != seeds[2]
    fixed = ToyEnv(user=ModelUser(base_url=chat.url, model="m", instructions="x", seed=7))
    fixed.reset(seed=3)
    fixed.step("hi")
    assert chat.requests[-1]["seed"] == 7


@pytest.mark.parametrize(
    "respond",
    [
        lambda body: (500, {"error": "overloaded"}),
        lambda body: (400, {"error": "context length exceeded"}),
        lambda body: (200, b"not json"),
        lambda body: (200, {"choices": []}),
        lambda body: (200, {"choices": [{"message": {"content": None}}]}),
    ],
)
def test_model_user__endpoint_failure_is_infra_error(chat: FakeChat, respond: Any) -> None:
    chat.respond = respond
    env = _env(ModelUser(base_url=chat.url, model="m", instructions="x"))
    _, reward, terminated, truncated, info = env.step("hi")
    assert (reward, terminated, truncated, info["status"]) == (0.0, False, True, "infra_error")
    assert "UserInfraError" in info["user"]["error"]


def test_model_user__unreachable_endpoint_is_infra_error() -> None:
    user = ModelUser(base_url="http://127.0.0.1:9/v1", model="m", instructions="x", timeout_s=2)
    _, _, _, truncated, info = _env(user).step("hi")
    assert truncated and info["status"] == "infra_error" and "unreachable" in info["user"]["error"]


def test_model_user__instructions_default_to_task_metadata() -> None:
    user = ModelUser(base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(ValueError, match="user_instructions"):
        ToyEnv(user=user).reset(seed=0)


# ---- reproducibility -----------------------------------------------------------------------------


def test_check_reproducible__compares_user_turns() -> None:
    counter = itertools.count()
    user = ScriptedUser(lambda conversation, task: f"reply {next(counter)}")
    with pytest.raises(ReproducibilityError, match=r"info\.messages\[0\]\.content: 'reply 0'"):
        check_reproducible(lambda: ToyEnv(user=user), seeds=(0,))
    pinned = ScriptedUser(lambda conversation, task: f"you said {conversation[-1]['content']}")
    assert check_reproducible(lambda: ToyEnv(user=pinned), seeds=(0,)) == 3


def test_check_reproducible__refuses_a_model_user_that_is_not_pinned(chat: FakeChat) -> None:
    hot = ModelUser(base_url=chat.url, model="m", instructions="x", temperature=0.7)
    with pytest.raises(ReproducibilityError, match="not reproducible"):
        check_reproducible(lambda: ToyEnv(user=hot), seeds=(0,))
    cold = ModelUser(base_url=chat.url, model="m", instructions="x")
    assert check_reproducible(lambda: ToyEnv(user=cold), seeds=(0,)) == 3


def test_runner__user_turns_run_through_astep_and_report_ended_by() -> None:
    def slow_reply(conversation: Any, task: Any) -> UserReply:
        time.sleep(0.2)  # a slow endpoint: must not hold up the other episodes' event loop
        return UserReply("Bye.", done=True)

    def policy(observation: str, info: dict[str, Any]) -> str:

        return "Can I help?"

    jobs = [
        EpisodeJob(env=lambda: ToyEnv(user=ScriptedUser(slow_reply)), policy=policy, seed=i)
        for i in range(4)
    ]
    start = time.monotonic()
    results = EpisodeRunner(max_concurrency=4).run_sync(jobs)
    assert time.monotonic() - start < 0.7  # four 0.2 s replies in parallel, not in series
    assert [(r.status, r.terminated, r.ended_by) for r in results] == [("ok", True, "user")] * 4
    assert all(r.steps[-1]["observation"] == "Bye." for r in results)


def test_model_user__stand_in_server_speaks_what_the_openai_sdk_speaks(chat: FakeChat) -> None:
    # The model-user tests run against a server written here; the official client checks it:
    # the SDK parses its replies, and ModelUser sends the request the SDK sends.
    openai = pytest.importorskip("openai", reason="the openai SDK is in the test extra")
    chat.respond = lambda body: (200, completion("I want a refund."))
    client = openai.OpenAI(base_url=chat.url, api_key="k", max_retries=0)
    user = ModelUser(base_url=chat.url, model="m", instructions="x", api_key="k", seed=7)
    env = _env(user)
    obs, *_ = env.step("How can I help?")
    ours = chat.requests[-1]
    sdk = client.chat.completions.create(
        model="m", messages=ours["messages"], temperature=0.0, seed=7
    )
    theirs = chat.requests[-1]
    assert sdk.choices[0].message.content == obs == "I want a refund."
    assert sdk.usage is not None and sdk.usage.total_tokens == 13
    assert (ours["path"], ours["auth"]) == (theirs["path"], theirs["auth"])
    assert {k: ours[k] for k in theirs} == theirs  # every field the SDK sends, equal
