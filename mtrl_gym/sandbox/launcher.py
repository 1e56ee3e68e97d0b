"""Child side, stage 1: the launcher applies the OS layers, then execs the command or bootstrap.

The parent runs this file *by path* in a fresh, single-threaded interpreter
(``python -s -P launcher.py launch <json>``, scratch environment, working directory as cwd), so
it may do what a ``preexec_fn`` must not (take locks, allocate, call into ctypes). In order:
join the run's pids cgroup; unshare the mount, pid, IPC and (unless ``network``) network
namespaces, directly as root or through an unprivileged user namespace; make every mount
read-only except the working directory; set the rlimits (hard limits too, so that they stick);
drop every capability and set ``no_new_privs``; install the socket seccomp filter
(``_seccomp_no_unix_sockets``); report the layers obtained (an ``L`` line on the report pipe);
fork the pid namespace's init; exec the target (the command, or ``bootstrap.py boot <json>`` for
Python). The launcher then waits and dies the way the target died (same exit code or signal), so
the parent sees the target's own fate.
Layers that fail are skipped and reported; an unexpected failure is reported as an ``E`` line
and exit code ``_LAUNCHER_FAILED_EXIT_CODE``, which the parent turns into SandboxInfraError. The
launcher never lets a Python traceback reach the stderr the code's caller sees (it would show
host paths).

Unix sockets. The read-only mount does not stop ``connect()`` to a Unix socket on the host's
filesystem (the kernel checks no write access to a socket inode on a read-only mount), and
abstract Unix sockets (names that start with a NUL byte) are shared by everything in one network
namespace, which ``network=True`` runs keep. A seccomp filter cannot read the address given to
``connect``, ``sendto`` or ``sendmsg``, but it can read ``socket()``'s family and
``socketpair()``'s type, so ``_seccomp_no_unix_sockets``, applied to every run (commands
included), allows ``socket()`` only for the families a network namespace scopes (``AF_INET``,
``AF_INET6``, ``AF_NETLINK``), and ``socketpair()`` only as ``AF_UNIX`` ``SOCK_STREAM`` or
``SOCK_SEQPACKET``: such a pair is connected from birth and the kernel refuses to connect it
again, whereas a datagram pair could be pointed at any address. No process of the run can
therefore hold a Unix socket that is not connected to another process of the run. io_uring is
refused too: its ``SOCKET``/``CONNECT`` operations would bypass the filter. What this costs
legitimate code: Unix-socket servers (``multiprocessing`` managers, the ``forkserver`` start
method, ``multiprocessing.connection.Listener`` with ``AF_UNIX``) fail with ``EPERM``; pipes,
socket pairs (asyncio, ``multiprocessing.Pipe``) and TCP/UDP (with ``network=True``) work.
32-bit compatibility syscalls are refused altogether (``socketcall`` multiplexes every socket
call behind a pointer the filter cannot read). Landlock (ABI 6) could scope abstract sockets but
not connections to socket files, and seccomp user notification would need a supervisor racing
the code for the address, hence this filter.

It also holds the seccomp filters (``_seccomp_no_spawn``, used by the bootstrap, and
``_seccomp_no_unix_sockets``) and the libc handle (``_libc``), which the bootstrap loads from this
file by path.

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
from typing import Any, NoReturn

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
_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK = 1, 2, 10, 16
_SOCK_STREAM, _SOCK_SEQPACKET, _SOCK_TYPE_MASK = 1, 5, 0xF
# Syscall numbers the seccomp filters name, per machine (``os.uname().machine``).
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "arch": 0xC000003E,  # AUDIT_ARCH_X86_64
        "clone": 56,
        "clone3": 435,
        "fork": 57,
        "vfork": 58,
        "execve": 59,
        "execveat": 322,
        "socket": 41,
        "socketpair": 53,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
    },
    "aarch64": {
        "arch": 0xC00000B7,  # AUDIT_ARCH_AARCH64 (no fork/vfork: glibc uses clone)
        "clone": 220,
        "clone3": 435,
        "execve": 221,
        "execveat": 281,
        "socket": 198,
        "socketpair": 199,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
    },
}
# Classic BPF opcodes and seccomp return values used by the filters.
_BPF_LD_ABS, _BPF_JEQ, _BPF_JGE, _BPF_JSET, _BPF_AND, _BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_EPERM = 0x00050000 | 1
_SECCOMP_RET_ENOSYS = 0x00050000 | 38
# Offsets in struct seccomp_data: nr, arch, then the low 32 bits of args[0] and args[1].
_SECCOMP_NR, _SECCOMP_ARCH, _SECCOMP_ARG0, _SECCOMP_ARG1 = 0, 4, 16, 24


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
        "seccomp_sockets": False,
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
            # 5. Unix sockets (see the module docstring); inherited by everything below.
            layers["seccomp_sockets"] = _seccomp_no_unix_sockets(libc)
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
    """Fork the namespace's init, which forks the target; die the way the target died.

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
                _exec_target(config)  # Never returns.
            os.close(report_fd)
            while True:
                pid, status = os.waitpid(-1, 0)
                if pid == target:
                    os.write(status_w, str(status).encode())
                    break
        finally:
            os._exit(0)
    try:
        os.close(status_w)
        _, init_status = os.waitpid(init_pid, 0)
        data = os.read(status_r, 64)
        status = int(data) if data else init_status
    except BaseException as exc:  # The sandbox's fault; never a traceback on the code's stderr.
        os.write(report_fd, f"Ecannot collect the program's status: {exc!r}\n".encode())
        os._exit(_LAUNCHER_FAILED_EXIT_CODE)
    os.close(report_fd)
    _exit_like(status)


