"""Isolated execution of untrusted code for tools whose outcome must be verified.

Agents write code (Python, SQL, shell commands) and environments score what it does, so the code
is treated as hostile: it must not be able to hang the trainer, exhaust the machine, touch the
network, modify files outside its own scratch directory, leave processes behind, or turn a
failure of its own into a failure of the infrastructure (which the trainer excludes from scoring
instead of penalising).

Every run gets a fresh private working directory (removed afterwards) and a process tree confined
by independent layers; each is best-effort except the wall clock and the resource limits:

* **Wall clock** (parent): the run ends when its main process exits or at ``timeout_s``; then the
  whole process group, and the run's pids cgroup, is SIGKILLed and reaped. stdout and stderr are
  read incrementally; a program that writes more than ``max_output_bytes`` to either is killed at
  once and reported as ``"output_limit"`` (first bytes kept, ``truncated=True``).
* **Resource limits** (launcher, ``setrlimit``): address space, CPU time, file size, open files,
  processes, no core dumps; hard limit == soft limit so that they cannot be raised again.
* **Namespaces** (launcher, ``unshare``): network (only a down loopback), mount (every mount
  read-only except the working directory), pid (the code sees and can signal only its own
  processes, and all of them die with the namespace's init), IPC. Root gets them directly, other
  users through an unprivileged user namespace where the kernel allows it.
* **Pids cgroup** (parent creates it, launcher joins it): ``pids.max`` caps tasks, because Linux
  never enforces ``RLIMIT_NPROC`` for uid 0. cgroup v1 or a delegated v2 subtree.
* **Privileges** (launcher): every capability is dropped from the bounding, ambient and
  inheritable sets and ``no_new_privs`` is set, so a root child cannot undo the layers above.
* **Python only** (bootstrap): a seccomp filter that fails fork/exec (threads still work) unless
  ``allow_subprocess``, and a PEP 578 audit hook that raises ``PermissionError("sandbox: ... is
  not allowed")`` for sockets, process creation, writes outside the working directory, ctypes,
  native code loaded from outside the interpreter's own directories, gc/trace introspection and
  signals to other processes. Audit hooks are not a security boundary on their own (CPython says
  so); the hook gives clear errors and covers hosts without the kernel layers.

``isolation_report()`` says which layers the most recent run actually obtained.

Thread safety: runs share no mutable state except a lock-protected report, never ``os.chdir``,
and use no ``preexec_fn`` (unsafe after ``fork`` in a threaded parent). Instead the child is a
fresh, single-threaded interpreter running this very file (``python -s -P sandbox.py launch``),
which may freely use ctypes to apply the layers before it ``exec``s the command or the Python
bootstrap (``... sandbox.py boot``). This file imports only the standard library (never jax, and
not the ``mtrl_gym`` package) so that both stages start fast.

Non-goals: confidentiality (sandboxed code can *read* whatever the sandbox user can read, so keep
reference answers and secrets unreadable for it), disk quotas beyond ``max_file_mb`` per file,
non-Linux hosts (they get rlimits and the audit hook only), and containing third-party native
extensions installed in the interpreter's environment.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "SandboxInfraError",
    "SandboxLimits",
    "SandboxResult",
    "SandboxStatus",
    "isolation_report",
    "run_command",
    "run_python",
    "run_sql",
]

SandboxStatus = Literal[
    "ok", "error", "timeout", "memory_limit", "cpu_limit", "output_limit", "killed"
]

# The bootstrap exits with this code when the user's code dies of MemoryError; a hostile program
# can fake it with sys.exit(251), but that only misreports its own failure.
_MEMORY_EXIT_CODE = 251
# The launcher exits with this code (after writing an "E" line to the report pipe) when it could
# not set up the sandbox; the parent turns it into SandboxInfraError.
_LAUNCHER_FAILED_EXIT_CODE = 120
# The launcher and the init of the pid namespace count against pids.max; the user gets the rest.
_HELPER_TASKS = 2
_MAIN_FILE = "main.py"
_THIS_FILE = os.path.abspath(__file__)
_READ_CHUNK = 65536
# After the main process is gone or killed, how long to wait for the pipes to reach EOF.
_DRAIN_GRACE_S = 2.0
_CGROUP_SWEEP_S = 2.0


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Resource limits and permissions of one sandboxed run.

    Attributes:
        timeout_s: Wall-clock limit; after it the whole process tree is SIGKILLed.
        cpu_s: ``RLIMIT_CPU`` soft limit in seconds per process (SIGXCPU, then SIGKILL one second
            later); ``None`` means ``ceil(timeout_s) + 1``.
        memory_mb: ``RLIMIT_AS`` (virtual address space) per process, in MiB. The Python
            bootstrap needs about 50 MiB to start; below that runs raise SandboxInfraError.
        max_processes: Tasks (processes *and threads*) the code may have at once, enforced by a
            pids cgroup where available and by ``RLIMIT_NPROC`` (which Linux ignores for root).
        max_output_bytes: Cap on stdout and on stderr each; a program that writes more is killed
            and reported as ``"output_limit"`` with the first bytes kept.
        max_file_mb: ``RLIMIT_FSIZE``: largest file the code may write, in MiB.
        max_open_files: ``RLIMIT_NOFILE``.
        network: Allow network access (otherwise: empty network namespace plus, for Python, the
            audit hook refuses sockets other than Unix sockets inside the working directory).
        allow_subprocess: Python only: allow fork/exec/subprocess (otherwise refused by a
            seccomp filter and the audit hook).
    """

    timeout_s: float = 5.0
    cpu_s: int | None = None
    memory_mb: int = 512
    max_processes: int = 16
    max_output_bytes: int = 65536
    max_file_mb: int = 16
    max_open_files: int = 64
    network: bool = False
    allow_subprocess: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, int | float)
            or not math.isfinite(self.timeout_s)
            or self.timeout_s <= 0
        ):
            raise ValueError(f"timeout_s must be a positive finite number, got {self.timeout_s!r}")
        if self.cpu_s is not None:
            _require_positive_int("cpu_s", self.cpu_s)
        for name in (
            "memory_mb",
            "max_processes",
            "max_output_bytes",
            "max_file_mb",
            "max_open_files",
        ):
            _require_positive_int(name, getattr(self, name))
        for name in ("network", "allow_subprocess"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def effective_cpu_s(self) -> int:
        """The CPU-time limit actually applied (``cpu_s`` or ``ceil(timeout_s) + 1``)."""
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


def _require_positive_int(name: str, value: object) -> None:
    # bool is an int subclass; SandboxLimits(memory_mb=True) is a bug, not "1 MiB".
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        status: ``"ok"`` (exit code 0), ``"error"`` (nonzero exit or uncaught exception),
            ``"timeout"``, ``"memory_limit"``, ``"cpu_limit"``, ``"output_limit"`` or ``"killed"``
            (died of another signal).
        returncode: Exit code, negative signal number, or ``None`` when the sandbox killed the
            program (timeout, output flood).
        stdout: Decoded stdout, at most ``max_output_bytes`` bytes of it; the private working
            directory's path is replaced by ``.`` so that results are reproducible.
        stderr: Same for stderr (tracebacks, SQL errors, sandbox refusals).
        duration_s: Wall-clock time of the run, for diagnostics only (never compare it).
        truncated: Whether stdout or stderr was cut at ``max_output_bytes``.
        detail: Deterministic one-line explanation of a non-ok status, e.g.
            ``"execution timed out after 2.0 s"``.
    """

    status: SandboxStatus
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    truncated: bool = False
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the program ran to completion with exit code 0."""
        return self.status == "ok"

    def describe(self) -> str:
        """Summarise the run for an agent or a log: stdout when ok, otherwise the error.

        Returns:
            Deterministic text (no timings, no private paths).
        """
        if self.ok:
            text = self.stdout if self.stdout else "(no output)"
            if self.stderr:
                text += f"\nstderr:\n{self.stderr}"
            return text
        parts = [f"Error: {self.detail or self.status}"]
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout}")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr}")
        return "\n".join(parts)


