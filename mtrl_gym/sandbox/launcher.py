"""Child side, stage 1: the launcher applies the OS layers, then execs the command or bootstrap.

The parent runs this file *by path* in a fresh, single-threaded interpreter
(``python -s -P launcher.py launch <json>``, scratch environment, working directory as cwd), so
it may do what a ``preexec_fn`` must not (take locks, allocate, call into ctypes). In order:
join the run's pids cgroup; unshare the mount, pid, IPC and (unless ``network``) network
namespaces, directly as root or through an unprivileged user namespace; make every mount
read-only except the working directory; set the rlimits (hard limits too, so that they stick);
drop every capability and set ``no_new_privs``; report the layers obtained (an ``L`` line on the
report pipe); fork the pid namespace's init; exec the target (the command, or
``bootstrap.py boot <json>`` for Python).
Layers that fail are skipped and reported; an unexpected failure is reported as an ``E`` line
and exit code ``_LAUNCHER_FAILED_EXIT_CODE``, which the parent turns into SandboxInfraError.

It also holds the seccomp filter (``_seccomp_no_spawn``) and the libc handle (``_libc``), which
the bootstrap loads from this file by path.

Constraints: standard library only, never ``mtrl_gym`` (nor jax), so that the child starts fast,
and no sibling modules: this file is self-contained.

Non-goals: Python-level restrictions (audit hook, see ``bootstrap.py`` and ``audit_hook.py``),
the pids cgroup's creation (the parent's ``cgroup.py``), and non-Linux kernels (there only the
rlimits apply).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

# The launcher exits with this code (after writing an "E" line to the report pipe) when it could
# not set up the sandbox; the parent turns it into SandboxInfraError.
_LAUNCHER_FAILED_EXIT_CODE = 120

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


def _child_main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "launch":
        sys.stderr.write("usage: launcher.py launch <json>\n")
        sys.exit(2)
    config = json.loads(argv[1])
    _launcher(config)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
