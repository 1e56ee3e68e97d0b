"""``python -m mtrl_gym``: list the registered environments and play agents on them.

``list`` prints every ``mtrl/...`` id with its one-line description. ``play`` runs an agent (the
environment's scripted oracle, or a random-text agent) on many episodes through the asyncio
episode runner and prints the success rate and trajectory statistics, the last line as JSON so
scripts can read it. Examples::

    python -m mtrl_gym list
    python -m mtrl_gym play mtrl/OrderLookup-v0 --agent oracle --episodes 50
    python -m mtrl_gym play mtrl/Calculator-v0 --agent random --episodes 20 --show 1
    python -m mtrl_gym play acme_envs:acme/Retail-v0     # imports acme_envs, which registers it

``ENV_ID`` is any Gymnasium id, in any namespace; ``module:Name-vN`` imports ``module`` first.

Non-goals: model-driven agents (the learner's eval job plays those).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from mtrl_gym.registration import registered_env_ids, resolve_env_id
from mtrl_gym.runner import EpisodeJob, EpisodeResult, EpisodeRunner
from mtrl_gym.spaces import TextSpace

Policy = Callable[[str, dict[str, Any]], str]


def oracle_agent(env: gym.Env) -> Policy:
    """The environment's oracle, rebuilt for each new task (a reset ``info`` has ``task_id``)."""
    state: dict[str, Policy] = {}

    def policy(observation: str, info: dict[str, Any]) -> str:
        if "task_id" in info:
            oracle = env.unwrapped.oracle_policy()  # type: ignore[attr-defined]
            if oracle is None:
                raise ValueError(f"{env.spec.id if env.spec else env} has no oracle policy")
            state["policy"] = oracle
        return state["policy"](observation, info)

    return policy


def random_agent(seed: int, max_length: int = 256) -> Policy:
    """Random unicode text, from its own generator (never the environment's)."""
    space = TextSpace(max_length, sample_length=max_length, seed=seed)
    return lambda observation, info: space.sample()


AGENTS: dict[str, Callable[[gym.Env, int], Policy]] = {
    "oracle": lambda env, seed: oracle_agent(env),
    "random": lambda env, seed: random_agent(seed),
}