class SandboxInfraError(RuntimeError):
    """The sandbox itself could not run the code; the code is not to blame.

    Raised only on conditions the sandboxed code cannot produce itself (spawn failure, a launcher
    or bootstrap that did not reach the user's code, a broken ``setup_sql``), so that a policy
    cannot learn to dodge penalties by faking infrastructure failures.
    """


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def run_python(
    code: str,
    *,
    limits: SandboxLimits = SandboxLimits(),  # noqa: B008 - frozen, so a shared default is safe
    files: Mapping[str, str | bytes] | None = None,
    stdin: str | None = None,
) -> SandboxResult:
    """Run Python source in the sandbox as ``main.py`` in a fresh working directory.

    Args:
        code: Python source; executed as ``__main__`` with the working directory on
            ``sys.path`` (so ``files`` can be imported), ``PYTHONHASHSEED=0``, and the audit hook
            and seccomp filter installed.
        limits: Resource limits and permissions.
        files: Extra files to create in the working directory first (relative paths; ``str``
            is written as UTF-8). ``main.py`` is reserved.
        stdin: Text fed to the program's stdin (empty stdin when ``None``).

    Returns:
        The run's outcome.

    Raises:
        ValueError: Bad arguments (unsafe file names, reserved names, bad types).
        SandboxInfraError: The sandbox could not run the code.
    """
    if not isinstance(code, str):
        raise ValueError("code must be a str")
    extra = _checked_files(files, reserved=(_MAIN_FILE,))
    extra[_MAIN_FILE] = code.encode("utf-8")
    return _run(mode="python", argv=None, limits=limits, files=extra, stdin=stdin)


def run_command(
    argv: Sequence[str],
    *,
    limits: SandboxLimits = SandboxLimits(),  # noqa: B008 - frozen, so a shared default is safe
    files: Mapping[str, str | bytes] | None = None,
    stdin: str | None = None,
) -> SandboxResult:
    """Run an arbitrary program (looked up on a fixed ``PATH``) in the sandbox.

    The OS layers apply (rlimits, namespaces, cgroup, dropped capabilities, wall clock), the
    Python audit hook and seccomp filter do not. A command that cannot be executed yields status
    ``"error"`` with exit code 127 (not found) or 126 (not executable), as a shell would.

    Args:
        argv: Program and arguments, e.g. ``["sh", "-c", "echo hi"]``.
        limits: Resource limits (``allow_subprocess`` is ignored: commands may fork, within
            ``max_processes``).
        files: Files to create in the working directory first.
        stdin: Text fed to the program's stdin (empty stdin when ``None``).

    Returns:
        The run's outcome.

    Raises:
        ValueError: Bad arguments.
        SandboxInfraError: The sandbox could not run the command.
    """
    if isinstance(argv, str | bytes) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty sequence of str")
    if any("\0" in a for a in argv):
        raise ValueError("argv must not contain NUL characters")
    extra = _checked_files(files, reserved=())
    return _run(mode="command", argv=list(argv), limits=limits, files=extra, stdin=stdin)


_SQL_DB_FILE = "database.sqlite"
_SQL_QUERY_FILE = "query.sql"
_SQL_SETUP_FILE = "setup.sql"
_SQL_CONFIG_FILE = "sql_config.json"
_SQL_SETUP_FAILED_EXIT_CODE = 3

