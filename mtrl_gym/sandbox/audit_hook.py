"""Child side: the PEP 578 audit hook that refuses what sandboxed Python code must not do.

``_make_audit_hook`` builds a closure that raises ``PermissionError("sandbox: ... is not
allowed")`` for sockets (unless ``network``), connections to Unix sockets outside the working
directory (always), process creation and signals to other processes (unless
``allow_subprocess``), writes and directory opens outside the working directory, SQLite
databases outside it, symlinks, ctypes and the other FFIs (SQLite extensions included), native
code loaded from outside the interpreter's own directories, and gc/trace introspection. The hook
and its helpers look up no global or builtin name at call time (a test checks the bytecode), so
monkeypatching ``os`` or ``builtins`` cannot fool it.

Path arguments are checked as the exact string the interpreter acts on. A ``str`` or ``bytes``
subclass can override ``__eq__``, ``__hash__``, ``startswith`` or ``split``, so it is first
copied to a plain ``str``/``bytes`` (``str.__str__``, ``bytes.__bytes__``; their contents are
immutable) and bytes are decoded without ``os.fsdecode`` (which looks up ``os.fspath`` at call
time). Some events (``sqlite3.connect``) carry the caller's original object, which the
interpreter has already converted once: a path-like object whose ``__fspath__`` answers
differently the second time would show the hook a different path, so only path-like types whose
conversion is the standard library's own (``os.DirEntry``, ``pathlib`` paths with pathlib's
``__fspath__`` and ``__str__``) are converted; other objects count as outside.

``sqlite3.connect`` opens files in C, below the hook, and may create or write them (journal, WAL),
whatever its mode, so the database must be in the working directory (``""`` and ``":memory:"``
are private in-memory databases). A ``file:`` URI is checked both as a URI and as a plain path
(the event does not say whether ``uri=True``); percent-encoded URIs are refused.

The bootstrap loads this file by path (``-P`` keeps the package off ``sys.path``); it imports
only the standard library and never ``mtrl_gym``.

Non-goals: being a security boundary on its own (CPython says audit hooks are not one; the
kernel layers of ``launcher.py`` are), and restricting reads (see the package's non-goals).
Known gaps that only the kernel layers close: ``ATTACH``/``VACUUM INTO`` in SQL run by the code
itself (SQLite opens those files without an audit event; ``run_sql`` denies them with an
authorizer), and another thread mutating a ``pathlib`` object's cached string between the
interpreter's conversion and the hook's.
"""

from __future__ import annotations

