"""Quickstart demo: play a built-in environment with its scripted (oracle) agent.

``python -m mtrl_envs.demo [--env mtrl/OrderLookup-v0] [--episodes 12]`` plays every task through
the asyncio episode runner, prints one episode turn by turn, then one JSON line with the results.
It stands in for the training quickstart until the trainer lands.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import gymnasium as gym

import mtrl_gym
from mtrl_gym import EpisodeJob, EpisodeRunner


def _oracle(env: gym.Env) -> Any:
    """A policy that builds the oracle for each new task at its first turn."""
    state: dict[str, Any] = {}

    def policy(observation: str, info: dict[str, Any]) -> str:
        if "task_id" in info:  # a reset info: a new episode begins
            state["policy"] = env.unwrapped.oracle_policy()
        return state["policy"](observation, info)

    return policy


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the demo and returns the summary it prints."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--env", default="mtrl/OrderLookup-v0", choices=mtrl_gym.registered_env_ids()
    )
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--tool-format", default="hermes", choices=mtrl_gym.available_formats())
    args = parser.parse_args(argv)

    envs = [gym.make(args.env, tool_format=args.tool_format) for _ in range(args.episodes)]
    jobs = [
        EpisodeJob(
            env=env,
            policy=_oracle(env),
            options={"task_index": i % len(env.unwrapped.tasks())},
            tag=i,
        )
        for i, env in enumerate(envs)
    ]
    start = time.perf_counter()
    results = EpisodeRunner(max_concurrency=8).run_sync(jobs)
    elapsed = time.perf_counter() - start

    # Show the longest episode: it is the one where the agent had to recover from an error.
    shown = max(range(len(results)), key=lambda i: len(results[i].steps))
    first = results[shown]
    print(f"=== {args.env}: task {first.task_id} ===")
    for msg in envs[shown].unwrapped.transcript[:2]:  # the system and user messages
        print(f"--- {msg['role']} ---\n{msg['content']}")
    for n, step in enumerate(first.steps, 1):
        print(f"\n--- turn {n}: assistant ---\n{step['action']}")
        if step["observation"]:
            print(f"--- turn {n}: environment ---\n{step['observation']}")
    print(f"\nreward={first.reward} status={first.status} eval={json.dumps(first.eval)}\n")
    for env in envs:
        env.close()

    summary = {
        "env": args.env,
        "episodes": len(results),
        "success_rate": sum(bool(r.eval and r.eval["success"]) for r in results) / len(results),
        "mean_reward": sum(r.reward for r in results) / len(results),
        "mean_turns": sum(len(r.steps) for r in results) / len(results),
        "statuses": sorted({r.status for r in results}),
        "wall_s": round(elapsed, 3),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
