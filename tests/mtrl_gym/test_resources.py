import gc
import os
import sqlite3
import tempfile
from collections.abc import Sequence

import gymnasium as gym
import pytest

from mtrl_gym import EpisodeResources, Task, TextEnv, Tool


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class NotebookEnv(TextEnv):
    """Each episode: a temp dir, a sqlite file in it, an id, and a tool writing to both."""

    def __init__(self, base_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.base_dir = base_dir

    def tasks(self) -> Sequence[Task]:
        return [Task(id="note", prompt="Write a note.", answer={"saved": True})]

    def make_tools(self, task: Task, resources: EpisodeResources) -> Sequence[Tool]:
        resources._base_dir = self.base_dir
        workdir = resources.tempdir()
        db = resources.sqlite(workdir / "notes.db")
        db.execute("CREATE TABLE notes (id TEXT, body TEXT)")
        handle = open(workdir / "log.txt", "w")  # noqa: SIM115 - released through on_release
        resources.on_release(handle.close)
        episode_id = resources.new_id("ep-")

        def save_note(body: str) -> dict:
            """Saves a note.

            Args:
                body: Text.
            """
            db.execute("INSERT INTO notes VALUES (?, ?)", (episode_id, body))
            handle.write(body + "\n")
            return {"saved": True, "episode": episode_id}

        return [Tool.from_function(save_note)]


def test_resources__200_episodes_leak_nothing(tmp_path):
    gc.collect()
    fds_before = _open_fds()
    env = NotebookEnv(str(tmp_path))
    for i in range(200):
        env.reset(seed=i)
        env.step('<tool_call>{"name": "save_note", "arguments": {"body": "hi"}}</tool_call>')
        if i % 2:  # half of the episodes end, the other half are abandoned mid-way
            env.step('<final_output>{"saved": true}</final_output>')
        assert len(list(tmp_path.iterdir())) == 1  # only the live episode's directory
    env.close()
    assert list(tmp_path.iterdir()) == []
    assert _open_fds() == fds_before
    # No sqlite connection is left open: every one the env made is closed.
    gc.collect()
    live = [o for o in gc.get_objects() if isinstance(o, sqlite3.Connection)]
    for conn in live:
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")


def test_resources__released_when_env_is_garbage_collected(tmp_path):
    fds_before = _open_fds()
    env = NotebookEnv(str(tmp_path))
    env.reset(seed=0)
    assert len(list(tmp_path.iterdir())) == 1
    del env
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    assert _open_fds() == fds_before


def test_resources__through_gym_make_and_close_twice(tmp_path):
    gym.register("test/Notebook-v0", entry_point=NotebookEnv, disable_env_checker=True)
    try:
        env = gym.make("test/Notebook-v0", base_dir=str(tmp_path))
        env.reset(seed=1)
        env.close()
        env.close()
        assert list(tmp_path.iterdir()) == []
    finally:
        del gym.registry["test/Notebook-v0"]


def test_episode_resources__release_order_idempotence_and_reuse_error():
    order = []
    res = EpisodeResources(base_dir=tempfile.gettempdir())
    res.on_release(lambda: order.append("first"))
    res.on_release(lambda: order.append("second"))
    res.release()
    res.release()
    assert order == ["second", "first"] and res.released
    with pytest.raises(RuntimeError, match="already released"):
        res.tempdir()


def test_episode_resources__failures_are_reported_after_releasing_everything():
    done = []
    res = EpisodeResources()
    res.on_release(lambda: done.append(1))
    res.on_release(lambda: 1 / 0)
    with pytest.raises(ExceptionGroup, match="failed to release"):
        res.release()
    assert done == [1]


def test_episode_resources__ids_reproducible_from_the_generator():
    import numpy as np

    a = EpisodeResources(np.random.default_rng(7))
    b = EpisodeResources(np.random.default_rng(7))
    assert [a.new_id("x-") for _ in range(3)] == [b.new_id("x-") for _ in range(3)]
    assert a.new_id().__len__() == 16


def test_episode_resources__copy_json_is_private_to_the_episode_and_emptied_at_release():
    shared = {"orders": [{"id": "O-1", "items": ("a", "b")}], "n": 1}
    resources = EpisodeResources()
    state = resources.copy_json(shared)
    assert state == {"orders": [{"id": "O-1", "items": ["a", "b"]}], "n": 1}
    state["orders"][0]["id"] = "changed"
    state["orders"].append({})
    assert shared == {"orders": [{"id": "O-1", "items": ("a", "b")}], "n": 1}
    assert resources.copy_json(3) == 3  # scalars are returned as they are
    resources.release()
    assert state == {}
    with pytest.raises(RuntimeError, match="already released"):
        resources.copy_json(shared)
