"""Nothing from the evaluation-only SOP-Bench folder may be in the repository.

Checks every file git would commit (tracked or untracked, not ignored) against the shared folder:
no identical file (by sha256) and no copied line (CSV rows, SOP sentences, behaviour specs), found
by its first 40 characters anywhere in a file.
The data is CC BY-NC 4.0, evaluation only; see ``shared/sop_bench/README.md``.
"""

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SOP_BENCH_DATA, SOP_BENCH_MISSING

ROOT = Path(__file__).parents[3]
SHARED = SOP_BENCH_DATA
# Upstream data files are checked line by line; every shared file is checked whole (sha256).
DATA_FILES = ("*.csv", "sop.txt", "toolspecs.json", "metadata.json")
# Shorter lines ("True,False,1") are no evidence of copying.
MIN_LINE = 40


def repo_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"git cannot list the repository files: {e}")
    return [ROOT / p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def distinctive_lines() -> dict[str, dict[str, Path]]:
    """Lines of the upstream data found in one domain only, by their first MIN_LINE characters."""
    domains: dict[str, set[Path]] = {}
    source: dict[str, Path] = {}
    for pattern in DATA_FILES:
        for path in SHARED.glob(f"*/{pattern}"):
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if len(line) >= MIN_LINE:
                    domains.setdefault(line, set()).add(path.parent)
                    source[line] = path
    needles: dict[str, dict[str, Path]] = {}
    for line, where in domains.items():
        if len(where) == 1:
            needles.setdefault(line[:MIN_LINE], {})[line] = source[line]
    return needles


def test_repository__holds_no_sop_bench_data():
    if not SHARED.is_dir():
        pytest.skip(SOP_BENCH_MISSING)
    digests = {
        hashlib.sha256(p.read_bytes()).hexdigest(): p for p in SHARED.rglob("*") if p.is_file()
    }
    needles = distinctive_lines()
    assert len(needles) > 1000, "expected many distinctive lines in the shared data"
    for path in repo_files():
        data = path.read_bytes()
        copied = digests.get(hashlib.sha256(data).hexdigest())
        if copied is not None:
            pytest.fail(f"{path} is a copy of {copied}")
        text = data.decode("utf-8", errors="ignore")
        # Every window, so that a line embedded in code or in quotes is found too.
        for i in range(len(text) - MIN_LINE + 1):
            lines = needles.get(text[i : i + MIN_LINE])
            if lines:
                hit = next((x for x in lines if text.startswith(x, i)), None)
                if hit is not None:  # report where, without echoing the data into logs
                    pytest.fail(f"{path} (offset {i}) contains a line of {lines[hit]}")
