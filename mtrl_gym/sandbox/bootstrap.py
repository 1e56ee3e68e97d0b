"""Child side, stage 2: the Python bootstrap installs the Python-level layers, then runs the code.

The launcher execs ``python -s -P bootstrap.py boot <json>`` (this file, by path) after the OS
layers are in place. The bootstrap installs the seccomp filter that fails fork/exec (unless
``allow_subprocess``), replaces the spawn primitives that raise no audit event, installs the
audit hook (``audit_hook.py``), tells the parent that the code starts (an ``R`` line on the
report pipe), then runs ``main.py`` from the working directory as ``__main__``. Uncaught
exceptions are printed the way Python would, without the frames of the child-side files (and
if the code broke the traceback machinery, by the exception's type name alone: never a traceback
of the bootstrap, which would show host paths); a ``MemoryError`` exits with
``_MEMORY_EXIT_CODE``.

Its siblings ``launcher.py`` (libc handle, seccomp filter) and ``audit_hook.py`` are loaded by
path with ``importlib.util.spec_from_file_location``: ``-P`` keeps this directory off
``sys.path``, and the child must import only the standard library, never ``mtrl_gym``. The
parent imports this module only for the constants it shares with the child (``_MAIN_FILE``,
``_MEMORY_EXIT_CODE``); nothing is loaded or run at import time.

Non-goals: the OS layers (``launcher.py``) and deciding the run's status (the parent's
``supervisor.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from typing import Any

# The bootstrap exits with this code when the user's code dies of MemoryError; a hostile program
# can fake it with sys.exit(251), but that only misreports its own failure.
_MEMORY_EXIT_CODE = 251
_MAIN_FILE = "main.py"
_HERE = os.path.dirname(os.path.abspath(__file__))
# Frames of these files (bootstrap, hook, launcher) are dropped from the code's tracebacks.
_CHILD_FILES = frozenset(
    os.path.join(_HERE, name) for name in ("bootstrap.py", "audit_hook.py", "launcher.py")
)


def _load_sibling(name: str) -> Any:
    """Load ``<name>.py`` from this directory by path (the package itself is never imported)."""
    import importlib.util

    path = os.path.join(_HERE, f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_sandbox_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bootstrap(config: dict[str, Any]) -> None:
    """Install the Python-level layers, tell the parent the code starts, run ``main.py``."""
    import builtins
    import traceback
    import types

    launcher = _load_sibling("launcher")
    audit_hook = _load_sibling("audit_hook")
    workdir: str = config["workdir"]
    report_fd: int = config["report_fd"]
    main_path = os.path.join(workdir, _MAIN_FILE)
    with open(main_path, encoding="utf-8") as f:
        source = f.read()
    # ctypes is imported here, before the hook, and stays imported: numpy and others import it,
    # and its import-time dlopen would be refused later. Using it is refused (ctypes.* events).
    libc = launcher._libc()
    seccomp = False
    if not config["allow_subprocess"]:
        seccomp = libc is not None and launcher._seccomp_no_spawn(libc)
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
    hook = audit_hook._make_audit_hook(
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
            _strip_own_frames(exc_info, _CHILD_FILES, set())
            sys.stderr.write("".join(exc_info.format()))
            sys.stderr.flush()
        except MemoryError:
            _exit_out_of_memory()
        except BaseException:
            # The code broke what formats tracebacks (monkeypatched traceback, a stderr that
            # raises): a traceback of that failure would show this file's frames, i.e. host
            # paths. Name the original exception only, straight to fd 2, and leave at once.
            _exit_unformatted(exc)
        sys.exit(1)


def _strip_own_frames(exc_info: Any, own_files: frozenset[str], seen: set[int]) -> None:
    """Drop the child-side files' frames (bootstrap, hook) from a traceback, chained ones too."""
    import traceback

    if id(exc_info) in seen:
        return
    seen.add(id(exc_info))
    exc_info.stack = traceback.StackSummary.from_list(
        [frame for frame in exc_info.stack if frame.filename not in own_files]
    )
    for chained in (exc_info.__cause__, exc_info.__context__):
        if chained is not None:
            _strip_own_frames(chained, own_files, seen)


def _exit_unformatted(exc: BaseException) -> None:
    """Report ``exc`` by its type's name alone and exit 1, bypassing ``sys.stderr``."""
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
    name = "Exception"
    with contextlib.suppress(BaseException):
        name = str.__str__(type(exc).__qualname__)
    message = f"{name} (the traceback could not be formatted)\n"
    with contextlib.suppress(BaseException):
        os.write(2, message.encode("utf-8", "backslashreplace"))
    os._exit(1)


def _exit_out_of_memory() -> None:
    for stream in (sys.stdout, sys.stderr):
        # Nothing more can be done if even flushing needs memory that is not there.
        with contextlib.suppress(BaseException):
            stream.flush()
    os.write(2, b"MemoryError: the memory limit was exceeded\n")
    os._exit(_MEMORY_EXIT_CODE)


def _child_main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "boot":
        sys.stderr.write("usage: bootstrap.py boot <json>\n")
        sys.exit(2)
    config = json.loads(argv[1])
    _bootstrap(config)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
