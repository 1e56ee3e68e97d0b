"""Tests of the evaluation summary and report against hand-computed and brute-force references."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from mtrl_jax.evaluation import format_summary, summarize, write_report
from mtrl_jax.trajectory import TrajectoryRecord, read_trajectories


def make_record(
    task_id="t",
    *,
    success=True,
    status="ok",
    reward=None,
    turns=1,
    calls=(),
    n=6,
    sampled=2,
    index=0,
    eval_extra=None,
    evaluated=True,
):
    """An episode of ``n`` tokens, the last ``sampled`` of them sampled, with ``turns`` spans."""
    mask = [0] * (n - sampled) + [1] * sampled
    spans = [(n - sampled, n)] * turns  # only the count of spans matters here
    evaluation = {"success": success, **(eval_extra or {})} if evaluated else None
    return TrajectoryRecord(
        task_id=task_id,
        group_id=f"0:{task_id}",
        sample_index=index,
        tokens=np.arange(n),
        loss_mask=mask,
        logprobs=np.zeros(n),
        sampling_logprobs=np.zeros(n),
        policy_version=[-1 if m == 0 else 0 for m in mask],
        turn_spans=spans,
        reward=float(success) if reward is None else reward,
        eval=evaluation,
        status=status,
        tool_calls=[
            {"id": f"c{i}", "name": "f", "arguments": {}, "result": None if e else "x", "error": e}
            for i, e in enumerate(calls)
        ],
        timings={"episode_s": 0.5},
    )


def brute_force_pass_at_k(outcomes, k):
    """Fraction of the k-subsets of ``outcomes`` (0/1) that hold at least one success."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_summarize__pass_at_k_matches_subset_enumeration():
    outcomes = {"a": [1, 0, 0, 1, 0], "b": [0, 0, 0], "c": [1, 1, 0, 0, 0, 0, 1], "d": [1, 0]}
    records = [
        make_record(task, success=bool(s), index=i)
        for task, seq in outcomes.items()
        for i, s in enumerate(seq)
    ]
    summary = summarize(records, ks=(3, 1, 2, 3))
    assert summary["ks"] == [1, 2, 3]
    for k in (1, 2, 3):
        eligible = [seq for seq in outcomes.values() if len(seq) >= k]
        want = np.mean([brute_force_pass_at_k(seq, k) for seq in eligible])
        entry = summary["pass_at_k"][str(k)]
        assert entry["value"] == pytest.approx(want, abs=1e-12)
        assert entry["tasks"] == len(eligible)
        assert entry["tasks_excluded"] == 4 - len(eligible)  # k = 3 leaves out "d" (n = 2)
        for row in summary["per_task"]:
            seq = outcomes[row["task_id"]]
            got = row["pass_at_k"][str(k)]
            if len(seq) >= k:
                assert got == pytest.approx(brute_force_pass_at_k(seq, k), abs=1e-12)
            else:
                assert got is None
    # pass@1 averages per-task fractions: (2/5 + 0 + 3/7 + 1/2) / 4; success_rate pools 6/17.
    assert summary["pass_at_k"]["1"]["value"] == pytest.approx((2 / 5 + 3 / 7 + 1 / 2) / 4)
    assert summary["success_rate"] == pytest.approx(6 / 17)


