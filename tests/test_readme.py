"""The README's snippets (and the guides' in ``docs/``) run as written.

Every fenced ``python`` block runs in a fresh interpreter, and every ``console`` block's ``$``
commands run in ``bash``; both in document order, in one temporary folder (so a command that
writes ``artifacts/tiny`` serves the Python block after it), with ``.venv`` linked to this
interpreter's environment so that ``source .venv/bin/activate`` works as written. A console
block's other lines are the expected output: each must appear in order, ``...`` skips any lines,
and a line ending in ``...`` matches any output line that starts with the rest. A
``<!-- readme-test: serve ARGS -->`` comment before a block starts
``python -m mtrl_gym.remote serve ARGS`` for that block. ``bash`` blocks hold the two commands
(``tests/test_foundation.py``), and ``text`` blocks are commands too long for the suite (the
quickstart's run, its evaluation and export: ``tests/mtrl_jax/test_trainer.py`` runs the same
jobs on tiny runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK_RE = re.compile(
    r"(?:<!-- readme-test: serve (?P<serve>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```",
    re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    lang: str
    body: str
    line: int  # where it starts, for failure messages
    serve: str | None = None


# Documents whose code runs as written. In the README each python block stands alone; in a guide
# the python blocks are one program, each run after the ones before it.
DOCUMENTS = ("README.md", "docs/environments.md")


def readme_blocks(document: str = "README.md") -> list[Block]:
    """A document's fenced blocks, in order."""
    text = (ROOT / document).read_text()
    return [
        Block(m["lang"], m["body"], text.count("\n", 0, m.start()) + 1, m["serve"])
        for m in _BLOCK_RE.finditer(text)
    ]


def expected_output_matches(expected: list[str], output: str) -> str | None:
    """Says which expected line is missing from ``output`` (in order), or ``None``.

    >>> expected_output_matches(["a", "...", "c..."], "a\\nb\\ncd")
    >>> expected_output_matches(["b", "a"], "a\\nb")
    "expected line 'a' not found after line 2"
    """
    lines = output.splitlines()
    at = 0
    for want in expected:
        if want.strip() == "...":
            continue
        prefix = want[:-3] if want.endswith("...") else None
        for i in range(at, len(lines)):
            got = lines[i].rstrip()
            if (prefix is not None and got.startswith(prefix)) or got == want.rstrip():
                at = i + 1
                break
        else:
            return f"expected line {want!r} not found after line {at}"
    return None


def _console_steps(body: str) -> list[tuple[str, list[str]]]:
    """A console block as ``(command, expected output lines)`` pairs."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise AssertionError(f"console output before any command: {line!r}")
    return steps


def _serve(args: str, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mtrl_gym.remote", "serve", *args.split()]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while "listening" not in proc.stdout.readline():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not start: {cmd}")
    return proc


@pytest.mark.parametrize("document", DOCUMENTS)
def test_readme__snippets_run_as_written(document: str, tmp_path: Path) -> None:
    blocks = readme_blocks(document)
    langs = {b.lang for b in blocks}
    assert langs <= {"bash", "text", "python", "console"}, langs  # no unlabelled blocks
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    env.pop("MTRL_REMOTE_TOKEN", None)
    ran, program = 0, ""
    for block in blocks:
        if block.lang not in ("python", "console"):
            continue
        server = _serve(block.serve, env) if block.serve else None
        try:
            if block.lang == "python":
                code = block.body if document == "README.md" else program + block.body
                program = code + "\n"
                out = subprocess.run(
                    [sys.executable, "-c", code],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert out.returncode == 0, f"README line {block.line}:\n{out.stderr[-3000:]}"
                ran += 1
                continue
            for command, expected in _console_steps(block.body):
                # Each command in a shell that has activated the venv, as the README asks first.
                script = f"source .venv/bin/activate\n{command}"
                out = subprocess.run(
                    ["bash", "-c", script],
                    cwd=tmp_path,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                where = f"README line {block.line}: {command}"
                assert out.returncode == 0, f"{where}\n{out.stderr[-3000:]}"
                problem = expected_output_matches(expected, out.stdout)
                assert problem is None, f"{where}: {problem}\n{out.stdout[-2000:]}"
                ran += 1
        finally:
            if server is not None:
                server.kill()
                server.wait(timeout=10)
    assert ran >= (8 if document == "README.md" else 1)
