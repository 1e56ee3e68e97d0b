"""Per-run pids cgroups: cap the number of tasks, and kill whatever left the process group.

Linux never enforces ``RLIMIT_NPROC`` for uid 0, so the parent creates one pids cgroup per run
(``pids.max`` = the run's task budget) under a writable base found once per process: a cgroup v1
``pids`` hierarchy or a delegated cgroup v2 subtree with ``pids`` in ``subtree_control``. The
launcher joins it (by writing its pid to ``procs_file``) before anything could fork. Every
operation is best-effort: no usable cgroup means ``None`` and the other layers still apply.

Non-goals: other controllers (memory, cpu: rlimits cover them), creating or delegating cgroup
hierarchies, and joining the cgroup (the child-side launcher does that).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid

_CGROUP_SWEEP_S = 2.0

_STATE_LOCK = threading.Lock()
_CGROUP_BASE: tuple[str, str] | None | bool = False  # False: not probed yet.
_LEAKED_CGROUPS: list[str] = []


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
