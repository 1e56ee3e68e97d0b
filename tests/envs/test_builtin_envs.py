import json

import gymnasium as gym
import pytest

import mtrl_gym  # noqa: F401 - importing it registers the built-in environment ids


def call(fmt, name, **args):
    return fmt.render_calls([(name, args)])


def test_inventory__eval_checks_the_database_not_only_the_answer():
    env = gym.make("mtrl/Inventory-v0")
    _, info = env.reset(options={"task_index": 0})
    task = env.unwrapped.task
    # Answer with the right levels without applying any movement: the reward (answer only) is 1,
    # the external evaluation (database state) says the task was not done.
    _, reward, terminated, _, info = env.step(
        f"<final_output>{json.dumps(task.answer)}</final_output>"
    )
    assert terminated and reward == 1.0
    assert info["eval"] == {"success": False, "database_correct": False, "answer_correct": True}
    env.close()


def test_inventory__oversized_shipment_is_an_agent_error_and_state_is_per_episode():
    env = gym.make("mtrl/Inventory-v0")
    env.reset(options={"task_index": 0})
    sku = next(iter(env.unwrapped.task.metadata["initial"]))
    fmt = env.unwrapped.format
    _, _, _, _, info = env.step(call(fmt, "adjust_stock", sku=sku, delta=-10_000))
    assert info["tool_calls"][0]["error"].startswith(f"cannot ship 10000 x {sku}")
    _, _, _, _, info = env.step(call(fmt, "adjust_stock", sku=sku, delta=5))
    after = json.loads(info["tool_calls"][0]["result"])["units"]
    env.reset(options={"task_index": 0})  # a new episode starts from the initial stock again
    _, _, _, _, info = env.step(call(fmt, "get_stock", sku=sku))
    assert json.loads(info["tool_calls"][0]["result"])["units"] == after - 5
    env.close()


@pytest.mark.parametrize(
    "env_id", ["mtrl/OrderLookup-v0", "mtrl/Inventory-v0", "mtrl/Calculator-v0"]
)
def test_builtin_envs__tasks_are_deterministic_and_ids_unique(env_id):
    a, b = gym.make(env_id), gym.make(env_id)
    ta, tb = a.unwrapped.tasks(), b.unwrapped.tasks()
    assert [t.id for t in ta] == [t.id for t in tb] and len({t.id for t in ta}) == len(ta)
    assert [t.answer for t in ta] == [t.answer for t in tb]
    a.close()
    b.close()


def test_order_lookup__generator_reproduces_the_shipped_data(tmp_path):
    from importlib import resources

    from mtrl_envs.order_lookup.generate import generate

    recordings, tasks = generate(seed=0, n_tasks=12)
    shipped = resources.files("mtrl_envs.order_lookup").joinpath("data")
    for name, rows in (("recordings.jsonl", recordings), ("tasks.jsonl", tasks)):
        expected = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        assert shipped.joinpath(name).read_text("utf-8") == expected
