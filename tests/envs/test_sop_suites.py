import gymnasium as gym
import pytest

from mtrl_gym import play
from mtrl_gym.registration import SOP_SUITE_ENVS


@pytest.mark.parametrize("env_id", sorted(SOP_SUITE_ENVS))
@pytest.mark.parametrize("split", ["validation", "test"])
def test_sop_suites__oracle_solves_every_held_out_task(env_id, split):
    env = gym.make(env_id, split=split)
    tasks = env.unwrapped.tasks()
    assert tasks and all(t.id for t in tasks)
    for i in range(len(tasks)):
        last = play(env, seed=None, options={"task_index": i}, oracle=True)[-1]
        assert (last["reward"], last["info"]["status"]) == (1.0, "ok"), (env_id, split, i)
    env.close()


@pytest.mark.parametrize("env_id", sorted(SOP_SUITE_ENVS))
def test_sop_suites__splits_are_disjoint_and_cover_the_table(env_id):
    ids = {
        s: {t.id for t in gym.make(env_id, split=s).unwrapped.tasks()}
        for s in ("train", "validation", "test")
    }
    every = {t.id for t in gym.make(env_id, split=None).unwrapped.tasks()}
    assert ids["train"] | ids["validation"] | ids["test"] == every
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
