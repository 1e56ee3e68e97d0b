"""Public entry points: ``run_python``, ``run_command``, ``run_sql`` and ``isolation_report``.

Each entry point validates its arguments (``ValueError`` for bad ones, before anything is
started), turns them into the files of a fresh working directory, and hands the run to
:func:`~mtrl_gym.sandbox.supervisor._run`. Text (code, queries, argv, stdin, file names and
contents) must be valid Unicode: a lone surrogate such as U+D800 (which ``json.loads`` makes of
a JSON escape) cannot be encoded as UTF-8, and is refused with a ``ValueError`` naming the
argument and the offending index, since the caller, not the sandbox, is to blame. ``run_sql`` is
``run_python`` with a fixed, trusted runner script (``_SQL_RUNNER``) and the untrusted query as a
file.

Non-goals: starting, watching or killing processes (:mod:`~mtrl_gym.sandbox.supervisor`), the
containment layers themselves (:mod:`~mtrl_gym.sandbox.launcher`,
:mod:`~mtrl_gym.sandbox.bootstrap`), and SQL engines other than the standard library's sqlite3.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from mtrl_gym.sandbox.bootstrap import _MAIN_FILE
from mtrl_gym.sandbox.datatypes import SandboxInfraError, SandboxLimits, SandboxResult
from mtrl_gym.sandbox.supervisor import _last_layers, _run


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
        ValueError: Bad arguments (unsafe file names, reserved names, bad types, text that is
            not valid Unicode).
        SandboxInfraError: The sandbox could not run the code.
    """
    if not isinstance(code, str):
        raise ValueError("code must be a str")
    extra = _checked_files(files, reserved=(_MAIN_FILE,))
    extra[_MAIN_FILE] = _utf8(code, "code")
    _check_stdin(stdin)
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
        ValueError: Bad arguments (including text that is not valid Unicode).
        SandboxInfraError: The sandbox could not run the command.
    """
    if isinstance(argv, str | bytes) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty sequence of str")
    if any("\0" in a for a in argv):
        raise ValueError("argv must not contain NUL characters")
    for i, arg in enumerate(argv):
        _utf8(arg, f"argv[{i}]")
    extra = _checked_files(files, reserved=())
    _check_stdin(stdin)
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
        ValueError: Bad arguments (including text that is not valid Unicode).
        FileNotFoundError: ``database`` does not exist.
        SandboxInfraError: The sandbox could not run, or ``setup_sql`` failed.
    """
    if not isinstance(query, str):
        raise ValueError("query must be a str")
    if setup_sql is not None and not isinstance(setup_sql, str):
        raise ValueError("setup_sql must be a str or None")
    files: dict[str, bytes] = {
        _MAIN_FILE: _SQL_RUNNER.encode("utf-8"),
        _SQL_QUERY_FILE: _utf8(query, "query"),
        _SQL_CONFIG_FILE: json.dumps(
            {"read_only": bool(read_only), "setup": setup_sql is not None}
        ).encode("utf-8"),
    }
    if setup_sql is not None:
        files[_SQL_SETUP_FILE] = _utf8(setup_sql, "setup_sql")
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
    layers = _last_layers()
    if layers is None:
        run_python("pass", limits=SandboxLimits(timeout_s=30.0))
        layers = _last_layers() or {}
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
        "seccomp_no_unix_sockets": layers.get("seccomp_sockets"),
        "audit_hook": "python only",
        "rlimits": ["AS", "CPU", "FSIZE", "NOFILE", "NPROC", "CORE"],
    }


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
        _utf8(name, f"file name {name!r}")
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"file name must be a plain relative path, got {name!r}")
        if name in reserved:
            raise ValueError(f"file name {name!r} is reserved by the sandbox")
        if isinstance(content, str):
            out[name] = _utf8(content, f"content of file {name!r}")
        elif isinstance(content, bytes | bytearray | memoryview):
            out[name] = bytes(content)
        else:
            raise ValueError(f"content of {name!r} must be str or bytes")
    return out


def _utf8(text: str, what: str) -> bytes:
    r"""Encode ``text`` as UTF-8, or raise ``ValueError`` naming ``what`` and the bad position.

    Args:
        text: Text from the caller.
        what: How the error names it, e.g. ``"code"`` or ``"content of file 'a.txt'"``.

    Returns:
        The UTF-8 bytes.

    Raises:
        ValueError: ``text`` holds a lone surrogate (not a Unicode scalar value); the message
            shows the first such character and its index, e.g. ``code is not valid Unicode:
            '\ud800' at index 7 (surrogates not allowed)``.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise ValueError(
            f"{what} is not valid Unicode: {bad!r} at index {exc.start} ({exc.reason})"
        ) from None


def _check_stdin(stdin: str | None) -> None:
    """Refuse stdin text that is not valid Unicode before anything is started."""
    if isinstance(stdin, str):
        _utf8(stdin, "stdin")