# The runner is trusted code executed as main.py under the audit hook; only the query is
# untrusted, and SQL cannot choose the interpreter's exit code, so the runner's exit codes can be
# believed (setup failure -> infra error). ATTACH (which VACUUM INTO also uses) is denied
# because SQLite opens those files in C, below the audit hook.
_SQL_RUNNER = """\
import json
import sqlite3
import sys

SQLITE_ATTACH = 24


def authorizer(action, *_args):
    return sqlite3.SQLITE_DENY if action == SQLITE_ATTACH else sqlite3.SQLITE_OK


def cell(value):
    if isinstance(value, bytes):
        return "X'" + value.hex().upper() + "'"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    return value


def fail(exc, code):
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(code)


with open("sql_config.json", encoding="utf-8") as f:
    config = json.load(f)
if config["setup"]:
    with open("setup.sql", encoding="utf-8") as f:
        setup = f.read()
    try:
        con = sqlite3.connect("database.sqlite")
        con.set_authorizer(authorizer)
        con.executescript(setup)
        con.commit()
        con.close()
    except sqlite3.Error as exc:
        fail(exc, 3)
with open("query.sql", encoding="utf-8") as f:
    query = f.read()
try:
    mode = "ro" if config["read_only"] else "rw"
    sqlite3.connect("database.sqlite").close()  # creates an empty database if there is none
    con = sqlite3.connect(f"file:database.sqlite?mode={mode}", uri=True)
    con.set_authorizer(authorizer)
    if config["read_only"]:
        con.execute("PRAGMA query_only = ON")
    cursor = con.execute(query)
    columns = [d[0] for d in cursor.description] if cursor.description else []
    rows = [[cell(v) for v in row] for row in cursor.fetchall()]
    con.commit()
    con.close()
except sqlite3.Error as exc:
    fail(exc, 1)
print(json.dumps({"columns": columns, "rows": rows}, ensure_ascii=False))
"""


def run_sql(
    query: str,
    *,
    database: str | os.PathLike[str] | None = None,
    setup_sql: str | None = None,
    read_only: bool = True,
    limits: SandboxLimits = SandboxLimits(),  # noqa: B008 - frozen, so a shared default is safe
) -> SandboxResult:
    """Run one SQL statement with sqlite3 in the sandbox and return its rows as JSON.

    The database is *copied* into the private working directory (with its ``-wal`` file, if any),
    so the original can never be modified, whatever ``read_only`` says. ``setup_sql`` (trusted,
    from the environment) is applied to the copy, or to a fresh empty database, before the query.

    Args:
        query: A single SQL statement (untrusted).
        database: Path of an SQLite database file to query (a copy of it).
        setup_sql: Script executed before the query, e.g. ``CREATE TABLE ...; INSERT ...``.
        read_only: Open the copy read-only, so that writes fail with an SQLite error.
        limits: Resource limits.

    Returns:
        On success, stdout is ``{"columns": [...], "rows": [[...], ...]}`` (blobs as ``X'..'``
        strings); an SQL error gives status ``"error"`` with ``"<ErrorType>: <sqlite message>"``
        in stderr.

    Raises:
        ValueError: Bad arguments.
        FileNotFoundError: ``database`` does not exist.
        SandboxInfraError: The sandbox could not run, or ``setup_sql`` failed.
    """
    if not isinstance(query, str):
        raise ValueError("query must be a str")
    if setup_sql is not None and not isinstance(setup_sql, str):
        raise ValueError("setup_sql must be a str or None")
    files: dict[str, bytes] = {
        _MAIN_FILE: _SQL_RUNNER.encode("utf-8"),
        _SQL_QUERY_FILE: query.encode("utf-8"),
        _SQL_CONFIG_FILE: json.dumps(
            {"read_only": bool(read_only), "setup": setup_sql is not None}
        ).encode("utf-8"),
    }
    if setup_sql is not None:
        files[_SQL_SETUP_FILE] = setup_sql.encode("utf-8")
    copies: dict[str, str] = {}
    if database is not None:
        source = os.fspath(database)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"database not found: {source}")
        copies[_SQL_DB_FILE] = source
        if os.path.isfile(source + "-wal"):
            copies[_SQL_DB_FILE + "-wal"] = source + "-wal"
    result = _run(mode="python", argv=None, limits=limits, files=files, stdin=None, copies=copies)
    if result.status == "error" and result.returncode == _SQL_SETUP_FAILED_EXIT_CODE:
        raise SandboxInfraError(f"setup_sql failed: {result.stderr.strip()}")
    return result


def isolation_report() -> dict[str, Any]:
    """Which containment layers the sandbox obtains on this host.

    Reports what the most recent run's launcher (and, for Python, bootstrap) actually achieved;
    if nothing has run yet, a trivial Python run is made first.

    Returns:
        A JSON-friendly dict, e.g. ``{"network": "namespace", "filesystem":
        "read-only mount namespace", "pids_cgroup": "v1", ...}``.
    """
    with _STATE_LOCK:
        layers = dict(_LAST_LAYERS) if _LAST_LAYERS is not None else None
    if layers is None:
        run_python("pass", limits=SandboxLimits(timeout_s=30.0))
        with _STATE_LOCK:
            layers = dict(_LAST_LAYERS or {})
    netns = bool(layers.get("netns"))
    ro = bool(layers.get("readonly_mounts"))
    return {
        "root": os.geteuid() == 0,
        "network": "namespace" if netns else "audit hook (python only)",
        "filesystem": "read-only mount namespace" if ro else "audit hook (python only)",
        "network_namespace": netns,
        "user_namespace": bool(layers.get("userns")),
        "mount_namespace_readonly": ro,
        "pid_namespace": bool(layers.get("pidns")),
        "ipc_namespace": bool(layers.get("ipcns")),
        "pids_cgroup": layers.get("cgroup"),
        "capabilities_dropped": bool(layers.get("caps_dropped")),
        "no_new_privs": bool(layers.get("no_new_privs")),
        "seccomp_no_subprocess": layers.get("seccomp"),
        "audit_hook": "python only",
        "rlimits": ["AS", "CPU", "FSIZE", "NOFILE", "NPROC", "CORE"],
    }


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------

