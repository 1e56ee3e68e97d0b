"""Quickstart demo: play the default environment with its scripted (oracle) agent.

``python -m mtrl_envs.demo [play options]`` is ``python -m mtrl_gym play DEFAULT_ENV --show 1``:
it plays every task through the asyncio episode runner, prints the longest episode turn by turn,
then one JSON line with the success rate and trajectory statistics. It is the
quickstart's `--demo` mode: the environment side alone, without the learner stack.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from mtrl_gym.cli import main as cli_main

DEFAULT_ENV = "mtrl/SopQuickstart-v0"


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Runs the demo; extra arguments are ``python -m mtrl_gym play`` options."""
    args = list(sys.argv[1:] if argv is None else argv)
    env_id = args.pop(0) if args and args[0].startswith("mtrl/") else DEFAULT_ENV
    return cli_main(["play", env_id, "--episodes", "12", "--show", "1", *args])


if __name__ == "__main__":
    main()
