"""Regression tests of mtrl_gym.sandbox for escapes and misreports found by an adversarial campaign.

Each test names the layer it exercises: the socket seccomp filter of the launcher (every run,
commands included), the launcher's forwarding of the program's fate, the audit hook on its own
(a plain interpreter with only the hook installed, so that no kernel layer hides a gap in it) and
the argument checks of the public API.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import mtrl_gym
from mtrl_gym import sandbox
from mtrl_gym.sandbox import (
    SandboxLimits,
    SandboxResult,
    isolation_report,
    run_command,
    run_python,
    run_sql,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox targets Linux")

_SANDBOX_DIR = os.path.dirname(sandbox._LAUNCHER_FILE)
_AUDIT_HOOK_FILE = os.path.join(_SANDBOX_DIR, "audit_hook.py")


def _host_paths() -> list[str]:
    """Host paths that the sandbox itself must never print to the code's stdout or stderr."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(mtrl_gym.__file__)))
    return [_SANDBOX_DIR, repo, sys.prefix, os.path.dirname(sys.executable)]


def _assert_no_host_paths(result: SandboxResult) -> None:
    for path in _host_paths():
        assert path not in result.stdout, path
        assert path not in result.stderr, path
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------
# Unix sockets of the host (launcher: socket seccomp filter; audit hook for Python)
# ------------------------------------------------------------------------------------------------


@dataclass
class _HostSockets:
    """Unix sockets that a host service listens on, outside any sandbox working directory."""

    stream_path: str
    dgram_path: str
    abstract_name: str  # Without the leading NUL byte.
    stream: socket.socket
    dgram: socket.socket
    abstract: socket.socket

    def assert_untouched(self) -> None:
        """Nothing connected to, or sent anything to, any of the listeners."""
        for listener in (self.stream, self.abstract):
            listener.settimeout(0.2)
            with pytest.raises(TimeoutError):
                listener.accept()
        self.dgram.settimeout(0.2)
        with pytest.raises(TimeoutError):
            self.dgram.recv(64)


@pytest.fixture
def host_sockets() -> Iterator[_HostSockets]:
    # A short directory of its own: AF_UNIX paths are limited to 107 bytes.
    directory = tempfile.mkdtemp(prefix="mtrl-host-")
    stream_path = os.path.join(directory, "stream.sock")
    dgram_path = os.path.join(directory, "dgram.sock")
    abstract_name = f"mtrl-test-{uuid.uuid4().hex}"
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stream.bind(stream_path)
        stream.listen()
        dgram.bind(dgram_path)
        abstract.bind("\0" + abstract_name)
        abstract.listen()
        yield _HostSockets(stream_path, dgram_path, abstract_name, stream, dgram, abstract)
    finally:
        for sock in (stream, dgram, abstract):
            sock.close()
        shutil.rmtree(directory, ignore_errors=True)


# Run by a plain interpreter inside the sandbox (no audit hook): every way to reach the host's
# Unix sockets must fail with a permission error, while legitimate work still succeeds.
_UNIX_SOCKET_PROBE = """\
import ctypes, errno, socket, sys
stream_path, dgram_path, abstract_name = sys.argv[1:4]

def attempt(name, fn):
    try:
        fn()
        print(name, "REACHED")
    except OSError as exc:
        print(name, type(exc).__name__)

def stream(address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(address)
    s.sendall(b"pwned")

def datagram(address):
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"pwned", address)

def datagram_pair(address):
    a, _b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.sendto(b"pwned", address)

def io_uring():
    # io_uring's SOCKET and CONNECT operations would create and connect sockets below seccomp.
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)
    if libc.syscall(425, 1, params) < 0:
        err = ctypes.get_errno()
        raise OSError(err, errno.errorcode.get(err, str(err)))

attempt("path", lambda: stream(stream_path))
attempt("abstract", lambda: stream("\\0" + abstract_name))
attempt("datagram", lambda: datagram(dgram_path))
attempt("datagram-pair", lambda: datagram_pair(dgram_path))
attempt("io_uring", io_uring)
a, b = socket.socketpair()
a.sendall(b"pair works")
print(b.recv(64).decode())
with open("scratch.txt", "w") as f:
    f.write("file works")
print(open("scratch.txt").read())
"""

_PROBE_REFUSED = (
    "path PermissionError\n"
    "abstract PermissionError\n"
    "datagram PermissionError\n"
    "datagram-pair PermissionError\n"
    "io_uring PermissionError\n"
    "pair works\n"
    "file works\n"
)


def _skip_unless_socket_filter() -> None:
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("no seccomp filter for this architecture")
    # False only when the kernel refused the filter; a missing key (None) must not skip.
    if isolation_report().get("seccomp_no_unix_sockets") is False:
        pytest.skip("the kernel refused the socket seccomp filter")


