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
* **Unix sockets** (launcher, seccomp, every run): neither the read-only mount nor (with
  ``network=True``) the network namespace stops a connection to the host's Unix sockets, so
  ``socket()`` is allowed only for ``AF_INET``/``AF_INET6``/``AF_NETLINK``, ``socketpair()``
  only for connected-from-birth ``AF_UNIX`` stream/seqpacket pairs, and io_uring not at all
  (``EPERM``). Pipes and socket pairs work; Unix-socket servers (multiprocessing managers, the
  forkserver start method) do not. See :mod:`~mtrl_gym.sandbox.launcher`.
* **Python only** (bootstrap): a seccomp filter that fails fork/exec (threads still work) unless
  ``allow_subprocess``, and a PEP 578 audit hook that raises ``PermissionError("sandbox: ... is
  not allowed")`` for sockets, Unix sockets outside the working directory, process creation,
  writes and SQLite databases outside the working directory, ctypes, native code loaded from
  outside the interpreter's own directories, gc/trace introspection and signals to other
  processes. Paths are checked as the exact string the interpreter uses (``str`` subclasses
  cannot disguise them). Audit hooks are not a security boundary on their own (CPython says
  so); the hook gives clear errors and covers hosts without the kernel layers.

A run's status reports the program's own fate: the launcher and the pid namespace's init die the
way the program died (``os.kill(os.getpid(), 9)`` is ``"killed"`` with return code -9; a SIGKILL
at the hard CPU limit, after an ignored or caught SIGXCPU, is ``"cpu_limit"``), and the child
side never prints its own tracebacks (host paths) to the program's stderr.

``isolation_report()`` says which layers the most recent run actually obtained.

Thread safety: runs share no mutable state except a lock-protected report, never ``os.chdir``,
and use no ``preexec_fn`` (unsafe after ``fork`` in a threaded parent). Instead the child is a
fresh, single-threaded interpreter running ``launcher.py`` by path (``python -s -P launcher.py
launch``), which may freely use ctypes to apply the layers before it ``exec``s the command or the
Python bootstrap (``... bootstrap.py boot``). The child-side files import only the standard
library (never jax, and not the ``mtrl_gym`` package) so that both stages start fast.

Layout. Parent side, imported as ``mtrl_gym.sandbox``: :mod:`~mtrl_gym.sandbox.datatypes`
(limits, result, status, infra error), :mod:`~mtrl_gym.sandbox.api` (the ``run_*`` entry points
and ``isolation_report``), :mod:`~mtrl_gym.sandbox.supervisor` (working directory, spawn,
classification), :mod:`~mtrl_gym.sandbox.pump` (pipes, wall clock, kill, reap) and
:mod:`~mtrl_gym.sandbox.cgroup` (per-run pids cgroups). Child side, run by path and importing
only the standard library: ``launcher.py`` (stage 1: OS layers, seccomp filter, exec),
``bootstrap.py`` (stage 2: Python layers, then ``main.py``) and ``audit_hook.py`` (the hook); the
bootstrap loads ``launcher.py`` and ``audit_hook.py`` by path.

Non-goals: confidentiality (sandboxed code can *read* whatever the sandbox user can read, so keep
reference answers and secrets unreadable for it), disk quotas beyond ``max_file_mb`` per file,
non-Linux hosts (they get rlimits and the audit hook only), and containing third-party native
extensions installed in the interpreter's environment.
"""

from __future__ import annotations

from mtrl_gym.sandbox.api import isolation_report, run_command, run_python, run_sql
from mtrl_gym.sandbox.audit_hook import _make_audit_hook as _make_audit_hook
from mtrl_gym.sandbox.datatypes import (
    SandboxInfraError,
    SandboxLimits,
    SandboxResult,
    SandboxStatus,
)
from mtrl_gym.sandbox.supervisor import _LAUNCHER_FILE as _LAUNCHER_FILE

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
