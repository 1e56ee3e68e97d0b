"""Per-step overhead of a remote environment over loopback, against the same env in-process.

The server runs in a subprocess (``python -m mtrl_gym.remote serve``), as it would in
production; the environment is trivial (small observation, no work), so the difference between
the remote and the in-process step time is the adapter's own cost: JSON, the WebSocket round
trip, the server's thread pool and the client's I/O thread. Also measured: the async path the
episode runner uses (``astep``) and the throughput of many concurrent sessions.

Run: ``.venv/bin/python benchmarks/bench_remote.py`` (last stdout line: JSON, also written to
``benchmarks/results/remote_loopback_cpu.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym

from mtrl_gym import EpisodeJob, EpisodeRunner, TextSpace
from mtrl_gym.remote import RemoteEnv

ROOT = Path(__file__).resolve().parents[1]


class NullEnv(gym.Env):
    """Echoes a short observation; steps never end the episode."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.action_space = TextSpace(4096)
        self.observation_space = TextSpace()
        self.k = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k = 0
        return "start", {"task_id": "null"}

    def step(self, action):
        self.k += 1
        limit = 10**9 if action != "stop" else self.k
        return f"ok {self.k}", 0.0, self.k >= limit, False, {"k": self.k}


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1e3, 4),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1e3, 4),
    }


def _time_steps(step, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        step(f"action {i}")
        out.append(time.perf_counter() - t)
    return out


async def _time_asteps(env: RemoteEnv, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await env.astep(f"action {i}")
        out.append(time.perf_counter() - t)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--session-steps", type=int, default=40)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/remote_loopback_cpu.json"
    )
    args = parser.parse_args()

    local = NullEnv()
    local.reset()
    _time_steps(local.step, 200)
    local_s = _time_steps(local.step, args.steps)

    port = _free_port()
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
    env_vars.pop("MTRL_REMOTE_TOKEN", None)
    cmd = [sys.executable, "-m", "mtrl_gym.remote", "serve", "bench_remote:NullEnv"]
    server = subprocess.Popen(
        [*cmd, "--port", str(port)], cwd=ROOT, env=env_vars, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        remote = RemoteEnv(url)
        remote.reset()
        _time_steps(remote.step, 200)
        sync_s = _time_steps(remote.step, args.steps)
        async_s = asyncio.run(_time_asteps(remote, args.steps))
        remote.close()

        jobs = [
            EpisodeJob(env=lambda: RemoteEnv(url), policy=_Countdown(args.session_steps), tag=i)
            for i in range(args.sessions)
        ]
        t = time.perf_counter()
        results = EpisodeRunner(max_concurrency=args.sessions).run_sync(jobs)
        wall = time.perf_counter() - t
        assert all(len(r.steps) == args.session_steps and r.status == "ok" for r in results)
    finally:
        server.terminate()
        server.wait(timeout=30)

    local_ms, sync_ms, async_ms = _ms(local_s), _ms(sync_s), _ms(async_s)
    record = {
        "benchmark": "remote_loopback_cpu",
        "payload": "observation ~6 chars, action ~10 chars, info {k}",
        "steps_timed": args.steps,
        "in_process_step": local_ms,
        "remote_step_sync": sync_ms,
        "remote_step_async": async_ms,
        "overhead_sync_median_ms": round(sync_ms["median_ms"] - local_ms["median_ms"], 4),
        "overhead_async_median_ms": round(async_ms["median_ms"] - local_ms["median_ms"], 4),
        "goal_median_overhead_ms": 1.0,
        "concurrent": {
            "sessions": args.sessions,
            "steps_per_session": args.session_steps,
            "wall_s": round(wall, 3),
            "steps_per_s": round(args.sessions * args.session_steps / wall, 1),
        },
        "hardware": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "description": f"{os.cpu_count()}-core CPU, server and client on one machine",
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return record


class _Countdown:
    """Says "stop" at the n-th step, which ends a NullEnv episode."""

    def __init__(self, n: int):
        self.n, self.k = n, 0

    def __call__(self, observation, info):
        self.k += 1
        return "stop" if self.k >= self.n else "go"


if __name__ == "__main__":
    main()
