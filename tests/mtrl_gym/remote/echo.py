"""A trivial text environment for the remote tests: every reply names its episode and step.

``reset(options={"tag": t, "steps": n})`` starts episode ``t``; step ``k`` with action ``a``
answers ``"t|k|a"`` and the episode terminates at step ``n``. A lost, repeated or crossed step
shows as a wrong ``k`` or ``t`` in the reply. Option ``"delay": s`` makes every step take ``s``
seconds; ``"explode": true`` makes the reset raise (a broken environment).

:class:`Utf8EchoEnv` encodes each action as UTF-8 first, as a tokenizer would, so an action that
is not valid Unicode (a lone surrogate) makes its step raise ``UnicodeEncodeError``.
"""

import time
from typing import Any

import gymnasium as gym

from mtrl_gym import TextSpace

CLOSED: list[str] = []  # tags of episodes whose env was closed (in-process servers only)


class EchoEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, max_action_chars: int = 4096):
        self.action_space = TextSpace(max_action_chars)
        self.observation_space = TextSpace()
        self.tag: str | None = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        if options.get("explode"):
            raise RuntimeError("the environment exploded")
        self.tag = str(options.get("tag", seed))
        self.delay = float(options.get("delay", 0.0))
        self.steps = int(options.get("steps", 3))
        self.k = 0
        return f"{self.tag}|start", {"tag": self.tag, "seed": seed}

    def step(self, action: str):
        time.sleep(self.delay)
        self.k += 1
        done = self.k >= self.steps
        info: dict[str, Any] = {"tag": self.tag, "k": self.k}
        if done:
            info["status"] = "ok"
        return f"{self.tag}|{self.k}|{action}", float(self.k), done, False, info

    def close(self):
        if self.tag is not None:
            CLOSED.append(self.tag)
        super().close()


class Utf8EchoEnv(EchoEnv):
    def step(self, action: str):
        action.encode("utf-8")
        return super().step(action)
