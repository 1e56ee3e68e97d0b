"""Parent side of a sandboxed run: prepare it, start the launcher, classify what happened.

``_run`` creates the private working directory and the run's pids cgroup, ``_supervise``
starts the child (a fresh interpreter running ``launcher.py`` by path, with a scratch
environment and no ``preexec_fn``), hands it to :mod:`~mtrl_gym.sandbox.pump` for I/O, the wall
clock and the final kill, and ``_classify`` turns the outcome and the report pipe's lines into a
``SandboxResult`` or a ``SandboxInfraError``. The layers of the most recent run are kept for
``isolation_report``.

Report pipe protocol (one line per message, written by the child): ``L<json>`` the launcher's
layers, ``E<text>`` the launcher failed, ``X<text>`` exec of the target failed, ``R<json>`` the
Python bootstrap reached the user's code.

Non-goals: applying any containment layer (the child does, see
:mod:`~mtrl_gym.sandbox.launcher` and :mod:`~mtrl_gym.sandbox.bootstrap`) and argument
validation of the public API (:mod:`~mtrl_gym.sandbox.api`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from mtrl_gym.sandbox.bootstrap import _MEMORY_EXIT_CODE
from mtrl_gym.sandbox.cgroup import _PidsCgroup
from mtrl_gym.sandbox.datatypes import (
    SandboxInfraError,
    SandboxLimits,
    SandboxResult,
    SandboxStatus,
)
from mtrl_gym.sandbox.pump import _pump, _PumpResult, _read_report

# The launcher and the init of the pid namespace count against pids.max; the user gets the rest.
_HELPER_TASKS = 2
# The child's two stages, each run by path by a fresh interpreter (never imported by the child).
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LAUNCHER_FILE = os.path.join(_PACKAGE_DIR, "launcher.py")
_BOOTSTRAP_FILE = os.path.join(_PACKAGE_DIR, "bootstrap.py")

_STATE_LOCK = threading.Lock()
_LAST_LAYERS: dict[str, Any] | None = None


def _child_env(workdir: str) -> dict[str, str]:
    """A fixed environment: nothing of the trainer's environment (tokens, paths) leaks in."""
    bindir = os.path.dirname(sys.executable)
    return {
        "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # Reproducible str hashing (set iteration order) in printed results.
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        # BLAS/OpenMP pools would otherwise start one thread per core and hit max_processes.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # glibc reserves 64 MiB of address space per malloc arena and thread, which RLIMIT_AS
        # counts; two arenas keep threaded programs within memory_mb.
        "MALLOC_ARENA_MAX": "2",
    }


def _make_workdir(files: Mapping[str, bytes], copies: Mapping[str, str]) -> str:
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="mtrl-sandbox-"))
    try:
        for name, content in files.items():
            path = os.path.join(workdir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content)
        for name, source in copies.items():
            shutil.copyfile(source, os.path.join(workdir, name))
    except BaseException:
        _remove_tree(workdir)
        raise
    return workdir


def _remove_tree(path: str) -> None:
    """Delete the working directory even if the code made parts of it unreadable."""

    def fix_and_retry(func: Callable[[str], object], failed: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix_and_retry)


def _run(
    *,
    mode: Literal["python", "command"],
    argv: list[str] | None,
    limits: SandboxLimits,
    files: Mapping[str, bytes],
    stdin: str | None,
    copies: Mapping[str, str] | None = None,
) -> SandboxResult:
    if not isinstance(limits, SandboxLimits):
        raise ValueError("limits must be a SandboxLimits")
    if stdin is not None and not isinstance(stdin, str):
        raise ValueError("stdin must be a str or None")
    if not sys.executable:
        raise SandboxInfraError("no Python interpreter (sys.executable is empty)")
    workdir = _make_workdir(files, copies or {})
    cgroup = _PidsCgroup.create(limits.max_processes + _HELPER_TASKS)
    try:
        return _supervise(
            mode=mode, argv=argv, limits=limits, stdin=stdin, workdir=workdir, cgroup=cgroup
        )
    finally:
        if cgroup is not None:
            cgroup.kill_all()
            cgroup.remove()
        _remove_tree(workdir)