_STATE_LOCK = threading.Lock()
_LAST_LAYERS: dict[str, Any] | None = None
_CGROUP_BASE: tuple[str, str] | None | bool = False  # False: not probed yet.
_LEAKED_CGROUPS: list[str] = []


def _checked_files(
    files: Mapping[str, str | bytes] | None, *, reserved: tuple[str, ...]
) -> dict[str, bytes]:
    """Validate ``files`` names (relative, no ``..``) and encode the contents."""
    out: dict[str, bytes] = {}
    if files is None:
        return out
    if not isinstance(files, Mapping):
        raise ValueError("files must be a mapping of relative path -> str | bytes")
    for name, content in files.items():
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"invalid file name {name!r}")
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"file name must be a plain relative path, got {name!r}")
        if name in reserved:
            raise ValueError(f"file name {name!r} is reserved by the sandbox")
        if isinstance(content, str):
            out[name] = content.encode("utf-8")
        elif isinstance(content, bytes | bytearray | memoryview):
            out[name] = bytes(content)
        else:
            raise ValueError(f"content of {name!r} must be str or bytes")
    return out


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
        "script": _THIS_FILE,
    }
    # -s: no user site; -P: the script's directory (mtrl_gym/, which has a types.py) must not
    # shadow the standard library. Not -I: it would also ignore PYTHONHASHSEED, and the
    # environment is built from scratch anyway (_child_env), which is what -E protects against.
    cmd = [sys.executable, "-s", "-P", _THIS_FILE, "launch", json.dumps(config)]
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


# --------------------------------------------------------------------------------------------
# Pids cgroup (parent side; the launcher joins it)
# --------------------------------------------------------------------------------------------


class _PidsCgroup:
    """A per-run pids cgroup (v1 or v2). Every operation is best-effort and never raises."""

    def __init__(self, path: str, kind: str) -> None:
        self.path = path
        self.kind = kind
        self.procs_file = os.path.join(path, "cgroup.procs")

    @classmethod
    def create(cls, max_tasks: int) -> _PidsCgroup | None:
        base = _cgroup_base()
        if base is None:
            return None
        base_dir, kind = base
        _retry_leaked_cgroups()
        path = os.path.join(base_dir, f"run-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            os.mkdir(path)
        except OSError:
            return None
        try:
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(max_tasks))
        except OSError:
            _rmdir_quiet(path)
            return None
        return cls(path, kind)

    def pids(self) -> list[int]:
        try:
            with open(self.procs_file) as f:
                return [int(line) for line in f if line.strip()]
        except (OSError, ValueError):
            return []

    def kill_all(self) -> None:
        """Kill every task in the cgroup, including those that left the process group."""
        kill_file = os.path.join(self.path, "cgroup.kill")
        if self.kind == "v2" and os.path.exists(kill_file):
            try:
                with open(kill_file, "w") as f:
                    f.write("1")
            except OSError:
                pass
        # v1 has no atomic kill: sweep until empty. pids.max bounds how many can reappear.
        deadline = time.monotonic() + _CGROUP_SWEEP_S
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def remove(self) -> None:
        deadline = time.monotonic() + _CGROUP_SWEEP_S
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() >= deadline:
                    with _STATE_LOCK:
                        _LEAKED_CGROUPS.append(self.path)
                    return
                time.sleep(0.01)


def _rmdir_quiet(path: str) -> bool:
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _retry_leaked_cgroups() -> None:
    with _STATE_LOCK:
        leaked = list(_LEAKED_CGROUPS)
    for path in leaked:
        if _rmdir_quiet(path):
            with _STATE_LOCK:
                if path in _LEAKED_CGROUPS:
                    _LEAKED_CGROUPS.remove(path)


def _cgroup_base() -> tuple[str, str] | None:
    """Find (once) a writable directory under which per-run pids cgroups can be created."""
    global _CGROUP_BASE
    with _STATE_LOCK:
        if _CGROUP_BASE is not False:
            return _CGROUP_BASE  # type: ignore[return-value]
    base = _probe_cgroup_base()
    with _STATE_LOCK:
        _CGROUP_BASE = base
    return base


