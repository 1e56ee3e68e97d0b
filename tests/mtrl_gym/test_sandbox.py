"""Tests of mtrl_gym.sandbox: hostile programs are contained and reported with the right status."""

from __future__ import annotations

import dis
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtrl_gym import sandbox
from mtrl_gym.sandbox import (
    SandboxInfraError,
    SandboxLimits,
    SandboxResult,
    isolation_report,
    run_command,
    run_python,
    run_sql,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox targets Linux")


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def sandbox_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the sandbox create its working directories under a unique, test-owned directory.

    The unique name also appears in the command line of every sandboxed Python process, which
    lets the tests look for stray processes.
    """
    base = tmp_path / f"sbx-{uuid.uuid4().hex}"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    return base


def _processes_with(token: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``token``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if token.encode() in cmdline:
            found.append(int(entry))
    return found


def _zombie_children() -> list[int]:
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(entry))
    return zombies


def _assert_no_leftovers(token: str) -> None:
    # The sandbox kills and reaps everything before returning; allow the kernel a moment to
    # finish tearing down namespaces on a loaded machine.
    deadline = time.monotonic() + 2.0
    while (_processes_with(token) or _zombie_children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(token) == []
    assert _zombie_children() == []


def _skip_unless_pids_are_bounded() -> None:
    """Skip unless a fork bomb is bounded by the kernel (pids cgroup, or NPROC for non-root)."""
    if os.geteuid() == 0 and isolation_report()["pids_cgroup"] is None:
        pytest.skip("root without a pids cgroup: a fork bomb would not be bounded")


def _machine_is_responsive() -> None:
    start = time.monotonic()
    result = run_python("print(6 * 7)")
    assert result.status == "ok" and result.stdout == "42\n"
    assert time.monotonic() - start < 5.0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def listening_server() -> Iterator[tuple[socket.socket, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.3)
    try:
        yield server, server.getsockname()[1]
    finally:
        server.close()


# ------------------------------------------------------------------------------------------------
# Normal programs
# ------------------------------------------------------------------------------------------------


def test_run_python__normal_program_is_ok_with_exact_stdout() -> None:
    result = run_python("print('hello')\nprint(sum(range(10)))")
    assert result.status == "ok"
    assert result.ok
    assert result.returncode == 0
    assert result.stdout == "hello\n45\n"
    assert result.stderr == ""
    assert not result.truncated
    assert result.describe() == "hello\n45\n"


def test_run_python__exception_is_error_with_traceback_without_private_path(
    sandbox_tmp: Path,
) -> None:
    result = run_python("def f():\n    raise ValueError('boom')\nf()\n")
    assert result.status == "error"
    assert result.returncode == 1
    assert 'File "./main.py", line 3, in <module>' in result.stderr
    assert result.stderr.rstrip().endswith("ValueError: boom")
    assert str(sandbox_tmp) not in result.stderr
    assert "mtrl-sandbox-" not in result.stderr
    for own in ("bootstrap.py", "audit_hook.py", "launcher.py"):  # sandbox frames are not shown
        assert own not in result.stderr
    assert result.describe().startswith("Error: exit code 1")


def test_run_python__syntax_error_is_error() -> None:
    result = run_python("def f(:\n    pass\n")
    assert result.status == "error"
    assert "SyntaxError" in result.stderr
    assert 'File "./main.py", line 1' in result.stderr


def test_run_python__stdin_is_fed_to_the_program() -> None:
    result = run_python("import sys\nprint(sys.stdin.read().upper())", stdin="abc\ndef")
    assert result.status == "ok"
    assert result.stdout == "ABC\nDEF\n"


def test_run_python__output_is_reproducible_across_runs() -> None:
    code = (
        "import os\n"
        "print(os.getcwd())\n"
        "print({'alpha', 'beta', 'gamma', 'delta', 'epsilon'})\n"
        "raise RuntimeError(os.path.abspath('x'))\n"
    )
    first, second = run_python(code), run_python(code)
    assert (first.stdout, first.stderr) == (second.stdout, second.stderr)
    assert first.stdout.startswith(".\n")
    assert "RuntimeError: ./x" in first.stderr


def test_run_python__threads_are_allowed() -> None:
    code = (
        "import threading\n"
        "out = []\n"
        "threads = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "print(sorted(out))\n"
    )
    result = run_python(code)
    assert result.status == "ok", result.stderr
    assert result.stdout == "[0, 1, 2, 3]\n"


def test_run_python__files_are_visible_and_workdir_is_removed(sandbox_tmp: Path) -> None:
    files: dict[str, str | bytes] = {"helper.py": "ANSWER = 42\n", "data/input.bin": b"\x00\x01"}
    code = (
        "import helper\n"
        "print(helper.ANSWER, open('data/input.bin', 'rb').read())\n"
        "open('scratch.txt', 'w').write('written inside')\n"
        "print(open('scratch.txt').read())\n"
    )
    result = run_python(code, files=files)
    assert result.status == "ok", result.stderr
    assert result.stdout == "42 b'\\x00\\x01'\nwritten inside\n"
    assert list(sandbox_tmp.iterdir()) == []
    # Also on failures.
    run_python("raise SystemExit(3)", files=files)
    run_python("while True: pass", limits=SandboxLimits(timeout_s=0.5))
    assert list(sandbox_tmp.iterdir()) == []


def test_run_python__each_run_gets_a_fresh_workdir() -> None:
    first = run_python("open('state.txt', 'w').write('1')")
    second = run_python("import os\nprint(os.path.exists('state.txt'))")
    assert first.ok
    assert second.stdout == "False\n"


# ------------------------------------------------------------------------------------------------
# Hostile programs
# ------------------------------------------------------------------------------------------------


def test_run_python__infinite_loop_times_out_and_keeps_partial_output(sandbox_tmp: Path) -> None:
    start = time.monotonic()
    result = run_python(
        "print('started')\nwhile True:\n    pass\n", limits=SandboxLimits(timeout_s=1.0)
    )
    elapsed = time.monotonic() - start
    assert result.status == "timeout"
    assert result.returncode is None
    assert result.stdout == "started\n"
    assert elapsed < 1.0 + 2.0
    assert result.describe().startswith("Error: execution timed out after 1 s")
    _assert_no_leftovers(sandbox_tmp.name)


def test_run_python__fork_bomb_is_refused(sandbox_tmp: Path) -> None:
    code = "import os\nwhile True:\n    os.fork()\n"
    result = run_python(code, limits=SandboxLimits(timeout_s=2.0))
    assert result.status == "error"
    assert "sandbox: starting processes (os.fork) is not allowed" in result.stderr
    _assert_no_leftovers(sandbox_tmp.name)
    _machine_is_responsive()


def test_run_python__fork_bomb_with_subprocess_allowed_is_contained(sandbox_tmp: Path) -> None:
    _skip_unless_pids_are_bounded()
    code = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    start = time.monotonic()
    result = run_python(
        code, limits=SandboxLimits(timeout_s=2.0, allow_subprocess=True, max_processes=16)
    )
    assert time.monotonic() - start < 2.0 + 2.0
    assert result.status != "ok"
    assert result.status in ("timeout", "cpu_limit", "killed")
    _assert_no_leftovers(sandbox_tmp.name)
    _machine_is_responsive()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run_command__shell_fork_bomb_is_contained() -> None:
    _skip_unless_pids_are_bounded()
    token = f"bomb{uuid.uuid4().hex}"
    limits = SandboxLimits(timeout_s=2.0, max_processes=32)
    # The shell stays alive so that the bomb runs until the wall clock stops it.
    start = time.monotonic()
    result = run_command(["bash", "-c", f": {token}; :(){{ :|:& }};:; sleep 30"], limits=limits)
    assert time.monotonic() - start < 2.0 + 2.0
    assert result.status != "ok"
    assert result.status in ("timeout", "output_limit")
    _assert_no_leftovers(token)
    # The classic form: the shell itself returns at once, its bomb must not outlive it.
    run_command(["bash", "-c", f": {token}; :(){{ :|:& }};:"], limits=limits)
    _assert_no_leftovers(token)
    _machine_is_responsive()


def test_run_command__background_processes_do_not_outlive_the_run() -> None:
    token = f"bg{uuid.uuid4().hex}"
    result = run_command(["sh", "-c", f"setsid sh -c 'sleep 60; : {token}' & echo started"])
    assert result.status == "ok"
    assert result.stdout == "started\n"
    _assert_no_leftovers(token)


def test_run_python__memory_hog_reports_memory_limit() -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n"
    result = run_python(code, limits=SandboxLimits(memory_mb=256, timeout_s=10.0))
    assert result.status == "memory_limit"
    assert "memory limit of 256 MB exceeded" in result.describe()


def test_run_python__cpu_loop_hits_cpu_limit() -> None:
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", limits=SandboxLimits(timeout_s=10.0, cpu_s=1))
    # The wall clock is far away, so the CPU limit (SIGXCPU) must be what stops it.
    assert result.status == "cpu_limit"
    assert result.detail == "CPU time limit of 1 s exceeded"
    assert time.monotonic() - start < 5.0


def test_run_python__output_flood_is_truncated() -> None:
    result = run_python(
        "while True:\n    print('x' * 99)\n", limits=SandboxLimits(max_output_bytes=1000)
    )
    assert result.status == "output_limit"
    assert result.truncated
    assert result.returncode is None
    assert len(result.stdout.encode()) <= 1000
    assert result.stdout.startswith("x" * 99 + "\n")
    assert "output exceeded 1000 bytes" in result.describe()


def test_run_python__write_outside_workdir_fails(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    before = _sha256(victim)
    created = tmp_path / "created.txt"
    attempts = [
        f"open({str(victim)!r}, 'w').write('pwned')",
        f"open({str(victim)!r}, 'a').write('pwned')",
        f"open({str(created)!r}, 'x').write('pwned')",
        f"os.close(os.open({str(victim)!r}, os.O_WRONLY | os.O_TRUNC))",
        f"os.remove({str(victim)!r})",
        f"os.rename({str(victim)!r}, 'stolen.txt')",
        f"os.chmod({str(victim)!r}, 0o777)",
        f"os.symlink({str(victim)!r}, 'link')",
        f"os.chdir({str(tmp_path)!r}); open('created.txt', 'w').write('pwned')",
        "open('../escape.txt', 'w').write('pwned')",
    ]
    code = "import os\n"
    for attempt in attempts:
        code += f"try:\n    {attempt}\n    print('WROTE')\nexcept OSError as exc:\n"
        code += "    print(type(exc).__name__)\n"
    result = run_python(code)
    assert result.status == "ok", result.stderr
    assert "WROTE" not in result.stdout
    assert result.stdout.count("PermissionError") == len(attempts)
    assert _sha256(victim) == before
    assert oct(victim.stat().st_mode & 0o777) != oct(0o777)
    assert not created.exists()


def test_run_python__hook_survives_monkeypatching_of_os_and_builtins(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    code = (
        "import builtins, os, posixpath\n"
        f"os.chdir({str(tmp_path)!r})\n"
        "os.getcwd = lambda: '/nonexistent'\n"
        "posixpath.realpath = lambda p, **k: '/'\n"
        "builtins.isinstance = lambda *a: False\n"
        "open('target.txt', 'w').write('pwned')\n"
    )
    result = run_python(code)
    assert result.status == "error"
    assert "PermissionError: sandbox: writing to 'target.txt'" in result.stderr
    assert not target.exists()


def test_run_command__write_outside_workdir_fails(tmp_path: Path) -> None:
    if not isolation_report()["mount_namespace_readonly"]:
        pytest.skip("no read-only mount namespace on this host")
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    before = _sha256(victim)
    script = f"echo pwned > {victim}; echo pwned >> {victim}; rm -f {victim}; touch {tmp_path}/new"
    result = run_command(["sh", "-c", script + "; echo inside > ok.txt; cat ok.txt"])
    assert "Read-only file system" in result.stderr
    assert result.stdout == "inside\n"  # The working directory itself stays writable.
    assert _sha256(victim) == before
    assert not (tmp_path / "new").exists()


def test_run_python__socket_connection_fails_and_server_sees_nothing(
    listening_server: tuple[socket.socket, int],
) -> None:
    server, port = listening_server
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "s.settimeout(2)\n"
        f"s.connect(('127.0.0.1', {port}))\n"
        "print('CONNECTED')\n"
    )
    result = run_python(code)
    assert result.status == "error"
    assert "CONNECTED" not in result.stdout
    assert "sandbox: network access" in result.stderr
    with pytest.raises(TimeoutError):
        server.accept()


def test_run_command__socket_connection_fails_without_audit_hook(
    listening_server: tuple[socket.socket, int],
) -> None:
    if not isolation_report()["network_namespace"]:
        pytest.skip("no network namespace on this host")
    server, port = listening_server
    code = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "print('CONNECTED')\n"
    )
    result = run_command([sys.executable, "-c", code])
    assert result.status == "error"
    assert "CONNECTED" not in result.stdout
    with pytest.raises(TimeoutError):
        server.accept()


def test_run_python__subprocess_and_ctypes_are_refused() -> None:
    cases = {
        "import subprocess; subprocess.run(['true'])": "subprocess.Popen",
        "import os; os.system('true')": "os.system",
        "import os; os.execv('/bin/true', ['true'])": "os.exec",
        "import ctypes; ctypes.CDLL(None).system(b'true')": "ctypes",
        "import os; os.kill(1, 9)": "os.kill",
    }
    for code, what in cases.items():
        result = run_python(code)
        assert result.status == "error", code
        assert "sandbox: " in result.stderr and what in result.stderr, (code, result.stderr)


def test_run_python__subprocess_allowed_when_requested() -> None:
    code = "import subprocess\nprint(subprocess.run(['echo', 'hi'], capture_output=True).stdout)"
    result = run_python(code, limits=SandboxLimits(allow_subprocess=True))
    assert result.status == "ok", result.stderr
    assert result.stdout == "b'hi\\n'\n"


def test_audit_hook__uses_no_global_names() -> None:
    # The user's code can rebind globals and builtins; the hook must not look any up.
    def nested(code: types.CodeType) -> Iterator[types.CodeType]:
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                yield const
                yield from nested(const)

    for code in nested(sandbox._make_audit_hook.__code__):
        names = [i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"]
        assert names == [], (code.co_name, names)


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="no seccomp filter")
def test_seccomp_filter__blocks_process_creation_but_not_threads() -> None:
    # Runs the filter in a sandboxed interpreter without the audit hook, so that only the
    # kernel layer stands between the code and fork/exec.
    code = (
        "import importlib.util, os, subprocess, sys, threading\n"
        f"spec = importlib.util.spec_from_file_location('sbx', {sandbox._LAUNCHER_FILE!r})\n"
        "sbx = importlib.util.module_from_spec(spec)\n"
        "sys.modules['sbx'] = sbx\n"
        "spec.loader.exec_module(sbx)\n"
        "print(sbx._seccomp_no_spawn(sbx._libc()))\n"
        "t = threading.Thread(target=print, args=('thread',))\n"
        "t.start()\n"
        "t.join()\n"
        "for fn in (os.fork, lambda: os.execv('/bin/true', ['true']),\n"
        "           lambda: subprocess.run(['true'])):\n"
        "    try:\n"
        "        if fn() == 0:\n"
        "            os._exit(0)\n"
        "        print('SPAWNED')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )
    result = run_command([sys.executable, "-c", code])
    assert result.status == "ok", result.stderr
    assert result.stdout == "True\nthread\nrefused\nrefused\nrefused\n"


# ------------------------------------------------------------------------------------------------
# run_command
# ------------------------------------------------------------------------------------------------


def test_run_command__runs_program_with_files_and_stdin() -> None:
    result = run_command(["sh", "-c", "cat in.txt; tr a-z A-Z"], files={"in.txt": "x\n"}, stdin="y")
    assert result.status == "ok"
    assert result.stdout == "x\nY"


def test_run_command__missing_program_is_error_127() -> None:
    result = run_command(["definitely-not-a-command-xyz"])
    assert result.status == "error"
    assert result.returncode == 127
    assert "command not found" in result.stderr


def test_run_command__nonzero_exit_and_signals_are_reported() -> None:
    assert run_command(["sh", "-c", "exit 3"]).returncode == 3
    killed = run_command(["sh", "-c", "kill -SEGV $$"])
    assert killed.status == "killed"
    assert killed.returncode == -11
    assert killed.detail == "killed by signal SIGSEGV"


# ------------------------------------------------------------------------------------------------
# run_sql
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def shop_db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, image BLOB);"
        "INSERT INTO items VALUES (1, 'apple', 0.5, NULL), (2, 'pear', 0.75, x'CAFE');"
    )
    con.commit()
    con.close()
    return path


def test_run_sql__returns_rows_as_json_from_copied_database(shop_db: Path) -> None:
    result = run_sql("SELECT id, name, price, image FROM items ORDER BY id", database=shop_db)
    assert result.status == "ok", result.stderr
    expected = {
        "columns": ["id", "name", "price", "image"],
        "rows": [[1, "apple", 0.5, None], [2, "pear", 0.75, "X'CAFE'"]],
    }
    assert json.loads(result.stdout) == expected
    assert result.stdout == json.dumps(expected) + "\n"


def test_run_sql__update_does_not_modify_the_original(shop_db: Path) -> None:
    before, mtime = _sha256(shop_db), shop_db.stat().st_mtime_ns
    result = run_sql("UPDATE items SET price = 0", database=shop_db)
    assert result.status == "error"
    assert "readonly database" in result.stderr
    # Even a writable run only touches the private copy.
    writable = run_sql("UPDATE items SET price = 0", database=shop_db, read_only=False)
    assert writable.status == "ok", writable.stderr
    assert json.loads(writable.stdout) == {"columns": [], "rows": []}
    assert _sha256(shop_db) == before
    assert shop_db.stat().st_mtime_ns == mtime
    assert sqlite3.connect(shop_db).execute("SELECT SUM(price) FROM items").fetchone() == (1.25,)


def test_run_sql__sql_error_reports_sqlite_message(shop_db: Path) -> None:
    result = run_sql("SELECT * FROM missing_table", database=shop_db)
    assert result.status == "error"
    assert result.stderr == "OperationalError: no such table: missing_table\n"


def test_run_sql__setup_sql_builds_a_fresh_database() -> None:
    setup = "CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (3), (4);"
    result = run_sql("SELECT SUM(x) AS total FROM t", setup_sql=setup)
    assert result.status == "ok", result.stderr
    assert json.loads(result.stdout) == {"columns": ["total"], "rows": [[7]]}


def test_run_sql__attach_and_vacuum_into_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.db"
    for query in (f"ATTACH '{outside}' AS o", f"VACUUM INTO '{outside}'"):
        result = run_sql(query, setup_sql="CREATE TABLE t (x)", read_only=False)
        assert result.status == "error", query
        assert "not authorized" in result.stderr or "authorization denied" in result.stderr
    assert not outside.exists()


def test_run_sql__broken_setup_raises_infra_error() -> None:
    with pytest.raises(SandboxInfraError, match="setup_sql failed"):
        run_sql("SELECT 1", setup_sql="CREATE TABLE (")


def test_run_sql__missing_database_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run_sql("SELECT 1", database=tmp_path / "nope.sqlite")


# ------------------------------------------------------------------------------------------------
# Validation, concurrency, reporting
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout_s": 0},
        {"timeout_s": -1.0},
        {"timeout_s": float("inf")},
        {"timeout_s": float("nan")},
        {"cpu_s": 0},
        {"memory_mb": 0},
        {"memory_mb": -5},
        {"memory_mb": 1.5},
        {"memory_mb": True},
        {"max_processes": 0},
        {"max_output_bytes": -1},
        {"max_file_mb": 0},
        {"max_open_files": 0},
        {"network": 1},
    ],
)
def test_sandbox_limits__invalid_values_raise_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SandboxLimits(**kwargs)  # type: ignore[arg-type]


def test_sandbox_limits__default_cpu_limit_follows_timeout() -> None:
    assert SandboxLimits(timeout_s=2.5).effective_cpu_s == 4
    assert SandboxLimits(timeout_s=2.5, cpu_s=1).effective_cpu_s == 1


@pytest.mark.parametrize("name", ["../escape.py", "/abs.py", "a/../b.py", "", "main.py", "a//b"])
def test_run_python__unsafe_or_reserved_file_names_raise_value_error(name: str) -> None:
    with pytest.raises(ValueError):
        run_python("pass", files={name: "x"})


def test_run_command__invalid_argv_raises_value_error() -> None:
    for argv in ([], "echo hi", ["echo", 3]):
        with pytest.raises(ValueError):
            run_command(argv)  # type: ignore[arg-type]


def test_run_python__concurrent_runs_from_threads_succeed() -> None:
    results: dict[tuple[int, int], SandboxResult] = {}
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(3):
            result = run_python(f"print({i} * 100 + {j})", stdin=f"{i}")
            with lock:
                results[(i, j)] = result

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 24
    for (i, j), result in results.items():
        assert result.status == "ok", result.describe()
        assert result.stdout == f"{i * 100 + j}\n"


def test_isolation_report__lists_every_layer() -> None:
    report = isolation_report()
    for key in (
        "network",
        "filesystem",
        "pid_namespace",
        "pids_cgroup",
        "capabilities_dropped",
        "seccomp_no_subprocess",
        "rlimits",
    ):
        assert key in report
    assert report["network"] in ("namespace", "audit hook (python only)")


def test_sandbox_result__describe_is_short_and_deterministic() -> None:
    ok = SandboxResult(status="ok", returncode=0, stdout="", stderr="", duration_s=1.23)
    assert ok.describe() == "(no output)"
    failed = SandboxResult(
        status="timeout",
        returncode=None,
        stdout="partial\n",
        stderr="",
        duration_s=2.01,
        detail="execution timed out after 2 s",
    )
    assert failed.describe() == "Error: execution timed out after 2 s\nstdout:\npartial\n"
    assert "2.01" not in failed.describe()