def summarize(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Success rate and trajectory statistics over finished episodes.

    ``success_rate`` counts every episode; ``completed`` excludes infrastructure failures
    (``infra_error`` / ``timeout``), which the trainer would exclude too.
    """
    n = len(results)
    if n == 0:
        raise ValueError("no episodes to summarize")
    statuses = collections.Counter(r.status for r in results)
    calls = [r.steps[-1]["info"]["counts"] for r in results if r.steps]
    n_calls = sum(c["tool_calls"] for c in calls)
    completed = [r for r in results if r.status not in ("infra_error", "timeout")]
    successes = sum(bool(r.eval and r.eval.get("success")) for r in results)
    return {
        "episodes": n,
        "success_rate": successes / n,
        "success_rate_completed": successes / len(completed) if completed else 0.0,
        "mean_reward": float(np.mean([r.reward for r in results])),
        "mean_turns": float(np.mean([len(r.steps) for r in results])),
        "mean_tool_calls": n_calls / n,
        "invalid_tool_call_rate": (sum(c["invalid_tool_calls"] for c in calls) / n_calls)
        if n_calls
        else 0.0,
        "mean_format_errors": sum(c["format_errors"] for c in calls) / n,
        "statuses": dict(sorted(statuses.items())),
    }


def play(
    env_id: str,
    *,
    agent: str = "oracle",
    episodes: int = 10,
    seed: int = 0,
    concurrency: int = 8,
    env_kwargs: dict[str, Any] | None = None,
) -> tuple[list[EpisodeResult], list[gym.Env]]:
    """Plays ``episodes`` episodes; task ``i`` is ``task_index = i mod #tasks`` for the oracle.

    Returns the results and the (still open) environments, so callers can print transcripts;
    close the environments when done.
    """
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; choose from {sorted(AGENTS)}")
    envs = [gym.make(env_id, **(env_kwargs or {})) for _ in range(episodes)]
    jobs = []
    for i, env in enumerate(envs):
        tasks = env.unwrapped.tasks()  # type: ignore[attr-defined]
        jobs.append(
            EpisodeJob(
                env=env,
                policy=AGENTS[agent](env, seed + i),
                seed=seed + i,
                options={"task_index": i % len(tasks)},
                tag=i,
            )
        )
    return EpisodeRunner(max_concurrency=concurrency).run_sync(jobs), envs


def format_episode(env: gym.Env, result: EpisodeResult) -> str:
    """One episode turn by turn, as a person reads it."""
    lines = [f"=== task {result.task_id} ==="]
    for msg in env.unwrapped.transcript[:2]:  # type: ignore[attr-defined]
        lines.append(f"--- {msg['role']} ---\n{msg['content']}")
    for n, step in enumerate(result.steps, 1):
        lines.append(f"\n--- turn {n}: assistant ---\n{step['action']}")
        if step["observation"]:
            lines.append(f"--- turn {n}: environment ---\n{step['observation']}")
    lines.append(f"\nreward={result.reward} status={result.status} eval={json.dumps(result.eval)}")
    return "\n".join(lines)


def _describe(env_id: str) -> str:
    spec = gym.registry[env_id]
    if "suite" in spec.kwargs:
        return f"Authored SOP suite '{spec.kwargs['suite']}' on the generic SOP engine."
    entry = spec.entry_point
    if not isinstance(entry, str):
        return ""
    module, _, name = entry.partition(":")
    try:
        doc = getattr(importlib.import_module(module), name).__doc__ or ""
    except (ImportError, AttributeError) as e:
        return f"(cannot import: {e})"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Entry point of ``python -m mtrl_gym``."""
    parser = argparse.ArgumentParser(prog="python -m mtrl_gym", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list registered environments")
    p = sub.add_parser("play", help="play an agent on an environment")
    p.add_argument("env_id", metavar="ENV_ID", help="a Gymnasium id; module:Name-vN imports module")
    p.add_argument("--agent", choices=sorted(AGENTS), default="oracle")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--tool-format", default=None, help="hermes, json or react")
    p.add_argument(
        "--env-arg",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra environment argument, e.g. --env-arg split='\"test\"'",
    )
    p.add_argument("--show", type=int, default=0, help="print this many episodes in full")
    args = parser.parse_args(argv)

    if args.command == "list":
        for env_id in registered_env_ids():
            print(f"{env_id:32s} {_describe(env_id)}")
        return None

    try:
        resolve_env_id(args.env_id)
    except (ImportError, gym.error.Error) as e:
        parser.error(f"environment {args.env_id!r}: {e}")
    env_kwargs: dict[str, Any] = {}
    for item in args.env_arg:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env-arg needs KEY=JSON, got {item!r}")
        try:
            env_kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            env_kwargs[key] = value  # a bare word is a string
    if args.tool_format:
        env_kwargs["tool_format"] = args.tool_format
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    start = time.perf_counter()
    results, envs = play(
        args.env_id,
        agent=args.agent,
        episodes=args.episodes,
        seed=args.seed,
        concurrency=args.concurrency,
        env_kwargs=env_kwargs,
    )
    elapsed = time.perf_counter() - start
    # Show the longest episodes first: they are the ones with recoveries and errors.
    order = sorted(range(len(results)), key=lambda i: -len(results[i].steps))
    for i in order[: args.show]:
        print(format_episode(envs[i], results[i]), end="\n\n")
    for env in envs:
        env.close()
    summary = {"env": args.env_id, "agent": args.agent, **summarize(results)}
    summary["wall_s"] = round(elapsed, 3)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":  # pragma: no cover
    main()