def _probe_cgroup_base() -> tuple[str, str] | None:
    try:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read().splitlines()
        with open("/proc/self/cgroup") as f:
            own = [line.split(":", 2) for line in f.read().splitlines()]
    except OSError:
        return None
    v1_mount = v2_mount = None
    for line in mountinfo:
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or len(extra) < 3:
            continue
        root, mountpoint, fstype = fields[3], fields[4], extra[0]
        if fstype == "cgroup" and "pids" in extra[2].split(","):
            v1_mount = (root, mountpoint)
        elif fstype == "cgroup2":
            v2_mount = (root, mountpoint)
    candidates: list[tuple[str, str]] = []
    for entry in own:
        if len(entry) != 3:
            continue
        _, controllers, path = entry
        if v1_mount and "pids" in controllers.split(","):
            candidates.append((_join_cgroup(v1_mount, path), "v1"))
        elif v2_mount and entry[0] == "0" and controllers == "":
            parent = _join_cgroup(v2_mount, path)
            try:
                with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                    enabled = f.read().split()
            except OSError:
                continue
            # Without "pids" in subtree_control, a child cgroup would have no pids.max.
            if "pids" in enabled:
                candidates.append((parent, "v2"))
    for parent, kind in candidates:
        base = os.path.join(parent, "mtrl-sandbox") if kind == "v1" else parent
        try:
            os.makedirs(base, exist_ok=True)
            probe = os.path.join(base, f"probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.mkdir(probe)
            usable = os.path.exists(os.path.join(probe, "pids.max"))
            os.rmdir(probe)
        except OSError:
            continue
        if usable:
            return base, kind
    return None


def _join_cgroup(mount: tuple[str, str], path: str) -> str:
    root, mountpoint = mount
    # A bind-mounted subtree (containers) shows paths relative to the host hierarchy.
    if root != "/" and path.startswith(root):
        path = path[len(root) :]
    return os.path.join(mountpoint, path.lstrip("/"))


# --------------------------------------------------------------------------------------------
# Child side: launcher (OS layers, then exec) and Python bootstrap (hook, then user code)
# --------------------------------------------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MOUNT_ATTR_NOEXEC = 0x8
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_SYS_MOUNT_SETATTR = 442  # Same number on every architecture (new-style syscall table).
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def _launcher(config: dict[str, Any]) -> None:
    """Apply the OS layers to this process, then exec the bootstrap or the command.

    Runs in a fresh single-threaded interpreter, which is why it may do what ``preexec_fn``
    must not (take locks, allocate, call into ctypes). Layers that fail are skipped and reported.
    """
    report_fd: int = config["report_fd"]
    layers: dict[str, Any] = {
        "cgroup": None,
        "netns": False,
        "userns": False,
        "readonly_mounts": False,
        "pidns": False,
        "ipcns": False,
        "caps_dropped": False,
        "no_new_privs": False,
    }
    try:
        # 1. Join the pids cgroup first, before anything could fork.
        if config["cgroup_procs"]:
            try:
                with open(config["cgroup_procs"], "w") as f:
                    f.write(str(os.getpid()))
                layers["cgroup"] = config["cgroup_kind"]
            except OSError:
                pass
        libc = _libc()
        # 2. Namespaces.
        flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWIPC
        if not config["network"]:
            flags |= _CLONE_NEWNET
        unshared = 0
        if libc is not None:
            uid, gid = os.getuid(), os.getgid()
            if libc.unshare(flags) == 0:
                unshared = flags
            elif libc.unshare(flags | _CLONE_NEWUSER) == 0:
                # Unprivileged: a user namespace grants the capabilities the others need.
                unshared = flags | _CLONE_NEWUSER
                layers["userns"] = True
                _write_id_maps(uid, gid)
            elif not config["network"] and libc.unshare(_CLONE_NEWNET) == 0:
                unshared = _CLONE_NEWNET
        layers["netns"] = bool(unshared & _CLONE_NEWNET)
        layers["ipcns"] = bool(unshared & _CLONE_NEWIPC)
        pidns = bool(unshared & _CLONE_NEWPID)
        if unshared & _CLONE_NEWNS and libc is not None:
            layers["readonly_mounts"] = _readonly_mounts(
                libc, config["workdir"], noexec=config["mode"] == "python"
            )
            # The cwd still refers to the directory *under* the new bind mount (read-only).
            os.chdir(config["workdir"])
        # 3. Resource limits (inherited by everything below; hard == soft so they stick).
        _apply_rlimits(config["rlimits"])
        # 4. Privileges: whatever runs next keeps no capability and cannot gain any.
        if libc is not None:
            layers["no_new_privs"] = libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            layers["caps_dropped"] = _drop_capabilities(libc)
        layers["pidns"] = pidns
        os.write(report_fd, b"L" + json.dumps(layers).encode() + b"\n")
    except Exception as exc:  # Any failure here is the sandbox's, not the code's.
        os.write(report_fd, f"E{type(exc).__name__}: {exc}\n".encode())
        os._exit(_LAUNCHER_FAILED_EXIT_CODE)
    if pidns:
        _run_pid_namespace_init(config, libc)
    _exec_target(config)


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None  # Namespaces, prctl and seccomp are Linux-only; rlimits still apply.
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _write_id_maps(uid: int, gid: int) -> None:
    # Map the caller's ids onto themselves so that files keep their owner inside.
    for path, content in (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", f"{uid} {uid} 1"),
        ("/proc/self/gid_map", f"{gid} {gid} 1"),
    ):
        try:
            with open(path, "w") as f:
                f.write(content)
        except OSError:
            pass


def _readonly_mounts(libc: Any, workdir: str, *, noexec: bool) -> bool:
    """Make every mount read-only in this (new) mount namespace except the working directory."""
    import ctypes

    class MountAttr(ctypes.Structure):
        _fields_ = [
            ("attr_set", ctypes.c_uint64),
            ("attr_clr", ctypes.c_uint64),
            ("propagation", ctypes.c_uint64),
            ("userns_fd", ctypes.c_uint64),
        ]

    def setattr_(path: str, flags: int, attr_set: int, attr_clr: int) -> bool:
        attr = MountAttr(attr_set, attr_clr, 0, 0)
        rc = libc.syscall(
            _SYS_MOUNT_SETATTR,
            ctypes.c_int(_AT_FDCWD),
            path.encode(),
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
        return bool(rc == 0)

    # Private first: otherwise the bind mount below would propagate into the host's namespace.
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False
    if not setattr_("/", _AT_RECURSIVE, _MOUNT_ATTR_RDONLY, 0):
        return False
    if libc.mount(workdir.encode(), workdir.encode(), None, _MS_BIND, None) != 0:
        return False
    # noexec for Python runs: native code written into the working directory cannot be loaded.
    attr_set = _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV | (_MOUNT_ATTR_NOEXEC if noexec else 0)
    return setattr_(workdir, 0, attr_set, _MOUNT_ATTR_RDONLY)


def _apply_rlimits(limits: Mapping[str, int]) -> None:
    import resource

    cpu = limits["CPU"]
    # SIGXCPU at the soft limit; the hard limit (SIGKILL) catches a program that ignores it.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for name in ("AS", "FSIZE", "NOFILE", "NPROC"):
        value = limits[name]
        res = getattr(resource, f"RLIMIT_{name}")
        _, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, value))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _drop_capabilities(libc: Any) -> bool:
    """Empty the bounding, ambient and inheritable sets so the exec'd program has no caps."""
    import ctypes

    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 40
    ok = True
    for cap in range(last + 1):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            ok = False
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    # For uid 0, exec grants inheritable | bounding, so the inheritable set must be empty too.
    header = Header(0x20080522, 0)
    data = (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    if data[0].inheritable or data[1].inheritable:
        data[0].inheritable = data[1].inheritable = 0
        if libc.capset(ctypes.byref(header), data) != 0:
            return False
    return ok


def _run_pid_namespace_init(config: dict[str, Any], libc: Any) -> None:
    """Fork the namespace's init, which forks the target; forward the target's fate.

    When init exits, the kernel kills everything left in the namespace, so nothing the code
    started can outlive the run. Init itself only reaps: signals sent from inside the namespace
    to its init are ignored by the kernel, so the code cannot take it down early.
    """
    report_fd: int = config["report_fd"]
    try:
        status_r, status_w = os.pipe()
        init_pid = os.fork()
    except OSError as exc:
        os.write(report_fd, f"Ecannot start the namespace's init: {exc}\n".encode())
        os._exit(_LAUNCHER_FAILED_EXIT_CODE)
    if init_pid == 0:
        try:
            os.close(status_r)
            if libc is not None:
                # A /proc that shows only this namespace's processes (read-only).
                flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
                libc.mount(b"proc", b"/proc", b"proc", flags, None)
            try:
                target = os.fork()
            except OSError as exc:
                os.write(report_fd, f"Ecannot fork the program: {exc}\n".encode())
                os._exit(_LAUNCHER_FAILED_EXIT_CODE)
            if target == 0:
                os.close(status_w)
                _exec_target(config)
            os.close(report_fd)
            while True:
                pid, status = os.waitpid(-1, 0)
                if pid == target:
                    os.write(status_w, str(status).encode())
                    break
        finally:
            os._exit(0)
    os.close(status_w)
    os.close(report_fd)
    _, init_status = os.waitpid(init_pid, 0)
    data = os.read(status_r, 64)
    status = int(data) if data else init_status
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # Die of the same signal so that the parent sees it (SIGXCPU -> cpu_limit, ...).
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _exec_target(config: dict[str, Any]) -> None:
    report_fd: int = config["report_fd"]
    try:
        if config["mode"] == "python":
            os.set_inheritable(report_fd, True)  # The bootstrap reports that the code started.
            boot = {
                "workdir": config["workdir"],
                "report_fd": report_fd,
                "network": config["network"],
                "allow_subprocess": config["allow_subprocess"],
            }
            argv = [config["python"], "-s", "-P", config["script"], "boot", json.dumps(boot)]
            os.execv(config["python"], argv)
        else:
            os.set_inheritable(report_fd, False)  # Closed by a successful exec.
            os.execvp(config["argv"][0], config["argv"])
    except OSError as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        os.write(report_fd, f"X{type(exc).__name__}: {exc.strerror}\n".encode())
        what = "command not found" if code == 127 else f"cannot execute ({exc.strerror})"
        os.write(2, f"sandbox: {what}: {config['argv'][0] if config['argv'] else ''}\n".encode())
        os._exit(code)


def _seccomp_no_spawn(libc: Any) -> bool:
    """Install a seccomp filter that fails fork/vfork/exec and non-thread clone with EPERM.

    Threads keep working: ``clone3`` fails with ENOSYS so glibc falls back to ``clone``, whose
    flags a classic BPF filter can inspect (``CLONE_THREAD`` set: allowed).
    """
    import ctypes

    machine = os.uname().machine
    if machine == "x86_64":
        arch, clone, clone3 = 0xC000003E, 56, 435
        denied = [57, 58, 59, 322]  # fork, vfork, execve, execveat
    elif machine == "aarch64":
        arch, clone, clone3 = 0xC00000B7, 220, 435
        denied = [221, 281]  # execve, execveat
    else:
        return False
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    prog: list[tuple[int, int, int, int]] = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, arch),
        (ret, 0, 0, eperm),  # Foreign ABIs (int 0x80 on x86_64) are refused altogether.
        (ld, 0, 0, 0),  # seccomp_data.nr
        (jge, 0, 1, 0x40000000),
        (ret, 0, 0, eperm),  # x32 ABI.
        (jeq, 0, 1, clone3),
        (ret, 0, 0, enosys),
    ]
    for nr in denied:
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [
        (jeq, 0, 4, clone),
        (ld, 0, 0, 16),  # Low 32 bits of args[0], the clone flags (little endian).
        (jset, 0, 1, 0x00010000),  # CLONE_THREAD
        (ret, 0, 0, allow),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]

    class SockFilter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_uint16),
            ("jt", ctypes.c_uint8),
            ("jf", ctypes.c_uint8),
            ("k", ctypes.c_uint32),
        ]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    filters = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), filters)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    return bool(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0)


