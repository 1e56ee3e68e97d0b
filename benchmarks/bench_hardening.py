"""The adversarial campaign: a hostile agent against every built-in environment, and the server.

What it does, all with seeded randomness (``--seed``):

- **Local episodes.** Every registered environment is played with adversarial actions: tool
  calls to known and unknown tools with extra, missing and mistyped arguments, lone-surrogate
  escapes (``\\ud800``), NUL bytes, SQL and shell injections, path traversals, huge numbers,
  deep nesting, non-object arguments; final answers built the same way; and raw text. Half the
  episodes go through ``step``, half through ``astep``. An exception out of ``step``/``astep``
  is an *escape*; an ``infra_error`` or ``timeout`` status is an agent mistake misreported as the
  machinery's (*misattributed*); an ``info`` that cannot be written as UTF-8 JSON is
  *unencodable*.
- **Resources.** Open file descriptors, threads, child processes and entries of the temporary
  folder, before and after (after ``close`` of every environment): the difference is *leaked*.
- **Remote.** The same kind of actions through ``python -m mtrl_gym.remote serve`` in a
  subprocess and a :class:`~mtrl_gym.remote.RemoteEnv` client: client-side exceptions, server
  5xx answers and sessions lost (a session the server no longer knows while its episode runs).

Every figure should be 0 except the counts of what was fuzzed. Run:
``.venv/bin/python benchmarks/bench_hardening.py [--actions 40000]`` (last stdout line: JSON,
also written to ``benchmarks/results/hardening_cpu.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
from _record import git_commit, hardware, save

import mtrl_gym
from mtrl_gym import registered_env_ids

ROOT = Path(__file__).resolve().parents[1]
NASTY = [
    "\ud800",
    "a\udfffb",
    "\ud83d",
    "\x00",
    "'; DROP TABLE orders; --",
    "../../../../etc/passwd",
    "import os; os.kill(os.getpid(), 9)",
    "__import__('os').system('id')",
    "SELECT * FROM sqlite_master",
    "{{}}%s%n",
    "x" * 5000,
    "",
    "é😀",
    "<tool_call>",
    "</final_output>",
]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**31, -(2**63), 2**70, 7])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-320, 3.0])
    if kind in (4, 5):
        return rng.choice(NASTY)
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(NASTY): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _typed(rng: random.Random, schema: dict[str, Any]) -> Any:
    """A value of the type ``schema`` declares, hostile in content (reaches the tool's body)."""
    if "enum" in schema and rng.random() < 0.7:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        return rng.choice([*NASTY, "O-1000", "SELECT 1", "def f():\n    return 1\n"])
    if kind == "integer":
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**70)])
    if kind == "number":
        return rng.choice([0.0, -0.5, 1e308, 1e-320, 3])
    if kind == "boolean":
        return rng.choice([True, False])
    if kind == "array":
        return [_typed(rng, schema.get("items", {})) for _ in range(rng.randrange(3))]
    return _value(rng)


def adversarial_action(rng: random.Random, params: dict[str, dict[str, Any]]) -> str:
    """One hostile assistant message for an environment whose tools take ``params``.

    ``params`` maps each tool to its argument schemas. Half the calls follow the schema's types
    with hostile content (so they run the tool), the rest break it (extra, missing, mistyped
    arguments, a non-object, an unknown tool).
    """
    kind = rng.random()
    if kind < 0.15:
        answer = {rng.choice([*NASTY, "answer", "sql", "code"]): _value(rng) for _ in range(3)}
        return f"<final_output>{json.dumps(answer)}</final_output>"
    if kind < 0.25:
        return rng.choice(NASTY) + rng.choice(["", " <final_output>{", "<tool_call>{"])
    name = rng.choice([*params, "no_such_tool"]) if params else "no_such_tool"
    known = params.get(name, {})
    arguments: Any
    if known and kind < 0.6:
        arguments = {k: _typed(rng, v) for k, v in known.items()}
    else:
        keys = rng.sample(sorted(known), rng.randrange(len(known) + 1))
        arguments = {k: _value(rng) for k in keys}
        for _ in range(rng.randrange(3)):
            arguments[rng.choice(NASTY)] = _value(rng)
        if rng.random() < 0.1:
            arguments = _value(rng)
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def _tool_params(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        t["function"]["name"]: dict(t["function"]["parameters"].get("properties", {}))
        for t in info.get("tools", [])
    }


