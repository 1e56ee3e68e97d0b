"""Plays Helpdesk episodes against a remote server through the episode runner (another process).

The policy here is the environment's scripted oracle, rebuilt on the client from the task id the
reset reports, so the example runs without a model; a trained agent needs nothing from the
environment's code. ``mtrl train`` with ``env.id`` pointing at the server's URL is the training
path. Run ``serve.py`` first, then: ``python examples/remote_helpdesk/play.py --episodes 20``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from mtrl_envs.helpdesk.env import make_task
from mtrl_envs.helpdesk.scenarios import make_policy
from mtrl_gym import EpisodeJob, EpisodeRunner, get_format
from mtrl_gym.remote import RemoteEnv


def oracle(split: str) -> Any:
    """A policy that builds the oracle for whichever task the server drew at reset."""
    state: dict[str, Any] = {}

    def policy(observation: str, info: dict[str, Any]) -> str:
        if "policy" not in state:
            index = int(info["task_id"].rsplit("-", 1)[1])
            hints = make_task(split, index).metadata["hints"]
            state["policy"] = make_policy(hints, get_format("hermes"))
        return state["policy"](observation, info)

    return policy


def main() -> dict[str, Any]:
    """Runs the episodes concurrently and prints a JSON summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8765")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    jobs = [
        EpisodeJob(
            env=lambda: RemoteEnv(args.url),  # token from $MTRL_REMOTE_TOKEN
            policy=oracle(args.split),
            options={"task_index": i},
            tag=i,
        )
        for i in range(args.episodes)
    ]
    results = EpisodeRunner(max_concurrency=args.concurrency).run_sync(jobs)
    summary = {
        "episodes": len(results),
        "statuses": dict(Counter(r.status for r in results)),
        "success_rate": sum(bool(r.eval and r.eval.get("success")) for r in results) / len(results),
        "mean_reward": sum(r.reward for r in results) / len(results),
        "mean_steps": sum(len(r.steps) for r in results) / len(results),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