def _make_audit_hook(
    *, workdir: str, network: bool, allow_subprocess: bool, native_dirs: tuple[str, ...]
) -> Callable[[str, tuple[Any, ...]], None]:
    """Build the audit hook that refuses what the sandboxed Python code must not do.

    The hook and its helpers look up *no* global or builtin names at call time: every function
    they use is captured here into closure cells. The user's code shares ``os``, ``builtins``
    and this module's globals with us and could monkeypatch them (``os.getcwd = ...``) to make
    an outside path look inside; closure cells of a hook it cannot reach are out of its reach.
    """
    lstat, stat, readlink, getcwd = os.lstat, os.stat, os.readlink, os.getcwd
    fspath, fsdecode, getpid = os.fspath, os.fsdecode, os.getpid
    isinstance_, str_, bytes_, int_, reversed_ = isinstance, str, bytes, int, reversed
    list_, bool_, len_ = list, bool, len
    permission_error, os_error, exception = PermissionError, OSError, Exception
    s_ifmt, s_iflnk, s_ifdir = 0o170000, 0o120000, 0o040000
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    dir_flags = os.O_DIRECTORY | getattr(os, "O_PATH", 0)
    own_pid = getpid()
    prefix = workdir + "/"
    # Writing these reaches only our own pipes (or nothing).
    write_ok = frozenset(
        ("/dev/null", "/dev/stdout", "/dev/stderr", "/dev/fd/1", "/dev/fd/2")
        + ("/proc/self/fd/1", "/proc/self/fd/2")
    )
    process_events = frozenset(
        ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn")
        + ("subprocess.Popen", "os.startfile", "pty.spawn")
    )
    # Re-importing these would hand back what the bootstrap removed; the FFIs bypass any hook.
    blocked_modules = ("ctypes", "_ctypes", "_cffi_backend", "cffi", "posix", "_posixsubprocess")
    introspection_events = frozenset(
        ("gc.get_objects", "gc.get_referrers", "gc.get_referents")
        # A trace function may rewrite a running frame's locals (the hook's closure included).
        + ("sys.settrace", "sys.setprofile")
    )
    # event -> ((path argument index, dir_fd argument index or -1), ...)
    path_events: dict[str, tuple[tuple[int, int], ...]] = {
        "os.remove": ((0, 1),),
        "os.rmdir": ((0, 1),),
        "os.mkdir": ((0, 2),),
        "os.rename": ((0, 2), (1, 3)),
        "os.link": ((0, 2), (1, 3)),
        "os.chmod": ((0, 2),),
        "os.chown": ((0, 3),),
        "os.utime": ((0, 3),),
        "os.truncate": ((0, -1),),
        "os.setxattr": ((0, -1),),
        "os.removexattr": ((0, -1),),
        "shutil.rmtree": ((0, -1),),
    }

    def deny(what: str) -> None:
        raise permission_error(f"sandbox: {what} is not allowed")

    def as_text(path: object) -> str | None:
        if isinstance_(path, int_):
            try:
                return readlink(f"/proc/self/fd/{path}")
            except os_error:
                return None
        if isinstance_(path, str_ | bytes_):
            return fsdecode(path)
        try:
            return fsdecode(fspath(path))
        except exception:
            return None

    def resolve(text: str, base: str) -> str:
        """Absolute path with symlinks of existing components resolved (like realpath)."""
        if not text.startswith("/"):
            text = base + "/" + text
        todo = list_(reversed_(text.split("/")))
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join(done + [part])
            try:
                mode = lstat(candidate).st_mode
            except os_error:
                done.append(part)
                continue
            if mode & s_ifmt == s_iflnk and hops < 40:
                hops += 1
                target = readlink(candidate)
                if target.startswith("/"):
                    done = []
                todo.extend(reversed_(target.split("/")))
                continue
            done.append(part)
        return "/" + "/".join(done)

    def base_dir(dir_fd: object) -> str | None:
        if dir_fd is None or dir_fd == -1 or dir_fd == -100:
            return getcwd()
        if isinstance_(dir_fd, int_):
            try:
                return readlink(f"/proc/self/fd/{dir_fd}")
            except os_error:
                return None
        return None

    def inside(path: object, dir_fd: object = None) -> bool:
        text = as_text(path)
        base = base_dir(dir_fd)
        if text is None or base is None:
            return False
        resolved = resolve(text, base)
        return resolved == workdir or resolved.startswith(prefix)

    def shown(path: object) -> str:
        text = as_text(path)
        return "?" if text is None else text

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if isinstance_(path, int_):
                return  # Wrapping an fd we already have grants nothing new.
            flags = flags if isinstance_(flags, int_) else 0
            wants_write = bool_(flags & write_flags) or (
                isinstance_(mode, str_) and ("w" in mode or "a" in mode or "x" in mode)
            )
            if isinstance_(mode, str_) and "+" in mode:
                wants_write = True
            if wants_write:
                text = as_text(path)
                if text is not None and text in write_ok:
                    return
                if not inside(path):
                    deny(f"writing to {shown(path)!r} (outside the working directory)")
            elif mode is None:
                # os.open() of a directory outside would give a dir_fd for openat() writes
                # that the hook (which sees no dir_fd for "open") could not attribute.
                is_dir = bool_(flags & dir_flags)
                if not is_dir:
                    try:
                        is_dir = stat(path).st_mode & s_ifmt == s_ifdir
                    except exception:
                        is_dir = False
                if is_dir and not inside(path):
                    deny(f"opening directory {shown(path)!r} outside the working directory")
            return
        spec = path_events.get(event)
        if spec is not None:
            for path_index, fd_index in spec:
                dir_fd = args[fd_index] if fd_index >= 0 else None
                if not inside(args[path_index], dir_fd):
                    deny(f"{event} on {shown(args[path_index])!r} (outside the working directory)")
            return
        if event == "os.symlink":
            # A symlink could later be renamed so that its relative target points outside.
            deny("creating symlinks")
        if event == "import":
            name = args[0]
            if isinstance_(name, str_):
                for blocked in blocked_modules:
                    if name == blocked or name.startswith(blocked + "."):
                        deny(f"importing {name}")
            origin = args[1] if len_(args) > 1 else None
            if isinstance_(origin, str_):
                # Native extension being loaded: only from the interpreter's own directories.
                resolved = resolve(origin, getcwd())
                trusted = False
                for directory in native_dirs:
                    if resolved.startswith(directory + "/"):
                        trusted = True
                if not trusted or resolved == workdir or resolved.startswith(prefix):
                    deny(f"loading native code from {origin!r}")
            return
        if event.startswith("ctypes."):
            deny("ctypes")
        if event in introspection_events:
            deny(event)
        if not network and event.startswith("socket."):
            if event == "socket.__new__":
                family = args[1] if len_(args) > 1 else None
                if family != 1:  # AF_UNIX socket pairs (asyncio's self-pipe) stay usable.
                    deny("network access (creating a socket)")
            elif event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
                # Only Unix sockets inside the working directory; abstract addresses ("\0...")
                # would reach the host's services wherever there is no network namespace.
                address = args[1] if len_(args) > 1 else None
                is_path = isinstance_(address, str_ | bytes_) and address[:1] not in ("\0", b"\0")
                if not (is_path and address and inside(address)):
                    deny(f"network access ({event})")
            elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
                deny(f"network access ({event})")
            return
        if not allow_subprocess:
            if event in process_events:
                deny(f"starting processes ({event})")
            if event in ("os.kill", "os.killpg", "resource.prlimit"):
                target = args[0]
                if target != 0 and target != own_pid:
                    deny(f"{event} on other processes")

    return hook


