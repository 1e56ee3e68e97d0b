import json
import subprocess
import sys

import gymnasium as gym
import pytest

import mtrl_gym
from mtrl_gym import check_env, check_reproducible, register_env, registered_env_ids
from mtrl_gym.checker import ReproducibilityError, play
from tests.mtrl_gym.toy import ToyEnv

ENV_IDS = registered_env_ids()


def test_registry__builtin_ids_follow_the_naming_rule():
    assert set(mtrl_gym.registration.BUILTIN_ENVS) <= set(ENV_IDS)
    assert len(ENV_IDS) >= 3


def test_register_env__bad_ids_and_conflicts_are_errors():
    with pytest.raises(ValueError, match="must look like"):
        register_env("Foo-v0", "x:y")
    with pytest.raises(ValueError, match="already registered"):
        register_env("mtrl/OrderLookup-v0", "somewhere:Else")
    register_env("mtrl/OrderLookup-v0", mtrl_gym.registration.BUILTIN_ENVS["mtrl/OrderLookup-v0"])


def test_register_env__any_namespace_and_gymnasium_rules_still_apply():
    register_env("acme/Retail-v0", "tests.mtrl_gym.toy:ToyEnv", max_turns=3)
    register_env("acme/Retail-v0", "tests.mtrl_gym.toy:ToyEnv")  # the same again: a no-op
    env = gym.make("acme/Retail-v0")
    assert env.spec.namespace == "acme" and env.unwrapped.max_turns == 3
    env.close()
    assert "acme/Retail-v0" not in registered_env_ids()  # the list is the mtrl namespace's
    for bad in ("acme/retail-v0", "acme/Retail", "ac:me/Retail-v0", "/Retail-v0", "a/b/C-v0"):
        with pytest.raises(ValueError, match="must look like"):
            register_env(bad, "tests.mtrl_gym.toy:ToyEnv")


def test_check_env_and_check_reproducible__accept_an_id_an_instance_or_a_factory():
    env_id = "mtrl/Inventory-v0"
    instance = gym.make(env_id)
    for env in (env_id, instance, lambda: gym.make(env_id)):
        check_env(env)
        assert check_reproducible(env, seeds=(0,), use_oracle=False) == 3
    instance.reset(seed=0)  # the caller's instance was left open and still works
    instance.close()
    with pytest.raises(TypeError, match="apply only to an id"):
        check_reproducible(lambda: gym.make(env_id), env_kwargs={"max_turns": 2})
    with pytest.raises(TypeError, match="apply only to an id"):
        check_env(ToyEnv(), max_turns=2)
    with pytest.raises(TypeError, match="not a gym.Env"):
        check_env(lambda: "mtrl/Inventory-v0")


def test_make__module_prefix_works_from_a_fresh_interpreter():
    code = (
        "import gymnasium as gym, sys\n"
        "env = gym.make('mtrl_gym:mtrl/OrderLookup-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "print(info['task_id'], 'jax' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    task_id, jax_loaded = out.stdout.split()
    assert task_id.startswith("order-") and jax_loaded == "False"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env__gymnasium_checker_passes(env_id):
    check_env(env_id)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_reproducible__every_registered_env(env_id):
    assert check_reproducible(env_id, seeds=(0, 3)) >= 6


def test_check_reproducible__catches_a_nondeterministic_tool():
    import itertools

    from mtrl_gym import Tool
    from tests.mtrl_gym.toy import ToyEnv

    counter = itertools.count()
    ticking = Tool.from_function(lambda: next(counter), name="tick", description="Counts.")
    with pytest.raises(
        ReproducibilityError,
        match=r"seed 0, probe script, play 1 vs play 2: "
        r"\[\d+\]\.info\.messages\[0\]\.content: '0' != '1'",
    ):
        check_reproducible(lambda: ToyEnv(extra_tools=(ticking,)), seeds=(0,))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_oracle__solves_every_task(env_id):
    env = gym.make(env_id)
    n = len(env.unwrapped.tasks())
    for i in range(n):
        record = play(env, seed=None, options={"task_index": i}, oracle=True)
        last = record[-1]
        outcome = (last["reward"], last["terminated"], last["info"]["status"])
        assert outcome == (1.0, True, "ok"), (i, json.dumps(record, default=str)[:2000])
        assert last["info"]["eval"]["success"] is True
    env.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec__text_envs_vectorise(mode):
    # spawn, not fork: the test process has JAX threads running, and fork would copy them.
    async_kwargs = {"shared_memory": False, "context": "spawn"}
    kwargs = {"vector_kwargs": async_kwargs} if mode == "async" else {}
    envs = gym.make_vec("mtrl/OrderLookup-v0", num_envs=3, vectorization_mode=mode, **kwargs)
    try:
        obs, info = envs.reset(seed=[0, 1, 2])
        assert isinstance(obs, tuple) and len(obs) == 3 and all(isinstance(o, str) for o in obs)
        actions = (
            '<tool_call>{"name": "get_order", "arguments": {"order_id": "O-1000"}}</tool_call>',
            "no call",
            "<final_output>{}</final_output>",
        )
        obs, rewards, terminated, truncated, info = envs.step(actions)
        assert list(terminated) == [False, False, True]
        assert "customer_id" in obs[0] and "neither a tool call" in obs[1]
    finally:
        envs.close()
