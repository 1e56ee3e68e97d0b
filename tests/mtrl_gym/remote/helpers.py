"""Servers for the remote tests: in-process (a thread) or a real subprocess that can be killed."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# Runs argv[2:] under a file-descriptor limit of argv[1] (limits survive exec). A launcher, not
# Popen's preexec_fn, which can deadlock in a process with threads (the client's I/O thread).
_LIMIT_FILES = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.executable, sys.argv[2:])"
)
TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m mtrl_gym.remote serve ...`` in a subprocess; ``kill()`` is a SIGKILL."""

    def __init__(
        self,
        env: str,
        *args: str,
        port: int | None = None,
        token: str | None = None,
        max_open_files: int | None = None,
        log_path: Path | None = None,
    ):
        self.port = port or free_port()
        self.cmd = [sys.executable, "-m", "mtrl_gym.remote", "serve", env, "--port", str(self.port)]
        self.cmd += list(args)
        if max_open_files is not None:
            self.cmd = [sys.executable, "-c", _LIMIT_FILES, str(max_open_files), *self.cmd]
        self.env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.env.pop("MTRL_REMOTE_TOKEN", None)
        if token:
            self.env["MTRL_REMOTE_TOKEN"] = token
        self.log_path = log_path  # where the server's stderr goes (else nowhere)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "ServerProcess":
        # A file, not a pipe: nobody reads the pipe, and a full one would block the server.
        stderr = self.log_path.open("a") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        if self.log_path:
            stderr.close()  # the child has its own copy
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if re.search(r"listening on http://", line):
                return self
            if not line and self.proc.poll() is not None:
                break
        self.kill()
        raise RuntimeError(f"server did not start: {self.cmd}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