def _exit_like(status: int) -> NoReturn:
    """End this process the way the target ended (``status`` from ``waitpid``).

    A death signal is re-raised on this process, so the parent sees it (SIGXCPU reads as the CPU
    limit); SIGKILL's action cannot be changed and needs no reset. ``128 + signal`` is only the
    fallback should re-raising fail, which a terminating signal at its default action cannot.
    """
    if not os.WIFSIGNALED(status):
        os._exit(os.waitstatus_to_exitcode(status))
    sig = os.WTERMSIG(status)
    try:
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    except (OSError, ValueError):
        pass
    os._exit(128 + sig)


def _exec_target(config: dict[str, Any]) -> NoReturn:
    """Exec the command or the Python bootstrap; never returns, and never raises."""
    report_fd: int = config["report_fd"]
    try:
        # This interpreter ignores SIGPIPE and SIGXFSZ, and exec keeps ignored signals ignored;
        # give the command the defaults a shell would (``yes | head`` ends quietly).
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
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
        name = config["argv"][0] if config["argv"] else ""
        os.write(2, f"sandbox: {what}: {name}\n".encode("utf-8", "backslashreplace"))
        os._exit(code)
    except BaseException as exc:  # E.g. an argument exec cannot encode: the sandbox's fault.
        os.write(report_fd, f"Ecannot start the program: {exc!r}\n".encode())
        os._exit(_LAUNCHER_FAILED_EXIT_CODE)


