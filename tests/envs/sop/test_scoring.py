"""Scoring rules 1-4, strict vs compatible, the reward/evaluator pair and the suite metrics."""

import math

import pytest

from mtrl_envs.sop import (
    SopEnv,
    SopReward,
    SopSuite,
    answer_fields,
    field_matches,
    is_null,
    macro_average,
    score_answer,
    suite_metrics,
)
from tests.envs.sop.synthetic import build_suite

NAN = float("nan")


@pytest.mark.parametrize(
    ("predicted", "expected", "strict", "compatible"),
    [
        # rule 1: the null class; both null match, one null does not
        (None, NAN, True, True),
        ("N/A", None, True, True),
        (" Unknown ", "", True, True),
        ("nan", "none", True, True),
        ("null", "x", False, False),
        ("x", NAN, False, False),
        (0, None, False, False),
        # rule 2: str(x).lower().strip()
        (" Shipped ", "shipped", True, True),
        (True, True, True, True),
        (True, "TRUE", True, True),
        (5, "5", True, True),
        (5, 5.0, False, True),  # "5" vs "5.0" are strings; "5" is inside "5.0"
        # rule 3: _ and - read as spaces
        ("in_progress", "IN-PROGRESS", True, True),
        ("in progress", "in_progress", True, True),
        ("in  progress", "in_progress", False, False),
        # rule 4, compatible only: containment either way, after rule 3's normalisation
        ("valid", "invalid", False, True),
        ("Account Closure", "closure", False, True),
        ("hazard-class-c", "Hazard Class C (severe)", False, True),
        ("approve", "escalate", False, False),
    ],
)
def test_field_matches__rules_one_to_four(predicted, expected, strict, compatible):
    assert field_matches(predicted, expected) is strict
    assert field_matches(predicted, expected, compatible=True) is compatible


def test_is_null__uses_the_string_form_of_any_value():
    assert is_null(None) and is_null(NAN) and is_null("NaN") and is_null("  n/a")
    assert not is_null([]) and not is_null(False) and not is_null("none of them")


def test_answer_fields__keys_case_insensitive_last_duplicate_wins_missing_left_out():
    answer = {"STATUS": "a", "Ok": True, "status": "b", "other": 1}
    assert answer_fields(answer, ["status", "ok", "final status"]) == {"status": "b", "ok": True}
    assert answer_fields(["status"], ["status"]) == {}


def test_score_answer__every_field_must_match_and_missing_fields_fail():
    expected = {"status": "shipped", "ok": None}
    good = score_answer({"Status": "SHIPPED", "ok": "null"}, expected)
    assert good.strict and good.compatible
    missing = score_answer({"status": "shipped"}, expected)  # ok left out, though expected null
    assert not missing.strict and missing.fields["ok"] == {
        "present": False,
        "strict": False,
        "compatible": False,
    }
    quirk = score_answer({"status": "shipped!", "ok": None}, expected)
    assert not quirk.strict and quirk.compatible


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return SopSuite.load(build_suite(tmp_path_factory.mktemp("scoring") / "suite"))


def finish(env, answer, index=0):
    env.reset(options={"task_index": index})
    return env.step(answer)


def test_sop_env__reward_is_strict_and_eval_reports_both_modes(suite):
    env = SopEnv(suite)
    _, reward, terminated, _, info = finish(
        env, '<final_output>{"STATUS": "Shipped", "ok": true}</final_output>'
    )
    assert terminated and reward == 1.0
    assert info["eval"] == {
        "success": True,
        "success_compatible": True,
        "fields": {
            "status": {"present": True, "strict": True, "compatible": True},
            "ok": {"present": True, "strict": True, "compatible": True},
        },
        "status": "ok",
        "tool_calls": 0,
        "tool_call_errors": 0,
    }
    _, reward, _, _, info = finish(
        env, '<final_output>{"status": "shipped!", "ok": "True"}</final_output>'
    )
    assert reward == 0.0 and not info["eval"]["success"] and info["eval"]["success_compatible"]
    compatible_env = SopEnv(suite, reward_fn=SopReward(compatible=True))
    _, reward, _, _, _ = finish(
        compatible_env, '<final_output>{"status": "shipped!", "ok": "True"}</final_output>'
    )
    assert reward == 1.0
    # Row 2 expects ok = NaN: an explicit null matches it.
    _, reward, _, _, _ = finish(
        env, '<final_output>{"status": "in progress", "ok": null}</final_output>', index=2
    )
    assert reward == 1.0


def test_sop_env__malformed_or_missing_answers_score_zero_and_count_tool_errors(suite):
    env = SopEnv(suite, max_turns=2)
    env.reset(options={"task_index": 0})
    env.step(
        env.format.render_calls(
            [("getOrder", {"order_id": "O-9"}), ("getStatus", {"order_id": "O-1"})]
        )
    )
    _, reward, terminated, _, info = env.step("<final_output>{oops</final_output>")
    assert terminated and reward == 0.0
    assert info["status"] == "format_error" and info["eval"]["success"] is False
    assert info["eval"]["tool_calls"] == 2 and info["eval"]["tool_call_errors"] == 1
    assert info["eval"]["fields"]["status"]["present"] is False
    env.reset(options={"task_index": 0})
    env.step("thinking")
    _, reward, terminated, truncated, info = env.step("still thinking")
    assert truncated and not terminated and reward == 0.0 and info["status"] == "truncated"


def test_suite_metrics__tsr_ecr_ctsr_and_tool_call_success_rate():
    def result(status, success, compatible, calls, errors):
        return {
            "status": status,
            "eval": {
                "success": success,
                "success_compatible": compatible,
                "tool_calls": calls,
                "tool_call_errors": errors,
            },
        }

    results = [
        result("ok", True, True, 4, 0),
        result("ok", False, True, 3, 1),
        result("format_error", False, False, 2, 0),
        result("truncated", False, False, 10, 5),
        {"status": "timeout", "eval": None},
    ]
    m = suite_metrics(results)
    assert (m["tasks"], m["completed"], m["correct"], m["correct_compatible"]) == (5, 3, 1, 2)
    assert m["tsr"] == 0.2 and m["tsr_compatible"] == 0.4 and m["ecr"] == 0.6
    assert m["ctsr"] == pytest.approx(1 / 3) and m["ctsr_compatible"] == pytest.approx(2 / 3)
    assert m["tool_calls"] == 19 and m["tool_call_success_rate"] == pytest.approx(13 / 19)
    empty = suite_metrics([result("truncated", False, False, 0, 0)])
    assert empty["ctsr"] is None and empty["tool_call_success_rate"] is None
    macro = macro_average({"a": m, "b": suite_metrics([result("ok", True, True, 1, 0)])})
    assert macro["tsr"] == pytest.approx(0.6) and macro["ctsr"] == pytest.approx((1 / 3 + 1) / 2)
    assert math.isclose(macro_average({"a": empty})["ecr"], 0.0)
    assert macro_average({"a": empty})["ctsr"] is None


def test_suite_metrics__reads_runner_results(suite):
    from mtrl_gym import EpisodeJob, EpisodeRunner

    env = SopEnv(suite)
    jobs = [
        EpisodeJob(
            env=lambda: SopEnv(suite),
            policy=lambda o, i: '<final_output>{"status": "shipped", "ok": true}</final_output>',
            options={"task_index": k},
        )
        for k in range(3)
    ]
    results = EpisodeRunner(max_concurrency=2).run_sync(jobs)
    m = suite_metrics(results)
    assert m["tasks"] == 3 and m["correct"] == 1 and m["ecr"] == 1.0
    env.close()
