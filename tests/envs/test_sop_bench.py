"""SOP-Bench adapter tests.

Most read ../shared/sop_bench and skip when it is absent; the failure-handling tests use small
synthetic domains (``tests.envs.sop.synthetic``) and always run.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

from mtrl_envs.sop import SopSuite
from mtrl_envs.sop_bench import (
    LICENCE_NOTICE,
    SopBenchEnv,
    discover_domains,
    run_benchmark,
)
from mtrl_gym import EvalOnlyError, ensure_trainable
from mtrl_gym.cli import AGENTS
from tests.conftest import SOP_BENCH_DATA, SOP_BENCH_MISSING
from tests.envs.sop.synthetic import build_suite

SHARED = SOP_BENCH_DATA
DOMAINS = sorted(p.name for p in SHARED.iterdir() if p.is_dir()) if SHARED.is_dir() else []

needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=SOP_BENCH_MISSING)


def _upstream_copy(tmp_path: Path, domains: list[str]) -> tuple[Path, Path]:
    """Layout 2: upstream data folders without specs, plus a separate folder of specs."""
    data, specs = tmp_path / "data", tmp_path / "specs"
    for name in domains:
        shutil.copytree(
            SHARED / name, data / name, ignore=shutil.ignore_patterns("tool_behavior.json")
        )
        (specs / name).mkdir(parents=True)
        shutil.copy(SHARED / name / "tool_behavior.json", specs / name / "tool_behavior.json")
    return data, specs


@needs_data
def test_sop_bench__oracle_scores_100_strict_on_every_domain():
    report = run_benchmark(SHARED, agent=AGENTS["oracle"], agent_name="oracle")
    assert sorted(report["domains"]) == DOMAINS and report["errors"] == {}
    for name, m in report["domains"].items():
        assert (m["tsr"], m["tsr_compatible"], m["ecr"], m["ctsr"]) == (1.0, 1.0, 1.0, 1.0), name
        assert m["tasks"] == len(SopSuite.load(SHARED / name).tasks())
    assert report["macro"]["tsr"] == 1.0
    assert report["licence"] == LICENCE_NOTICE


@needs_data
def test_sop_bench__random_agent_near_zero_without_exceptions():
    report = run_benchmark(SHARED, limit=5, agent=AGENTS["random"], agent_name="random")
    assert report["errors"] == {} and report["macro"]["tsr"] == 0.0
    assert all(m["tasks"] == 5 for m in report["domains"].values())


@needs_data
def test_sop_bench__provenance_hashes_the_domain_files():
    import hashlib

    report = run_benchmark(
        SHARED, domains=[DOMAINS[0]], limit=1, agent=AGENTS["oracle"], agent_name="oracle"
    )
    prov = report["domains"][DOMAINS[0]]
    behavior = json.loads((SHARED / DOMAINS[0] / "tool_behavior.json").read_text())
    assert prov["source_commit"] == behavior["source"]["commit"]
    sop = hashlib.sha256((SHARED / DOMAINS[0] / "sop.txt").read_bytes()).hexdigest()
    assert prov["sha256"]["sop"] == sop
    assert set(prov["sha256"]) == {"sop", "toolspecs", "metadata", "csv"}


@needs_data
def test_sop_bench__separate_spec_folder_layout_gives_the_same_result(tmp_path):
    data, specs = _upstream_copy(tmp_path, DOMAINS[:2])
    a = run_benchmark(data, specs=specs, limit=10, agent=AGENTS["oracle"], agent_name="oracle")
    b = run_benchmark(
        SHARED, domains=DOMAINS[:2], limit=10, agent=AGENTS["oracle"], agent_name="oracle"
    )
    assert a["domains"] == b["domains"] and a["errors"] == {}


@needs_data
def test_sop_bench__bad_inputs_name_the_file_and_other_domains_still_run(tmp_path):
    data, specs = _upstream_copy(tmp_path, DOMAINS[:5])
    broken = DOMAINS[:4]
    (data / broken[0] / "sop.txt").unlink()  # a missing file
    csv = json.loads((specs / broken[1] / "tool_behavior.json").read_text())["task"]["csv"]
    (data / broken[1] / csv).write_bytes(b"\xff\xfe\x00garbage\x00")  # an unreadable CSV
    spec = json.loads((specs / broken[2] / "tool_behavior.json").read_text())
    spec["format"] = "sop-tool-behavior/9"  # an unknown format version
    (specs / broken[2] / "tool_behavior.json").write_text(json.dumps(spec))
    (specs / broken[3] / "tool_behavior.json").unlink()  # a domain without a spec
    (data / "not_a_spec_domain").mkdir()
    report = run_benchmark(data, specs=specs, limit=2, agent=AGENTS["oracle"], agent_name="oracle")
    errors = report["errors"]
    assert set(errors) == set(broken), errors
    assert "sop.txt" in errors[broken[0]] and "not found" in errors[broken[0]]
    assert csv in errors[broken[1]]
    assert "sop-tool-behavior/9" in errors[broken[2]] and "tool_behavior.json" in errors[broken[2]]
    assert "tool_behavior.json" in errors[broken[3]] and "no behaviour spec" in errors[broken[3]]
    assert list(report["domains"]) == [DOMAINS[4]]
    assert report["domains"][DOMAINS[4]]["tsr"] == 1.0


@needs_data
def test_sop_bench__unsupported_domain_is_refused_with_its_reason(tmp_path):
    data, specs = _upstream_copy(tmp_path, DOMAINS[:1])
    spec = json.loads((specs / DOMAINS[0] / "tool_behavior.json").read_text())
    spec["supported"], spec["reason"] = False, "tools call a live web service"
    (specs / DOMAINS[0] / "tool_behavior.json").write_text(json.dumps(spec))
    report = run_benchmark(data, specs=specs, agent=AGENTS["oracle"], agent_name="oracle")
    assert "tools call a live web service" in report["errors"][DOMAINS[0]]


@needs_data
def test_sop_bench__environments_are_eval_only_and_never_registered():
    env = SopBenchEnv(SHARED / DOMAINS[0])
    with pytest.raises(EvalOnlyError, match="SOP-Bench is licensed CC BY-NC 4.0"):
        ensure_trainable(env)
    env.close()
    registered = " ".join(
        str(spec.entry_point) + str(spec.kwargs) for spec in gym.registry.values()
    )
    assert "sop_bench" not in registered and all(d not in registered for d in DOMAINS)
    assert [d.name for d in discover_domains(SHARED)] == DOMAINS


@needs_data
def test_sop_bench__command_writes_the_report_and_prints_the_licence(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtrl_jax.cli",
            "sop-bench",
            "--data",
            str(SHARED),
            "--domains",
            ",".join(DOMAINS[:2]),
            "--limit",
            "3",
            "--agent",
            "oracle",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "CC BY-NC 4.0" in proc.stderr and "evaluation only" in proc.stderr
    report = json.loads(out.read_text())
    assert sorted(report["domains"]) == DOMAINS[:2] and report["macro"]["tsr"] == 1.0
    assert "macro" in proc.stdout and str(out) in proc.stdout


def _two_synthetic_domains(root: Path) -> Path:
    """``good`` plays cleanly; ``broken`` has a plan step that wrongly expects an error."""

    def wrong_expectation(b):
        b["oracle_plan"][0]["expect"] = "error"  # getOrder succeeds: the oracle asserts

    build_suite(root / "good")
    build_suite(root / "broken", edit=wrong_expectation)
    return root


def test_run_benchmark__an_oracle_error_fails_only_its_domain(tmp_path):
    data = _two_synthetic_domains(tmp_path / "data")
    report = run_benchmark(data, agent=AGENTS["oracle"], agent_name="oracle")
    assert sorted(report["domains"]) == ["broken", "good"]
    good, broken = report["domains"]["good"], report["domains"]["broken"]
    assert good["error"] is None and good["tasks"] == 3 and good["tsr"] == 1.0
    assert broken["error"]["type"] == "AssertionError"
    # Episodes run concurrently: whichever task fails first is the one reported.
    assert re.match(r"oracle on task '\d': getOrder\(", broken["error"]["message"])
    # Nothing was scored: no count or rate pretends otherwise.
    assert all(broken[k] is None for k in ("tasks", "completed", "correct", "tsr", "ecr"))
    assert broken["sha256"] == good["sha256"]  # provenance is still recorded
    assert report["errors"] == {"broken": f"AssertionError: {broken['error']['message']}"}
    assert report["macro"]["tsr"] == 1.0  # the macro average covers the domains that ran


def test_sop_bench_cli__a_failed_domain_exits_non_zero_after_writing_the_report(tmp_path, capsys):
    from mtrl_jax import cli

    data = _two_synthetic_domains(tmp_path / "data")
    out = tmp_path / "report.json"
    argv = ["sop-bench", "--data", str(data), "--agent", "oracle", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code not in (0, None)
    report = json.loads(out.read_text())
    assert sorted(report["domains"]) == ["broken", "good"]
    assert report["domains"]["broken"]["error"]["type"] == "AssertionError"
    captured = capsys.readouterr()
    assert "broken" in captured.out and "AssertionError" in captured.out
    assert "good" in captured.out and "Traceback" not in captured.err