@pytest.mark.parametrize("network", [False, True], ids=["no-network", "network"])
def test_run_command__cannot_reach_host_unix_sockets(
    host_sockets: _HostSockets, network: bool
) -> None:
    _skip_unless_socket_filter()
    argv = [sys.executable, "-c", _UNIX_SOCKET_PROBE, host_sockets.stream_path]
    argv += [host_sockets.dgram_path, host_sockets.abstract_name]
    result = run_command(argv, limits=SandboxLimits(network=network, timeout_s=10.0))
    assert result.status == "ok", result.stderr
    assert result.stdout == _PROBE_REFUSED
    host_sockets.assert_untouched()


@pytest.mark.parametrize("network", [False, True], ids=["no-network", "network"])
def test_run_python__cannot_reach_host_unix_sockets_itself_or_from_a_subprocess(
    host_sockets: _HostSockets, network: bool
) -> None:
    _skip_unless_socket_filter()
    # The audit hook refuses the connection in the Python process itself; a child interpreter
    # has no hook, so there only the kernel layer stands in the way.
    code = (
        "import socket, subprocess, sys\n"
        "try:\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        f"    s.connect({host_sockets.stream_path!r})\n"
        "    print('main REACHED')\n"
        "except PermissionError:\n"
        "    print('main PermissionError')\n"
        f"argv = {[host_sockets.stream_path, host_sockets.dgram_path]!r}\n"
        f"argv.append({host_sockets.abstract_name!r})\n"
        "child = subprocess.run([sys.executable, '-c', open('probe.py').read(), *argv],\n"
        "                       capture_output=True, text=True)\n"
        "print(child.stdout + child.stderr, end='')\n"
        "print(subprocess.run(['echo', 'subprocess works'], capture_output=True).stdout.decode())\n"
    )
    limits = SandboxLimits(network=network, allow_subprocess=True, timeout_s=10.0)
    result = run_python(code, files={"probe.py": _UNIX_SOCKET_PROBE}, limits=limits)
    assert result.status == "ok", result.stderr
    assert result.stdout == "main PermissionError\n" + _PROBE_REFUSED + "subprocess works\n\n"
    host_sockets.assert_untouched()


def test_run_python__socket_pairs_work_with_the_hook_and_the_filter() -> None:
    # Legitimate in-process IPC: asyncio's self-pipe and sendmsg() on a connected pair.
    code = (
        "import asyncio, socket\n"
        "a, b = socket.socketpair()\n"
        "a.sendmsg([b'pair ', b'works'])\n"
        "print(b.recv(64).decode())\n"
        "async def main():\n"
        "    await asyncio.sleep(0)\n"
        "    return 'asyncio works'\n"
        "print(asyncio.run(main()))\n"
    )
    result = run_python(code)
    assert result.status == "ok", result.stderr
    assert result.stdout == "pair works\nasyncio works\n"


def test_isolation_report__names_the_socket_filter() -> None:
    report = isolation_report()
    assert "seccomp_no_unix_sockets" in report
    if os.uname().machine in ("x86_64", "aarch64"):
        assert isinstance(report["seccomp_no_unix_sockets"], bool)


# ------------------------------------------------------------------------------------------------
# Deaths by signal (launcher: forwarding the program's fate)
# ------------------------------------------------------------------------------------------------


def test_run_python__sigkill_is_reported_as_killed_without_host_paths() -> None:
    result = run_python("import os\nprint('before', flush=True)\nos.kill(os.getpid(), 9)\n")
    assert result.status == "killed"
    assert result.returncode == -signal.SIGKILL
    assert result.detail == "killed by signal SIGKILL"
    assert result.stdout == "before\n"
    assert result.stderr == ""
    _assert_no_host_paths(result)


def test_run_command__sigkill_and_sigterm_are_reported_exactly() -> None:
    for sig in (signal.SIGKILL, signal.SIGTERM):
        result = run_command(["sh", "-c", f"kill -{sig.name[3:]} $$"])
        assert result.status == "killed"
        assert result.returncode == -sig
        assert result.detail == f"killed by signal {sig.name}"
        _assert_no_host_paths(result)


@pytest.mark.parametrize("how", ["ignored", "caught"])
def test_run_python__cpu_limit_after_ignored_or_caught_sigxcpu_is_cpu_limit(how: str) -> None:
    # SIGXCPU at the soft limit (1 s) does not stop the program; the kernel's SIGKILL at the
    # hard limit (one second later) does, and that is still the CPU limit.
    handler = "signal.SIG_IGN" if how == "ignored" else "lambda *_: print('SIGXCPU', flush=True)"
    code = f"import signal\nsignal.signal(signal.SIGXCPU, {handler})\nwhile True:\n    pass\n"
    result = run_python(code, limits=SandboxLimits(timeout_s=15.0, cpu_s=1))
    assert result.status == "cpu_limit"
    assert result.returncode == -signal.SIGKILL
    assert result.detail == "CPU time limit of 1 s exceeded"
    assert result.stdout == ("SIGXCPU\n" if how == "caught" else "")
    _assert_no_host_paths(result)