def _seccomp_no_spawn(libc: Any) -> bool:
    """Install a seccomp filter that fails fork/vfork/exec and non-thread clone with EPERM.

    Threads keep working: ``clone3`` fails with ENOSYS so glibc falls back to ``clone``, whose
    flags a classic BPF filter can inspect (``CLONE_THREAD`` set: allowed).
    """
    numbers = _SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return False
    ld, jeq, jset, ret = _BPF_LD_ABS, _BPF_JEQ, _BPF_JSET, _BPF_RET
    prog = _bpf_prologue(numbers["arch"])
    prog += [(jeq, 0, 1, numbers["clone3"]), (ret, 0, 0, _SECCOMP_RET_ENOSYS)]
    for name in ("fork", "vfork", "execve", "execveat"):
        if name in numbers:
            prog += [(jeq, 0, 1, numbers[name]), (ret, 0, 0, _SECCOMP_RET_EPERM)]
    prog += [
        (jeq, 0, 4, numbers["clone"]),
        (ld, 0, 0, _SECCOMP_ARG0),  # The clone flags.
        (jset, 0, 1, 0x00010000),  # CLONE_THREAD
        (ret, 0, 0, _SECCOMP_RET_ALLOW),
        (ret, 0, 0, _SECCOMP_RET_EPERM),
        (ret, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    return _install_seccomp(libc, prog)


def _seccomp_no_unix_sockets(libc: Any) -> bool:
    """Install a seccomp filter that leaves no way to reach a Unix socket outside the run.

    ``socket()`` is allowed for ``AF_INET``, ``AF_INET6`` and ``AF_NETLINK`` only (a network
    namespace scopes those), ``socketpair()`` only for ``AF_UNIX`` ``SOCK_STREAM`` and
    ``SOCK_SEQPACKET`` (connected from birth, cannot be connected again), and io_uring not at
    all; each refusal is EPERM. Why this, and what it costs: see the module docstring.
    """
    numbers = _SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return False
    ld, jeq, ret = _BPF_LD_ABS, _BPF_JEQ, _BPF_RET
    allow, eperm = _SECCOMP_RET_ALLOW, _SECCOMP_RET_EPERM
    prog = _bpf_prologue(numbers["arch"])
    for name in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        prog += [(jeq, 0, 1, numbers[name]), (ret, 0, 0, eperm)]
    families = [(jeq, 0, 1, family) for family in (_AF_INET, _AF_INET6, _AF_NETLINK)]
    allowed_families: list[tuple[int, int, int, int]] = [(ld, 0, 0, _SECCOMP_ARG0)]
    for test in families:
        allowed_families += [test, (ret, 0, 0, allow)]
    allowed_families.append((ret, 0, 0, eperm))
    # Not socket(): skip the block (the accumulator still holds the syscall number).
    prog += [(jeq, 0, len(allowed_families), numbers["socket"]), *allowed_families]
    pair_types = [
        (ld, 0, 0, _SECCOMP_ARG0),
        (jeq, 1, 0, _AF_UNIX),
        (ret, 0, 0, eperm),
        (ld, 0, 0, _SECCOMP_ARG1),
        (_BPF_AND, 0, 0, _SOCK_TYPE_MASK),  # Drop SOCK_CLOEXEC / SOCK_NONBLOCK.
        (jeq, 0, 1, _SOCK_STREAM),
        (ret, 0, 0, allow),
        (jeq, 0, 1, _SOCK_SEQPACKET),
        (ret, 0, 0, allow),
        (ret, 0, 0, eperm),
    ]
    prog += [(jeq, 0, len(pair_types), numbers["socketpair"]), *pair_types]
    prog.append((ret, 0, 0, allow))
    return _install_seccomp(libc, prog)


def _bpf_prologue(arch: int) -> list[tuple[int, int, int, int]]:
    """Refuse foreign ABIs and x32, then load the syscall number into the accumulator."""
    ld, jeq, jge, ret = _BPF_LD_ABS, _BPF_JEQ, _BPF_JGE, _BPF_RET
    return [
        (ld, 0, 0, _SECCOMP_ARCH),
        (jeq, 1, 0, arch),
        (ret, 0, 0, _SECCOMP_RET_EPERM),  # Foreign ABIs (int 0x80 on x86_64) altogether.
        (ld, 0, 0, _SECCOMP_NR),
        (jge, 0, 1, 0x40000000),
        (ret, 0, 0, _SECCOMP_RET_EPERM),  # x32 ABI.
    ]


def _install_seccomp(libc: Any, prog: list[tuple[int, int, int, int]]) -> bool:
    """Install a classic BPF seccomp filter on this thread (inherited across fork and exec)."""
    import ctypes

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
