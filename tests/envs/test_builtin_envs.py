import json

import gymnasium as gym
import pytest

import mtrl_envs.calculator.env as calculator
from mtrl_gym.sandbox import SandboxInfraError, SandboxLimits


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


def test_calculator__hostile_code_is_the_agents_error_and_the_episode_goes_on():
    env = gym.make("mtrl/Calculator-v0", limits=SandboxLimits(timeout_s=1.0, memory_mb=128))
    env.reset(options={"task_index": 0})
    fmt = env.unwrapped.format
    _, _, terminated, truncated, info = env.step(call(fmt, "run_python", code="while True: pass"))
    assert not (terminated or truncated)
    assert (
        info["tool_calls"][0]["error"].startswith("Error: execution timed out")
        or "timed out" in info["tool_calls"][0]["error"]
    )
    _, _, _, _, info = env.step(
        call(fmt, "run_python", code="import socket; socket.create_connection(('127.0.0.1', 9))")
    )
    assert (
        "not allowed" in info["tool_calls"][0]["error"] or "Error" in info["tool_calls"][0]["error"]
    )
    _, _, _, _, info = env.step(call(fmt, "run_python", code="print(6 * 7)"))
    assert info["tool_calls"][0]["result"] == "42\n" and "status" not in info
    env.close()


def test_calculator__sandbox_failure_is_infra_error_not_reward_zero(monkeypatch):
    def broken(code, *, limits):
        raise SandboxInfraError("could not start the sandbox")

    monkeypatch.setattr(calculator, "run_python_sandboxed", broken)
    env = gym.make("mtrl/Calculator-v0")
    env.reset(options={"task_index": 0})
    _, reward, terminated, truncated, info = env.step(
        call(env.unwrapped.format, "run_python", code="print(1)")
    )
    assert info["status"] == "infra_error" and truncated and not terminated and reward == 0.0
    assert "could not start the sandbox" in info["tool_calls"][0]["error"]
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