@pytest.mark.parametrize(
    "sabotage",
    [
        "import traceback\ntraceback.TracebackException = None\n",
        "import traceback\ntraceback.StackSummary = None\n",
        "import sys\nclass Broken:\n    def write(self, text):\n        raise OSError('no')\n"
        "    def flush(self):\n        pass\nsys.stderr = Broken()\n",
    ],
    ids=["TracebackException", "StackSummary", "stderr"],
)
def test_run_python__uncaught_error_with_broken_traceback_machinery_shows_no_host_path(
    sabotage: str,
) -> None:
    result = run_python(sabotage + "raise ValueError('boom')\n")
    assert result.status == "error"
    assert result.returncode == 1
    assert result.stderr == "ValueError (the traceback could not be formatted)\n"
    _assert_no_host_paths(result)


def test_run_command__pipeline_reader_exit_stops_writer_quietly() -> None:
    # The launcher's interpreter ignores SIGPIPE; a command must get the default back, like
    # under a shell, instead of printing "Broken pipe" errors.
    result = run_command(["sh", "-c", "yes | head -n 1"])
    assert result.status == "ok"
    assert result.stdout == "y\n"
    assert result.stderr == ""


# ------------------------------------------------------------------------------------------------
# Audit hook on its own
# ------------------------------------------------------------------------------------------------

# Installs only the audit hook (exactly as the bootstrap builds it) in a plain interpreter whose
# working directory plays the sandbox's, then runs the code: no kernel layer is involved.
_HOOK_ONLY_RUNNER = """\
import importlib.util, json, os, sys
config = json.loads(sys.argv[1])
spec = importlib.util.spec_from_file_location("sandbox_audit_hook", config["hook_file"])
hook_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook_module)
workdir = os.path.realpath(os.getcwd())
native_dirs = tuple(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p))
sys.addaudithook(hook_module._make_audit_hook(
    workdir=workdir, network=False, allow_subprocess=False, native_dirs=native_dirs))
del hook_module, spec
exec(compile(config["code"], "main.py", "exec"), {"__name__": "__main__"})
"""


