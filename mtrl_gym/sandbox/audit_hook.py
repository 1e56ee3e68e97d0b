"""Child side: the PEP 578 audit hook that refuses what sandboxed Python code must not do.

``_make_audit_hook`` builds a closure that raises ``PermissionError("sandbox: ... is not
allowed")`` for sockets (unless ``network``), process creation and signals to other processes
(unless ``allow_subprocess``), writes and directory opens outside the working directory,
symlinks, ctypes and the other FFIs, native code loaded from outside the interpreter's own
directories, and gc/trace introspection. The hook and its helpers look up no global or builtin
name at call time (a test checks the bytecode), so monkeypatching ``os`` or ``builtins`` cannot
fool it.

The bootstrap loads this file by path (``-P`` keeps the package off ``sys.path``); it imports
only the standard library and never ``mtrl_gym``.

Non-goals: being a security boundary on its own (CPython says audit hooks are not one; the
kernel layers of ``launcher.py`` are), and restricting reads (see the package's non-goals).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


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