def test_summarize__infra_failures_are_excluded_and_counted():
    records = [
        make_record("a", success=True, reward=1.0),
        make_record("a", success=True, reward=0.5),
        make_record("a", success=False, status="infra_error", reward=0.0, calls=["boom"]),
        make_record("a", success=False, status="timeout", reward=0.0, turns=9),
        make_record("b", success=False, reward=0.0),
    ]
    summary = summarize(records, ks=(1, 3))
    assert summary["episodes"] == 5 and summary["valid_episodes"] == 3
    assert summary["infra_failures"] == 2 and summary["infra_failure_rate"] == pytest.approx(0.4)
    assert summary["success_rate"] == pytest.approx(2 / 3)  # not 2 / 5
    assert summary["reward_mean"] == pytest.approx(0.5)  # (1 + 0.5 + 0) / 3
    assert summary["turns_mean"] == 1.0 and summary["tool_calls"] == 0
    assert summary["status_counts"] == {"infra_error": 1, "ok": 3, "timeout": 1}
    assert summary["samples_per_task"] == {"min": 1, "max": 4}
    row_a = summary["per_task"][0]
    assert row_a == {
        "task_id": "a",
        "n": 2,
        "infra_failures": 2,
        "successes": 2,
        "success_rate": 1.0,
        "reward_mean": 0.75,
        "pass_at_k": {"1": 1.0, "3": None},
    }
    assert summary["pass_at_k"]["1"]["value"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert summary["pass_at_k"]["3"] == {"value": None, "tasks": 0, "tasks_excluded": 2}


def test_summarize__tool_error_format_error_and_truncation_rates():
    records = [
        make_record("a", calls=[None, "unknown tool g", None], turns=3),
        make_record("a", calls=[None], status="format_error", success=False, turns=2),
        make_record("b", calls=["invalid arguments", ""], status="truncated", success=False),
        make_record("b", calls=[], turns=4),
        make_record("b", calls=["tool failed"], status="infra_error", success=False),  # ignored
    ]
    summary = summarize(records)
    # Valid calls: 3 + 1 + 2 + 0 = 6, errors 1 + 0 + 2 (an empty message is still an error).
    assert summary["tool_calls"] == 6 and summary["tool_errors"] == 3
    assert summary["tool_error_rate"] == pytest.approx(0.5)
    assert summary["tool_calls_mean"] == pytest.approx(6 / 4)
    assert summary["format_error_rate"] == pytest.approx(1 / 4)
    assert summary["truncation_rate"] == pytest.approx(1 / 4)
    assert summary["turns_mean"] == pytest.approx((3 + 2 + 1 + 4) / 4)
    assert summary["turns_median"] == pytest.approx(2.5)


def test_summarize__tokens_eval_fields_and_task_id_fallback():
    records = [
        make_record("z", n=10, sampled=4, eval_extra={"score": 0.5, "name_ok": True}),
        make_record("z", n=6, sampled=1, eval_extra={"score": 1.0, "name_ok": False}),
        make_record(None, n=5, sampled=5, evaluated=False),
        make_record("z", n=7, sampled=3, status="infra_error", success=False),
    ]
    summary = summarize(records)
    assert summary["tokens"] == {
        "prompt_mean": pytest.approx((6 + 5 + 0) / 3),
        "sampled_mean": pytest.approx((4 + 1 + 5) / 3),
        "total": 10 + 6 + 5 + 7,  # the cost: failures included
    }
    assert summary["eval_means"] == {"name_ok": 0.5, "score": 0.75}
    assert summary["episodes_without_eval"] == 1
    # The task without an id is keyed by its group id; rows are sorted by key.
    assert [row["task_id"] for row in summary["per_task"]] == ["0:None", "z"]
    assert summary["per_task"][0]["successes"] == 0  # no evaluation: not a success
    assert summary["episode_s_mean"] == pytest.approx(0.5)


def test_summarize__deterministic_under_permutation_and_json_serialisable():
    records = [
        make_record(t, success=s, index=i)
        for i, (t, s) in enumerate(itertools.product("cab", (True, False, False)))
    ]
    a = summarize(records, ks=(1, 2))
    b = summarize(records[::-1], ks=(2, 1))
    assert json.dumps(a) == json.dumps(b)
    assert json.loads(json.dumps(a, allow_nan=False)) == a


def test_summarize__bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="at least one episode"):
        summarize([])
    for ks in ((), (0,), (1.5,), 2, (True,)):
        with pytest.raises(ValueError, match="k"):
            summarize([make_record()], ks=ks)
    with pytest.raises(ValueError, match="non-finite reward"):
        summarize([make_record(reward=float("nan"))])