def _supervise(
    *,
    mode: Literal["python", "command"],
    argv: list[str] | None,
    limits: SandboxLimits,
    stdin: str | None,
    workdir: str,
    cgroup: _PidsCgroup | None,
) -> SandboxResult:
    report_r, report_w = os.pipe()
    config = {
        "mode": mode,
        "argv": argv,
        "workdir": workdir,
        "report_fd": report_w,
        "cgroup_procs": cgroup.procs_file if cgroup is not None else None,
        "cgroup_kind": cgroup.kind if cgroup is not None else None,
        "network": limits.network,
        "allow_subprocess": limits.allow_subprocess,
        "rlimits": {
            "AS": limits.memory_mb * 1024 * 1024,
            "CPU": limits.effective_cpu_s,
            "FSIZE": limits.max_file_mb * 1024 * 1024,
            "NOFILE": limits.max_open_files,
            "NPROC": limits.max_processes + _HELPER_TASKS,
        },
        "python": sys.executable,
        "script": _BOOTSTRAP_FILE,
    }
    # -s: no user site; -P: the script's directory (mtrl_gym/sandbox/) stays off sys.path, so
    # that none of its modules can shadow the standard library or be imported by the code (the
    # child loads its siblings by path). Not -I: it would also ignore PYTHONHASHSEED, and the
    # environment is built from scratch anyway (_child_env), which is what -E protects against.
    cmd = [sys.executable, "-s", "-P", _LAUNCHER_FILE, "launch", json.dumps(config)]
    start = time.monotonic()
    try:
        try:
            # No preexec_fn: it is unsafe with threads (the trainer runs tools from many), so
            # every limit is applied by the launcher, a fresh single-threaded interpreter.
            proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=_child_env(workdir),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(report_w,),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise SandboxInfraError(f"could not start the sandbox: {exc}") from exc
        finally:
            os.close(report_w)
        io_result = _pump(proc, limits, stdin, start, cgroup)
        duration = time.monotonic() - start
        report = _read_report(report_r)
    finally:
        os.close(report_r)
    return _classify(mode, limits, workdir, io_result, report, duration)


def _classify(
    mode: str,
    limits: SandboxLimits,
    workdir: str,
    io: _PumpResult,
    report: list[str],
    duration: float,
) -> SandboxResult:
    layers = next((json.loads(line[1:]) for line in report if line.startswith("L")), None)
    launcher_error = next((line[1:] for line in report if line.startswith("E")), None)
    exec_error = next((line[1:] for line in report if line.startswith("X")), None)
    boot = next((line[1:] for line in report if line.startswith("R")), None)
    stdout = _clean(io.stdout, workdir)
    stderr = _clean(io.stderr, workdir)

    if launcher_error is not None:
        raise SandboxInfraError(f"sandbox launcher failed: {launcher_error}")
    if layers is None:
        why = "did not start before the timeout" if io.killed_for else "launcher died"
        raise SandboxInfraError(f"sandbox {why}: {stderr.strip()[-500:]}")
    if mode == "python":
        if exec_error is not None:
            raise SandboxInfraError(f"could not start the Python bootstrap: {exec_error}")
        if boot is None:
            why = "did not reach the code before the timeout" if io.killed_for else "failed"
            raise SandboxInfraError(f"sandbox bootstrap {why}: {stderr.strip()[-500:]}")
        layers["seccomp"] = bool(json.loads(boot).get("seccomp")) if boot else None
    _record_layers(layers)

    returncode: int | None = os.waitstatus_to_exitcode(io.wait_status)
    status: SandboxStatus
    if io.killed_for == "output":
        status, returncode = "output_limit", None
        detail = f"output exceeded {limits.max_output_bytes} bytes; the program was stopped"
    elif io.killed_for == "timeout":
        status, returncode = "timeout", None
        detail = f"execution timed out after {limits.timeout_s:g} s"
    elif returncode == 0:
        status, detail = "ok", ""
    elif mode == "python" and returncode == _MEMORY_EXIT_CODE:
        status, detail = "memory_limit", f"memory limit of {limits.memory_mb} MB exceeded"
    elif returncode is not None and returncode < 0:
        sig = -returncode
        cpu_hit = sig == signal.SIGKILL and io.cpu_s >= limits.effective_cpu_s - 0.05
        if sig == signal.SIGXCPU or cpu_hit:
            status = "cpu_limit"
            detail = f"CPU time limit of {limits.effective_cpu_s} s exceeded"
        else:
            status, detail = "killed", f"killed by signal {_signal_name(sig)}"
    else:
        status, detail = "error", f"exit code {returncode}"
    return SandboxResult(
        status=status,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        duration_s=duration,
        truncated=io.truncated,
        detail=detail,
    )


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _clean(data: bytes, workdir: str) -> str:
    # Tracebacks and os.getcwd() would otherwise embed a random temporary path.
    return data.replace(workdir.encode(), b".").decode("utf-8", "replace")


def _record_layers(layers: dict[str, Any]) -> None:
    global _LAST_LAYERS
    with _STATE_LOCK:
        _LAST_LAYERS = dict(layers)


def _last_layers() -> dict[str, Any] | None:
    """A copy of the layers the most recent run obtained, or ``None`` before the first run."""
    with _STATE_LOCK:
        return dict(_LAST_LAYERS) if _LAST_LAYERS is not None else None