def _children(pid: int) -> int:
    """Live descendants of ``pid`` (Linux ``/proc``)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        count += sum(1 + _children(int(k)) for k in kids)
    return count


def _resources() -> dict[str, int]:
    """What an episode could leak. Worker threads of the tool and grading pools are counted
    apart: the pools are shared and grow to the concurrency seen, by design. Only temporary
    folders that mtrl names (``mtrl-*``) are counted: ``/tmp`` is shared with other processes.
    """
    names = [t.name for t in threading.enumerate()]
    pooled = sum(name.startswith(("mtrl-tool", "mtrl-grade", "asyncio_")) for name in names)
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": len(names) - pooled,
        "pool_threads": pooled,
        "children": _children(os.getpid()),
        "tmp_dirs": sum(e.startswith("mtrl-") for e in os.listdir(tempfile.gettempdir())),
    }


_REFUSED = ("invalid arguments for", "unknown tool", "malformed tool call", "too many tool calls")


class Tally:
    """Counts of one campaign part."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []

    def bad(self, what: str, action: str, detail: str) -> None:
        self.counts[what] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{what}: {action[:200]!r}: {detail[-400:]}")

    def check_info(self, action: str, info: dict[str, Any]) -> None:
        for call in info.get("tool_calls", []):
            error = call.get("error") or ""
            refused = error.startswith(_REFUSED)  # stopped before the tool's body ran
            self.counts["calls_refused" if refused else "calls_ran"] += 1
        status = info.get("status")
        if status is not None:
            self.counts[f"status_{status}"] += 1
        if status in ("infra_error", "timeout"):
            self.bad("misattributed", action, json.dumps(info.get("eval"), default=str))
        try:
            json.dumps(info, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            self.bad("unencodable", action, repr(e))


def _play_episode(
    step: Callable[[str], tuple],
    params: dict[str, dict[str, Any]],
    turns: int,
    rng: random.Random,
    tally: Tally,
    classify: Callable[[Exception], str],
) -> None:
    """Up to ``turns`` adversarial actions through ``step``; an exception is counted and ends it."""
    tally.counts["episodes"] += 1
    for _ in range(turns):
        action = adversarial_action(rng, params)
        tally.counts["actions"] += 1
        try:
            _, _, terminated, truncated, info = step(action)
        except Exception as e:  # noqa: BLE001 - what escapes is what we count
            tally.bad(classify(e), action, traceback.format_exc())
            return
        tally.check_info(action, info)
        if terminated or truncated:
            return


def play_local(env_id: str, episodes: int, turns: int, rng: random.Random, tally: Tally) -> None:
    """``episodes`` adversarial episodes of ``env_id``, half with ``step``, half with ``astep``."""
    env = gym.make(env_id).unwrapped

    def astep(action: str) -> tuple:
        return asyncio.run(env.astep(action))

    try:
        for i in range(episodes):
            _, info = env.reset(seed=i)
            step = astep if i % 2 else env.step
            _play_episode(step, _tool_params(info), turns, rng, tally, lambda e: "escaped")
    finally:
        env.close()


def _remote_failure(error: Exception) -> str:
    """What a client-side exception means: a 5xx, a lost session, or another escape."""
    message = str(error).lower()
    if "session" in message and ("unknown" in message or "lost" in message):
        return "sessions_lost"
    return "5xx" if re.search(r"\b5\d\d\b", message) else "escaped"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def play_remote(env_id: str, episodes: int, turns: int, rng: random.Random, tally: Tally) -> None:
    """Adversarial episodes through a served environment (server in a subprocess)."""
    from mtrl_gym.remote import RemoteEnv

    port, token = _free_port(), "campaign-token-0123456789abcdef"
    env_vars = {**os.environ, "MTRL_REMOTE_TOKEN": token}
    cmd = [sys.executable, "-m", "mtrl_gym.remote", "serve", env_id, "--port", str(port)]
    server = subprocess.Popen(
        cmd, cwd=ROOT, env=env_vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 60
        while "listening" not in server.stdout.readline():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {cmd}")
        env = RemoteEnv(f"http://127.0.0.1:{port}", token=token)
        try:
            for i in range(episodes):
                try:
                    _, info = env.reset(seed=i)
                except Exception:  # noqa: BLE001
                    tally.bad("reset_failed", "", traceback.format_exc())
                    continue
                _play_episode(env.step, _tool_params(info), turns, rng, tally, _remote_failure)
        finally:
            env.close()
        tally.counts["server_alive_after"] = int(server.poll() is None)
    finally:
        server.terminate()  # a graceful stop closes the sessions' environments
        try:
            _, stderr = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            _, stderr = server.communicate(timeout=10)
            tally.counts["server_killed"] = 1
        tally.counts["server_tracebacks"] = stderr.count("Traceback (most recent call last)")


def main() -> None:
    """Runs the campaign and saves the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--actions", type=int, default=40_000, help="local actions, in all")
    parser.add_argument("--remote-actions", type=int, default=2_000)
    parser.add_argument("--turns", type=int, default=4, help="actions per episode at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--remote-env", default="mtrl/SqlQuery-v0")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hardening_cpu.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ids = registered_env_ids()
    per_env = max(1, args.actions // (len(ids) * args.turns))

    start = time.perf_counter()
    warm = Tally()  # thread pools and caches fill on first use: not leaks
    for env_id in ids:
        play_local(env_id, 2, args.turns, random.Random(-1), warm)
    before = _resources()
    local: dict[str, Any] = {}
    for env_id in ids:
        tally = Tally()
        t0 = time.perf_counter()
        play_local(env_id, per_env, args.turns, rng, tally)
        local[env_id] = {**tally.counts, "wall_s": round(time.perf_counter() - t0, 1)}
        if tally.examples:
            local[env_id]["examples"] = tally.examples
        print(env_id, json.dumps(local[env_id])[:300], flush=True)
    time.sleep(1.0)  # let timed-out sandbox children be reaped before counting
    after = _resources()
    leaked = {k: after[k] - before[k] for k in before if k != "pool_threads"}
    pool_threads = {"before": before["pool_threads"], "after": after["pool_threads"]}

    remote = Tally()
    per_remote = max(1, args.remote_actions // args.turns)
    tmp_before = _resources()["tmp_dirs"]
    play_remote(args.remote_env, per_remote, args.turns, rng, remote)
    remote.counts["tmp_dirs_leaked"] = _resources()["tmp_dirs"] - tmp_before
    total = collections.Counter()
    for counts in local.values():
        total.update({k: v for k, v in counts.items() if isinstance(v, int)})
    record = {
        "benchmark": "hardening",
        "hardware": hardware(),
        "commit": git_commit(),
        "mtrl_gym": mtrl_gym.__version__,
        "seed": args.seed,
        "summary": {
            "episodes_fuzzed": total["episodes"],
            "actions_fuzzed": total["actions"],
            "tool_calls_ran": total["calls_ran"],
            "tool_calls_refused": total["calls_refused"],
            "exceptions_escaped": total["escaped"],
            "misattributed_infra_errors": total["misattributed"],
            "unencodable_infos": total["unencodable"],
            "resources_leaked": leaked,
            "pool_threads": pool_threads,
            "remote_actions": remote.counts["actions"],
            "remote_5xx": remote.counts["5xx"],
            "remote_exceptions": remote.counts["escaped"],
            "remote_sessions_lost": remote.counts["sessions_lost"],
            "remote_server_alive_after": bool(remote.counts["server_alive_after"]),
            "remote_server_tracebacks": remote.counts["server_tracebacks"],
            "remote_tmp_dirs_leaked": remote.counts["tmp_dirs_leaked"],
        },
        "local": local,
        "remote": {**remote.counts, "examples": remote.examples, "env": args.remote_env},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    save(record, args.out)


if __name__ == "__main__":
    main()