def test_summarize__k_above_every_task_size_is_reported_as_none():
    records = [make_record("a"), make_record("a", success=False), make_record("b")]
    summary = summarize(records, ks=(1, 5))
    assert summary["pass_at_k"]["5"] == {"value": None, "tasks": 0, "tasks_excluded": 2}
    assert summary["pass_at_k"]["1"]["value"] == pytest.approx((0.5 + 1.0) / 2)
    assert "pass@5: n/a (2 tasks with n < 5 left out)" in format_summary(summary)


def test_summarize__all_infra_failures_give_none_rates():
    summary = summarize([make_record(status="timeout", success=False)], ks=(1,))
    assert summary["valid_episodes"] == 0 and summary["tasks_scored"] == 0
    for name in ("success_rate", "reward_mean", "turns_mean", "tool_error_rate", "truncation_rate"):
        assert summary[name] is None
    assert summary["pass_at_k"]["1"]["value"] is None
    assert "success rate: n/a" in format_summary(summary)


def test_write_report__writes_files_that_round_trip_and_link_existing_plots(tmp_path):
    records = [
        make_record(f"task{i:02d}", success=s, index=j, turns=1 + j, reward=0.25 * j)
        for i in range(12)
        for j, s in enumerate((i % 3 == 0, True, False))
    ]
    summary = summarize(records, ks=(1, 2))
    meta = {"model": "tiny|lm", "checkpoint": "step_10", "env": "mtrl/Sop-v0", "samples": 3}
    paths = write_report(
        summary, records, tmp_path / "out", title="Eval X", meta=meta, max_task_rows=5
    )
    assert json.loads(paths["summary"].read_text()) == summary
    back = read_trajectories(paths["episodes"])
    assert [r.to_dict() for r in back] == [r.to_dict() for r in records]
    text = paths["report"].read_text()
    assert text.startswith("# Eval X\n")
    assert "| model | tiny\\|lm |" in text and "| checkpoint | step_10 |" in text
    # Success 16/36, pass@1 = mean over tasks (4 tasks 2/3, 8 tasks 1/3) = 4/9 too.
    assert "| success rate | 44.4% |" in text
    assert "| pass@1 | 0.4444 | 12 | 0 |" in text
    assert "| pass@2 |" in text and "| ok | 36 |" in text
    assert "| task00 | 3 | 0 | 2 |" in text and "task05" not in text
    assert "7 more tasks omitted" in text
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(linked) == ["reward_hist.png", "success_by_task.png", "turns_hist.png"]
    for name in linked:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in paths.values()} == {
        *linked,
        "summary.json",
        "report.md",
        "episodes.jsonl",
    }
    # A rerun into the same folder replaces the episodes instead of appending to them.
    write_report(summary, records, tmp_path / "out", title="Eval X")
    assert len(read_trajectories(paths["episodes"])) == len(records)


def test_write_report__skips_plots_without_data_and_checks_its_summary(tmp_path):
    records = [make_record(status="infra_error", success=False)]
    summary = summarize(records)
    paths = write_report(summary, records, tmp_path, title="All failed", write_episodes=False)
    assert set(paths) == {"summary", "report"}
    assert "![" not in paths["report"].read_text() and not list(tmp_path.glob("*.png"))
    with pytest.raises(ValueError, match="summary covers 1 episodes but 2 records"):
        write_report(summary, records * 2, tmp_path, title="x")


def test_format_summary__mentions_headline_numbers():
    records = [make_record("a", calls=[None, "bad"]), make_record("b", success=False)]
    text = format_summary(summarize(records, ks=(1, 2)))
    assert "episodes: 2" in text and "success rate: 50.0%" in text
    assert "tool-error rate: 50.0%" in text and "pass@1: 0.5" in text
    assert "pass@2: n/a (2 tasks with n < 2 left out)" in text and "status: ok=2" in text


def test_evaluation__import_does_not_load_matplotlib():
    code = "import sys, mtrl_jax.evaluation; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