import os
import pathlib
import sys
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

    Args:
        workdir: The run's working directory (a real path): writes are allowed below it only.
        network: Whether sockets other than Unix sockets are allowed.
        allow_subprocess: Whether process creation and signals to other processes are allowed.
        native_dirs: Real paths of the directories native extension modules may be loaded from.

    Returns:
        The hook, for ``sys.addaudithook``.
    """
    lstat, stat, readlink, getcwd, fspath = os.lstat, os.stat, os.readlink, os.getcwd, os.fspath
    getpid = os.getpid
    type_, isinstance_, str_, bytes_, int_ = type, isinstance, str, bytes, int
    reversed_, list_, bool_, len_, tuple_ = reversed, list, bool, len, tuple
    # Exact-type copies: builtin types cannot be monkeypatched, and these slot functions read
    # the object's contents directly (a subclass's overrides are never called).
    exact_str, exact_bytes, exact_int = str.__str__, bytes.__bytes__, int.__index__
    decode = bytes.decode
    fs_encoding, fs_errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    # Path-like types whose __fspath__ gives the same answer every time (see the module doc).
    dir_entry, posix_path, pure_posix_path = os.DirEntry, pathlib.PosixPath, pathlib.PurePosixPath
    pathlib_fspath, pathlib_str = pathlib.PurePath.__fspath__, pathlib.PurePath.__str__
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
    address_events = frozenset(("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"))
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

    def plain(value: Any) -> Any:
        """An exact ``str``, ``bytes`` or ``int`` copy of a path, address or fd, else ``None``."""
        try:
            if isinstance_(value, str_):
                return exact_str(value)
            if isinstance_(value, bytes_):
                return exact_bytes(value)
            if isinstance_(value, int_):
                return exact_int(value)
            kind = type_(value)
            if kind is dir_entry:
                return plain(fspath(value))
            if (kind is posix_path or kind is pure_posix_path) and (
                kind.__fspath__ is pathlib_fspath and kind.__str__ is pathlib_str
            ):
                return plain(fspath(value))
        except exception:  # e.g. an object whose __class__ claims to be str
            pass
        return None

    def as_text(path: Any) -> str | None:
        """The path as an exact ``str`` (an fd as the path it refers to), or ``None``."""
        value = plain(path)
        kind = type_(value)
        if kind is str_:
            return value
        if kind is bytes_:
            try:
                return decode(value, fs_encoding, fs_errors)
            except exception:
                return None
        if kind is int_:
            try:
                return readlink(f"/proc/self/fd/{value}")
            except os_error:
                return None
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
        dir_fd = plain(dir_fd)
        if dir_fd is None or dir_fd == -1 or dir_fd == -100:
            return getcwd()
        if type_(dir_fd) is int_:
            try:
                return readlink(f"/proc/self/fd/{dir_fd}")
            except os_error:
                return None
        return None

    def inside(text: str | None, dir_fd: object = None) -> bool:
        """Whether ``text`` (from ``as_text``) names the working directory or a path below it."""
        base = base_dir(dir_fd)
        if text is None or base is None:
            return False
        resolved = resolve(text, base)
        return resolved == workdir or resolved.startswith(prefix)

    def shown(text: str | None) -> str:
        return "<path object of an untrusted type>" if text is None else text

    def sqlite_inside(text: str | None) -> bool:
        """Whether an ``sqlite3.connect`` database stays in memory or in the working directory."""
        if text is None:
            return False
        if text == "" or text == ":memory:":
            return True
        if not inside(text):  # As a plain (relative) file name.
            return False
        if not text.startswith("file:"):
            return True
        # As an SQLite URI: file:[//authority]path[?query][#fragment].
        path = text[5:].partition("#")[0].partition("?")[0]
        if path.startswith("//"):
            authority, slash, rest = path[2:].partition("/")
            if authority != "" and authority != "localhost":
                return False
            path = slash + rest
        if "%" in path:
            return False
        return path == "" or path == ":memory:" or inside(path)

    def check_socket(event: str, args: tuple[Any, ...]) -> None:
        if event in address_events:
            address = args[1] if len_(args) > 1 else None
            if address is None:
                return  # sendmsg() without an address goes to the socket's own peer.
            if type_(address) is tuple_:  # An IP (or netlink, ...) address.
                if not network:
                    deny(f"network access ({event})")
                return
            # Anything else is a Unix socket address: only a str or bytes path inside the
            # working directory, even with network access. Abstract addresses ("\0...") are
            # shared by the whole network namespace, so they are never inside.
            address = plain(address)
            kind = type_(address)
            text = as_text(address) if kind is str_ or kind is bytes_ else None
            if text is None or text[:1] == "\0" or not inside(text):
                deny(f"{event} to a Unix socket outside the working directory")
            return
        if network:
            return
        if event == "socket.__new__":
            family = args[1] if len_(args) > 1 else None
            if family != 1:  # AF_UNIX socket pairs (asyncio's self-pipe) stay usable.
                deny("network access (creating a socket)")
        elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
            deny(f"network access ({event})")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if isinstance_(path, int_):
                return  # Wrapping an fd we already have grants nothing new.
            flags = plain(flags) if isinstance_(flags, int_) else 0
            wants_write = bool_(flags & write_flags) or (
                isinstance_(mode, str_) and ("w" in mode or "a" in mode or "x" in mode)
            )
            if isinstance_(mode, str_) and "+" in mode:
                wants_write = True
            text = as_text(path)
            if wants_write:
                if text is not None and text in write_ok:
                    return
                if not inside(text):
                    deny(f"writing to {shown(text)!r} (outside the working directory)")
            elif mode is None:
                # os.open() of a directory outside would give a dir_fd for openat() writes
                # that the hook (which sees no dir_fd for "open") could not attribute.
                is_dir = bool_(flags & dir_flags)
                if not is_dir and text is not None:
                    try:
                        is_dir = stat(text).st_mode & s_ifmt == s_ifdir
                    except exception:
                        is_dir = False
                if (is_dir or text is None) and not inside(text):
                    deny(f"opening directory {shown(text)!r} outside the working directory")
            return
        spec = path_events.get(event)
        if spec is not None:
            for path_index, fd_index in spec:
                dir_fd = args[fd_index] if fd_index >= 0 else None
                text = as_text(args[path_index])
                if not inside(text, dir_fd):
                    deny(f"{event} on {shown(text)!r} (outside the working directory)")
            return
        if event == "sqlite3.connect":
            text = as_text(args[0]) if len_(args) > 0 else None
            if not sqlite_inside(text):
                deny(f"opening SQLite database {shown(text)!r} (outside the working directory)")
            return
        if event == "sqlite3.load_extension" or (
            event == "sqlite3.enable_load_extension" and len_(args) > 1 and args[1] is True
        ):
            deny("loading SQLite extensions")
        if event == "os.symlink":
            # A symlink could later be renamed so that its relative target points outside.
            deny("creating symlinks")
        if event == "import":
            name = plain(args[0])
            if type_(name) is str_:
                for blocked in blocked_modules:
                    if name == blocked or name.startswith(blocked + "."):
                        deny(f"importing {name}")
            origin = plain(args[1]) if len_(args) > 1 else None
            if type_(origin) is str_:
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
        if event.startswith("socket."):
            check_socket(event, args)
            return
        if not allow_subprocess:
            if event in process_events:
                deny(f"starting processes ({event})")
            if event in ("os.kill", "os.killpg", "resource.prlimit"):
                target = plain(args[0])
                if target != 0 and target != own_pid:
                    deny(f"{event} on other processes")

    return hook