def _run_with_only_the_hook(code: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    config = json.dumps({"hook_file": _AUDIT_HOOK_FILE, "code": code})
    return subprocess.run(
        [sys.executable, "-c", _HOOK_ONLY_RUNNER, config],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _path_escapes_code(outside: Path) -> str:
    """Code that tries to write, and to read through sqlite3, outside its working directory."""
    out = str(outside)
    return f"""\
import os, pathlib, sqlite3
OUT = {out!r}
DB = {str(outside / "secret.db")!r}

def attempt(name, fn):
    try:
        fn()
        print(name, "ESCAPED")
    except Exception as exc:
        refused = isinstance(exc, PermissionError) and str(exc).startswith("sandbox:")
        print(name, "refused" if refused else type(exc).__name__)

class LooksLikeDevNull(str):  # Equal to, and hashed like, an allowed write target.
    def __eq__(self, other):
        return True
    def __hash__(self):
        return hash("/dev/null")

class LooksInside(str):  # Its own str methods tell the hook it lies inside.
    def startswith(self, *args):
        return True
    def split(self, *args):
        return str.split(os.getcwd() + "/inside.txt", *args)

class Flip:  # sqlite3 converts it first (outside), the hook would second (inside).
    calls = 0
    def __fspath__(self):
        Flip.calls += 1
        return DB if Flip.calls == 1 else "flip.db"

def with_patched_fspath():
    original = os.fspath
    os.fspath = lambda path: os.getcwd() + "/patched.txt"
    try:
        open((OUT + "/bytes.txt").encode(), "w").close()
    finally:
        os.fspath = original

def read_db(database, **kwargs):
    return sqlite3.connect(database, **kwargs).execute("SELECT secret FROM t").fetchall()

attempt("eq-hash", lambda: open(LooksLikeDevNull(OUT + "/eq.txt"), "w").close())
attempt("str-methods", lambda: open(LooksInside(OUT + "/methods.txt"), "w").close())
attempt("patched-fspath", with_patched_fspath)
attempt("stateful-pathlike", lambda: read_db(Flip()))
attempt("sqlite-read", lambda: read_db(DB))
attempt("sqlite-path", lambda: read_db(pathlib.Path(DB)))
attempt("sqlite-uri", lambda: read_db("file:" + DB + "?mode=ro", uri=True))
attempt("sqlite-create", lambda: sqlite3.connect(OUT + "/new.db").execute("CREATE TABLE x (y)"))

# Legitimate work inside the working directory.
open("inside.txt", "w").write("open works")
pathlib.Path("path.txt").write_text("pathlib works")
os.mkdir(pathlib.Path("subdir"))
os.remove(pathlib.Path("path.txt"))
con = sqlite3.connect("local.db")
con.execute("CREATE TABLE t (x)")
con.execute("INSERT INTO t VALUES ('sqlite works')")
con.commit()
con.close()
print(open("inside.txt").read())
print(sqlite3.connect("file:local.db?mode=ro", uri=True).execute("SELECT x FROM t").fetchone()[0])
print(sqlite3.connect(pathlib.Path("local.db")).execute("SELECT count(*) FROM t").fetchone()[0])
print(sqlite3.connect(":memory:").execute("SELECT 'memory works'").fetchone()[0])
"""


_ESCAPES_REFUSED = (
    "eq-hash refused\n"
    "str-methods refused\n"
    "patched-fspath refused\n"
    "stateful-pathlike refused\n"
    "sqlite-read refused\n"
    "sqlite-path refused\n"
    "sqlite-uri refused\n"
    "sqlite-create refused\n"
    "open works\n"
    "sqlite works\n"
    "1\n"
    "memory works\n"
)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the working directory, with a database holding a secret."""
    directory = tmp_path / "outside"
    directory.mkdir()
    con = sqlite3.connect(directory / "secret.db")
    con.execute("CREATE TABLE t (secret)")
    con.execute("INSERT INTO t VALUES ('the answer')")
    con.commit()
    con.close()
    return directory


def test_audit_hook__refuses_path_disguises_and_sqlite_outside_when_alone(
    tmp_path: Path, outside: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    done = _run_with_only_the_hook(_path_escapes_code(outside), workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout == _ESCAPES_REFUSED
    assert sorted(p.name for p in outside.iterdir()) == ["secret.db"]


def test_run_python__path_disguises_and_sqlite_outside_are_refused_by_the_hook(
    outside: Path,
) -> None:
    result = run_python(_path_escapes_code(outside))
    assert result.status == "ok", result.stderr
    assert result.stdout == _ESCAPES_REFUSED
    assert sorted(p.name for p in outside.iterdir()) == ["secret.db"]


def test_audit_hook__checks_the_exact_string_of_str_subclasses(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    hook = sandbox._make_audit_hook(
        workdir=str(workdir), network=False, allow_subprocess=False, native_dirs=()
    )

    class LooksLikeDevNull(str):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("/dev/null")

    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with pytest.raises(PermissionError, match="sandbox: writing to"):
        hook("open", (LooksLikeDevNull(str(tmp_path / "x.txt")), "w", write))
    hook("open", (LooksLikeDevNull(str(workdir / "x.txt")), "w", write))  # Inside: allowed.
    with pytest.raises(PermissionError, match="sandbox: opening SQLite database"):
        hook("sqlite3.connect", (str(tmp_path / "x.db"),))
    for database in (":memory:", "", str(workdir / "x.db")):
        hook("sqlite3.connect", (database,))


def test_run_sql__still_works_under_the_sqlite_rule() -> None:
    result = run_sql("SELECT 6 * 7 AS answer")
    assert result.status == "ok", result.stderr
    assert json.loads(result.stdout) == {"columns": ["answer"], "rows": [[42]]}


# ------------------------------------------------------------------------------------------------
# Text that is not valid Unicode (api.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: run_python("print('\ud800')"), r"^code .*'\\ud800' at index 7"),
        (lambda: run_python("pass", files={"a.txt": "ok\udfff"}), r"^content of file 'a.txt' "),
        (lambda: run_python("pass", files={"\ud800.txt": "x"}), r"^file name '\\ud800.txt' "),
        (lambda: run_python("pass", stdin="x\ud800"), r"^stdin .* at index 1"),
        (lambda: run_command(["echo", "\ud800"]), r"^argv\[1\] .* at index 0"),
        (lambda: run_sql("SELECT '\ud800'"), r"^query .* at index 8"),
        (lambda: run_sql("SELECT 1", setup_sql="-- \udc80"), r"^setup_sql .* at index 3"),
    ],
    ids=["code", "file-content", "file-name", "stdin", "argv", "query", "setup_sql"],
)
def test_api__text_that_is_not_unicode_raises_a_clear_value_error(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert not isinstance(info.value, UnicodeError)
    assert "not valid Unicode" in str(info.value)


def test_api__valid_non_ascii_text_still_runs() -> None:
    result = run_python("import sys\nprint('héllo ✓', sys.stdin.read())", stdin="ünï")
    assert result.status == "ok", result.stderr
    assert result.stdout == "héllo ✓ ünï\n"
