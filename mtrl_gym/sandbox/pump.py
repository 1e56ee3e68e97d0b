"""I/O with a running sandboxed child: feed stdin, collect capped output, enforce the wall clock.

``_pump`` multiplexes the child's pipes with ``selectors``, detects the main process's exit
without reaping it (pidfd, or ``waitid(WNOWAIT)`` on old kernels), kills the whole process group
and the pids cgroup when the run is over (finished, timed out or flooded with output), drains
what is left and only then reaps. ``_read_report`` then reads what the launcher and the
bootstrap wrote to the report pipe.

Non-goals: deciding what the outcome means (:func:`~mtrl_gym.sandbox.supervisor._classify`) and
starting the child (:func:`~mtrl_gym.sandbox.supervisor._supervise`).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Literal

from mtrl_gym.sandbox.cgroup import _PidsCgroup
from mtrl_gym.sandbox.datatypes import SandboxLimits

_READ_CHUNK = 65536
# After the main process is gone or killed, how long to wait for the pipes to reach EOF.
_DRAIN_GRACE_S = 2.0


@dataclass
class _PumpResult:
    stdout: bytes
    stderr: bytes
    truncated: bool
    killed_for: Literal["timeout", "output"] | None
    wait_status: int
    cpu_s: float


def _pump(
    proc: subprocess.Popen[bytes],
    limits: SandboxLimits,
    stdin: str | None,
    start: float,
    cgroup: _PidsCgroup | None,
) -> _PumpResult:
    """Feed stdin, collect capped output, enforce the wall clock, then kill leftovers and reap.

    The main process is detected as exited without reaping it (pidfd / ``waitid(WNOWAIT)``), so
    that its pid, which is also the process group id, cannot be reused by an unrelated process
    while the group is being killed.
    """
    assert proc.stdout is not None and proc.stderr is not None
    cap = limits.max_output_bytes
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    buffers = {out_fd: bytearray(), err_fd: bytearray()}
    truncated = False
    killed_for: Literal["timeout", "output"] | None = None
    sel = selectors.DefaultSelector()
    for fd in buffers:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pending_in = memoryview(stdin.encode("utf-8")) if stdin is not None else None
    in_fd = -1
    if proc.stdin is not None:
        if pending_in:
            in_fd = proc.stdin.fileno()
            os.set_blocking(in_fd, False)
            sel.register(in_fd, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ)
    except (AttributeError, OSError):
        pidfd = None  # Old kernel: poll with waitid(WNOWAIT) instead.

    def read_into(fd: int) -> None:
        nonlocal truncated, killed_for
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            sel.unregister(fd)
            return
        buf = buffers[fd]
        room = cap - len(buf)
        if len(chunk) > room:
            buf += chunk[: max(room, 0)]
            truncated = True
            if killed_for is None:
                killed_for = "output"
        else:
            buf += chunk

    deadline = start + limits.timeout_s
    exited = killed = False
    try:
        while killed_for is None and not exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed_for = "timeout"
                break
            wait = remaining if pidfd is not None else min(remaining, 0.02)
            for key, _ in sel.select(wait):
                fd = key.fd
                if fd == pidfd:
                    exited = True
                elif fd == in_fd:
                    assert pending_in is not None and proc.stdin is not None
                    try:
                        written = os.write(fd, pending_in[:_READ_CHUNK])
                        pending_in = pending_in[written:]
                    except BlockingIOError:
                        written = 0
                    except OSError:  # The program closed its stdin: stop feeding it.
                        pending_in = pending_in[:0]
                    if not pending_in:
                        sel.unregister(fd)
                        proc.stdin.close()
                        in_fd = -1
                else:
                    read_into(fd)
            if pidfd is None and not exited:
                exited = _has_exited(proc.pid)
        # The run is over (finished, timed out or flooded): nothing of it may survive.
        _kill_tree(proc.pid, cgroup)
        killed = True
        for fd in _registered(sel):
            if fd not in buffers:
                sel.unregister(fd)  # Only the output pipes are left to drain.
        drain_deadline = time.monotonic() + _DRAIN_GRACE_S
        while _registered(sel):
            remaining = drain_deadline - time.monotonic()
            if remaining <= 0:
                break  # A writer escaped every kill; give up on the rest of its output.
            for key, _ in sel.select(remaining):
                read_into(key.fd)
    finally:
        if not killed:  # An exception (e.g. KeyboardInterrupt) in the loop above.
            _kill_tree(proc.pid, cgroup)
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        # Reaped only now, after the group kill, so that no zombie is left behind either.
        _, wait_status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
    return _PumpResult(
        stdout=bytes(buffers[out_fd]),
        stderr=bytes(buffers[err_fd]),
        truncated=truncated,
        killed_for=killed_for,
        wait_status=wait_status,
        cpu_s=rusage.ru_utime + rusage.ru_stime,
    )


def _registered(sel: selectors.BaseSelector) -> list[int]:
    return [key.fd for key in sel.get_map().values()]


def _has_exited(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _kill_tree(pid: int, cgroup: _PidsCgroup | None) -> None:
    """SIGKILL the process group (atomic w.r.t. fork), then anything that left it (cgroup)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if cgroup is not None:
        cgroup.kill_all()


def _read_report(fd: int) -> list[str]:
    """Lines the launcher/bootstrap wrote to the report pipe (all writers are gone by now)."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").splitlines()
