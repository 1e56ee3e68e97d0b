"""SupportChat: the scripted customer, the transfer tool, and other users standing in."""

import json
import re
from typing import Any

import gymnasium as gym
import pytest

from mtrl_envs.support_chat.customer import CONFUSED, GIVE_UP, KINDS, customer_reply
from mtrl_envs.support_chat.env import TRANSFERRED, SupportChatEnv
from mtrl_gym import (
    ModelUser,
    RecordedUser,
    UserRecorder,
    UserRecording,
    check_reproducible,
    play,
)
from tests.mtrl_gym.fake_chat import completion, fake_chat_server


def call(env: SupportChatEnv, name: str, **arguments: Any) -> str:
    return env.format.render_calls([(name, arguments)])


def _env(kind: str, **kwargs: Any) -> SupportChatEnv:
    env = SupportChatEnv(**kwargs)
    env.reset(seed=0, options={"task_index": KINDS.index(kind)})
    return env


def _ask_and_look_up(env: SupportChatEnv) -> dict[str, Any]:
    customer = env.task.metadata["customer"]
    obs = env.step("Could you give me your order number and the email on the order?")[0]
    assert obs == f"My order number is {customer['order_id']}. The email on the order is " + (
        f"{customer['email']}."
    )
    assert env.step("What can I help you with?")[0] == customer["request"]
    info = env.step(
        call(env, "lookup_order", order_id=customer["order_id"], email=customer["email"])
    )[4]
    return json.loads(info["tool_calls"][0]["result"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_support_chat__oracle_solves_every_task_with_two_user_turns(split: str) -> None:
    env = SupportChatEnv(split=split)
    for i in range(len(env.tasks())):
        last = play(env, seed=None, options={"task_index": i}, oracle=True)[-1]
        assert (last["reward"], last["terminated"], last["info"]["status"]) == (1.0, True, "ok")
        assert last["info"]["eval"]["user_turns"] == 2
        transfer = env.task.answer == {"action": "transfer"}
        assert last["info"]["ended_by"] == ("tool" if transfer else "answer")


def test_support_chat__splits_are_disjoint_and_every_kind_is_in_each() -> None:
    train, test = SupportChatEnv(split="train").tasks(), SupportChatEnv(split="test").tasks()
    orders = [{o["order_id"] + o["email"] for o in t.metadata["orders"]} for t in train]
    assert not any(
        {o["order_id"] + o["email"] for o in t.metadata["orders"]} & s for t in test for s in orders
    )
    assert {t.metadata["kind"] for t in test} == set(KINDS)
    with pytest.raises(ValueError, match="split"):
        SupportChatEnv(split="validation")


def test_support_chat__customer_answers_only_what_is_asked_then_gives_up() -> None:
    env = _env("status")
    obs, _, _, _, info = env.step("Hello there!")
    assert obs == CONFUSED and info["counts"]["user_turns"] == 1
    assert env.step("What can I help you with?")[0] == env.task.metadata["customer"]["request"]
    env.step("Lovely weather.")
    obs, reward, terminated, _, info = env.step("Hmm.")
    assert (obs, reward, terminated) == (GIVE_UP, 0.0, True)
    assert (info["status"], info["ended_by"], info["eval"]["success"]) == ("ok", "user", False)


def test_support_chat__lookup_needs_the_matching_email() -> None:
    env = _env("status")
    order_id = env.task.metadata["customer"]["order_id"]
    info = env.step(call(env, "lookup_order", order_id=order_id, email="x@example.com"))[4]
    assert info["tool_calls"][0]["error"] == f"the email does not match order {order_id}"


@pytest.mark.parametrize("kind", ["refund_late", "cancel_shipped"])
def test_support_chat__out_of_policy_requests_need_the_transfer_tool(kind: str) -> None:
    env = _env(kind)
    _ask_and_look_up(env)
    obs, reward, terminated, _, info = env.step(call(env, "transfer_to_human", reason="policy"))
    assert (reward, terminated, info["ended_by"]) == (1.0, True, "tool") and TRANSFERRED in obs
    env = _env(kind)
    _ask_and_look_up(env)
    # Answering "transfer" is not transferring: the tool must end the episode.
    answer = '<final_output>{"action": "transfer"}</final_output>'
    assert env.step(answer)[1] == 0.0


def test_support_chat__allowed_requests_must_not_be_transferred_or_guessed() -> None:
    env = _env("refund")
    _ask_and_look_up(env)
    assert env.step(call(env, "transfer_to_human", reason="unsure"))[1] == 0.0
    guess = _env("refund")  # the right answer without the lookup still fails
    answer = f"<final_output>{json.dumps(guess.task.answer)}</final_output>"
    info = guess.step(answer)[4]
    assert info["eval"]["success"] is False and info["eval"]["looked_up"] is False


def _without_user(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "user"}


def test_support_chat__a_recorded_customer_replays_the_scripted_one(tmp_path: Any) -> None:
    recorder = UserRecorder(SupportChatEnv().user)
    live = SupportChatEnv(user=recorder)
    outcomes = [play(live, seed=0, options={"task_index": i}, oracle=True) for i in range(5)]
    recorder.write_jsonl(tmp_path / "customers.jsonl")
    replay = SupportChatEnv(user=RecordedUser(tmp_path / "customers.jsonl"))
    for i, outcome in enumerate(outcomes):
        replayed = play(replay, seed=0, options={"task_index": i}, oracle=True)
        # Everything but the user's log (the replay says which key matched) is the same.
        assert [r["info"].pop("user", {}).get("log") for r in replayed][1:3] == [
            {"recorded": True, "key": "message", "turn": 0},
            {"recorded": True, "key": "message", "turn": 1},
        ]
        assert replayed == [{**r, "info": _without_user(r["info"])} for r in outcome]
    assert len(UserRecording.load(tmp_path / "customers.jsonl")) == 10


def test_support_chat__a_model_customer_behind_an_endpoint_is_served_the_task() -> None:
    with fake_chat_server() as chat:
        # The "model" reads its instructions and the agent's last message, and answers as the
        # scripted customer would: what a pinned model user looks like to the environment.
        def respond(body: dict[str, Any]) -> tuple[int, Any]:
            system, last = body["messages"][0]["content"], body["messages"][-1]["content"]
            order_id = re.search(r"order number is (O-\d+)", system).group(1)  # type: ignore[union-attr]
            env_task = next(t for t in tasks if t.metadata["customer"]["order_id"] == order_id)
            return 200, completion(
                customer_reply([{"role": "assistant", "content": last}], env_task).text
            )

        tasks = SupportChatEnv().tasks()
        chat.respond = respond

        def make() -> SupportChatEnv:
            return SupportChatEnv(user=ModelUser(base_url=chat.url, model="customer"))

        env = make()
        last = play(env, seed=0, options={"task_index": 1}, oracle=True)[-1]
        assert (last["reward"], last["info"]["ended_by"]) == (1.0, "answer")
        assert "user_instructions" in env.task.metadata
        assert chat.requests[0]["messages"][0]["content"].startswith("You are ")
        # Probe, ending probe (the transfer tool) and oracle scripts, three plays each.
        assert check_reproducible(make, seeds=(0,)) == 9


def test_support_chat__registered_and_reproducible_on_the_test_split() -> None:
    env = gym.make("mtrl/SupportChat-v0", split="test")
    assert isinstance(env.unwrapped, SupportChatEnv) and env.unwrapped.split == "test"
    env.close()
    assert (
        check_reproducible("mtrl/SupportChat-v0", seeds=(0, 7), env_kwargs={"split": "test"}) == 18
    )
