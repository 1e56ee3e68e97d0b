"""SopEnv: prompts, presentation, tools surface, budgets, splits, ids and conformance checks."""

import gymnasium as gym
import pytest
from gymnasium.envs.registration import EnvSpec

from mtrl_envs.sop import SopEnv, SopSuite
from mtrl_gym import check_env, check_reproducible
from tests.envs.sop.synthetic import SOP, build_suite


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_suite(tmp_path_factory.mktemp("env") / "suite")


@pytest.fixture(scope="module")
def suite(folder):
    return SopSuite.load(folder)


def test_sop_env__system_prompt_is_the_sop_and_the_answer_instruction(suite):
    env = SopEnv(suite)
    obs, info = env.reset(options={"task_index": 0})
    system = info["messages"][0]
    assert system["role"] == "system"
    assert system["content"] == (
        SOP.rstrip() + "\n\n"
        "When you have completed the procedure, give your final answer as one JSON object inside "
        '<final_output></final_output> tags, with exactly these keys: "status", "ok".\n'
        'For example: <final_output>{"status": "...", "ok": "..."}</final_output>'
    )
    assert obs.startswith(system["content"]) and info["tools_prompt"] in obs


def test_sop_env__task_input_lines_follow_csv_order_and_pandas_printing(suite):
    env = SopEnv(suite)
    prompts = []
    for index in range(3):
        _, info = env.reset(options={"task_index": index})
        assert info["messages"][1]["role"] == "user"
        prompts.append(info["messages"][1]["content"])
    assert prompts == [
        "order_id: O-1\nqty: 3\nprice: 70.1\nexpress: True\nnote: fragile\nregion: north",
        "order_id: O-2\nqty: 70\nprice: 70.0\nexpress: False\nnote: nan\nregion: north",
        "order_id: O-3\nqty: 5\nprice: 1e-05\nexpress: True\nnote: nan\nregion: nan",
    ]


def test_sop_env__tasks_are_rows_with_expected_outputs(suite):
    tasks = SopEnv(suite).tasks()
    assert [t.id for t in tasks] == ["0", "1", "2"]
    assert [t.answer for t in tasks] == [
        {"status": "shipped", "ok": True},
        {"status": "delayed", "ok": False},
        {"status": "in-progress", "ok": None},
    ]
    assert tasks[2].metadata == {"suite": "synthetic_orders", "row": 2}


def test_sop_env__advertises_toolspecs_in_order_but_not_unlisted_tools(suite):
    env = SopEnv(suite)
    obs, info = env.reset(options={"task_index": 0})
    names = [t["function"]["name"] for t in info["tools"]]
    assert names == [s["name"] for s in suite.tool_schemas] and names[0] == "getOrder"
    assert "secretStatus" not in obs and "secretStatus" not in info["tools_prompt"]
    assert "secretStatus" in env.tools and "secretStatus" not in names


@pytest.mark.parametrize(
    ("kwargs", "turns"),
    [
        ({}, 10),
        ({"tool_format": "json"}, 10),
        ({"tool_format": "react"}, 15),
        ({"max_turns": 3}, 3),
    ],
)
def test_sop_env__budgets_default_to_upstreams(suite, kwargs, turns):
    assert SopEnv(suite, **kwargs).max_turns == turns


def test_sop_env__split_filters_tasks_but_lookups_see_the_whole_table(suite):
    assert suite.splits == ["test", "train"]
    env = SopEnv(suite, split="train")
    assert [t.id for t in env.tasks()] == ["0", "1"]
    env.reset(options={"task_index": 0})
    _, _, _, _, info = env.step(env.format.render_calls([("getStatus", {"order_id": "O-3"})]))
    assert info["tool_calls"][0]["result"] == '"in-progress"'  # O-3 is a test-split row
    assert [t.id for t in SopEnv(suite, split="test").tasks()] == ["2"]
    with pytest.raises(ValueError, match=r"no split 'dev' \(splits: \['test', 'train'\]\)"):
        SopEnv(suite, split="dev")


def test_sop_env__split_needs_a_split_column_and_ids_can_come_from_a_column(tmp_path):
    def edit(b):
        del b["task"]["split_column"]
        b["task"]["id_column"] = "order_id"

    env = SopEnv(build_suite(tmp_path / "s", edit=edit))
    assert [t.id for t in env.tasks()] == ["O-1", "O-2", "O-3"]
    _, info = env.reset(options={"task_id": "O-2"})
    assert info["task_id"] == "O-2" and "order_id: O-2" in info["messages"][1]["content"]
    with pytest.raises(ValueError, match="declares no split_column"):
        SopEnv(env.suite, split="train")


def test_sop_env__accepts_a_folder_or_a_suite(folder, suite):
    assert SopEnv(folder).suite.checksums == suite.checksums
    with pytest.raises(ValueError, match="behavior_path applies only"):
        SopEnv(suite, behavior_path=folder)


def test_sop_env__passes_check_env_and_is_reproducible(folder, suite):
    spec = EnvSpec(
        id="SopSynthetic-v0",
        entry_point="mtrl_envs.sop.env:SopEnv",
        kwargs={"suite": str(folder)},
        disable_env_checker=True,
    )
    check_env(gym.make(spec))
    assert gym.registry.get("SopSynthetic-v0") is None  # nothing registered
    assert check_reproducible(lambda: SopEnv(suite), seeds=(0, 1, 2)) == 18