def _bootstrap(config: dict[str, Any]) -> None:
    """Install the Python-level layers, tell the parent the code starts, run ``main.py``."""
    import builtins
    import traceback
    import types

    workdir: str = config["workdir"]
    report_fd: int = config["report_fd"]
    main_path = os.path.join(workdir, _MAIN_FILE)
    with open(main_path, encoding="utf-8") as f:
        source = f.read()
    # ctypes is imported here, before the hook, and stays imported: numpy and others import it,
    # and its import-time dlopen would be refused later. Using it is refused (ctypes.* events).
    libc = _libc()
    seccomp = False
    if not config["allow_subprocess"]:
        seccomp = libc is not None and _seccomp_no_spawn(libc)
        # subprocess and multiprocessing spawn through _posixsubprocess.fork_exec, which raises
        # no audit event; replace it (keeping no reference to the original anywhere, and the
        # hook refuses to import the module afresh).
        import _posixsubprocess

        def refuse_spawn(*_args: object, **_kwargs: object) -> None:
            raise PermissionError("sandbox: starting processes (fork_exec) is not allowed")

        _posixsubprocess.fork_exec = refuse_spawn  # type: ignore[attr-defined]
        subprocess._fork_exec = refuse_spawn  # type: ignore[attr-defined]
    del libc

    def refuse_node(*_args: object, **_kwargs: object) -> None:
        raise PermissionError("sandbox: creating FIFOs and device nodes is not allowed")

    for name in ("mkfifo", "mknod"):  # These raise no audit event either.
        setattr(os, name, refuse_node)
        setattr(sys.modules["posix"], name, refuse_node)
    native_dirs = tuple(
        os.path.realpath(p)
        for p in sys.path
        if p and os.path.isdir(p) and not os.path.realpath(p).startswith(workdir)
    )
    hook = _make_audit_hook(
        workdir=workdir,
        network=config["network"],
        allow_subprocess=config["allow_subprocess"],
        native_dirs=native_dirs,
    )
    sys.addaudithook(hook)
    del hook
    # From here on, any failure is the code's: tell the parent the bootstrap is done.
    os.write(report_fd, b"R" + json.dumps({"seccomp": seccomp}).encode() + b"\n")
    os.close(report_fd)

    # Line buffering: what was printed before a timeout kill still reaches the parent.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.path.insert(0, workdir)
    sys.argv = [_MAIN_FILE]
    module = types.ModuleType("__main__")
    module.__file__ = main_path
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = module
    try:
        code = compile(source, main_path, "exec")
        del source
        exec(code, module.__dict__)
    except SystemExit:
        raise
    except MemoryError:
        _exit_out_of_memory()
    except BaseException as exc:  # Report any uncaught exception the way Python would.
        try:
            exc_info = traceback.TracebackException.from_exception(exc)
            _strip_own_frames(exc_info, _THIS_FILE, set())
            sys.stderr.write("".join(exc_info.format()))
            sys.stderr.flush()
        except MemoryError:
            _exit_out_of_memory()
        sys.exit(1)


def _strip_own_frames(exc_info: Any, own_file: str, seen: set[int]) -> None:
    """Drop bootstrap/hook frames (this file) from a traceback, chained exceptions included."""
    import traceback

    if id(exc_info) in seen:
        return
    seen.add(id(exc_info))
    exc_info.stack = traceback.StackSummary.from_list(
        [frame for frame in exc_info.stack if frame.filename != own_file]
    )
    for chained in (exc_info.__cause__, exc_info.__context__):
        if chained is not None:
            _strip_own_frames(chained, own_file, seen)


def _exit_out_of_memory() -> None:
    for stream in (sys.stdout, sys.stderr):
        # Nothing more can be done if even flushing needs memory that is not there.
        with contextlib.suppress(BaseException):
            stream.flush()
    os.write(2, b"MemoryError: the memory limit was exceeded\n")
    os._exit(_MEMORY_EXIT_CODE)


def _child_main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("launch", "boot"):
        sys.stderr.write("usage: sandbox.py launch|boot <json>\n")
        sys.exit(2)
    config = json.loads(argv[1])
    if argv[0] == "launch":
        _launcher(config)
    else:
        _bootstrap(config)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
