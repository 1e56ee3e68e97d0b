"""A trivial text environment for the remote tests: every reply names its episode and step.

``reset(options={"tag": t, "steps": n})`` starts episode ``t``; step ``k`` with action ``a``
answers ``"t|k|a"`` and the episode terminates at step ``n``. A lost, repeated or crossed step
shows as a wrong ``k`` or ``t`` in the reply.
"""

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
        self.tag = str(options.get("tag", seed))
        self.steps = int(options.get("steps", 3))
        self.k = 0
        return f"{self.tag}|start", {"tag": self.tag, "seed": seed}

    def step(self, action: str):
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
