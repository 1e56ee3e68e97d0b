import math

import pytest

from mtrl_gym import (
    EpisodeSummary,
    ExactMatchEvaluator,
    ExactMatchReward,
    FinalAnswer,
    FormatReward,
    Status,
    TagAnswerExtractor,
    Task,
    ToolCallPenalty,
    WeightedSum,
)
from mtrl_gym.evaluation import field_matches, json_equal


def summary(
    value=None, status=Status.OK, calls=0, invalid=0, format_errors=0, answer=None, error=None
):
    fa = None if value is None and error is None else FinalAnswer(raw="", value=value, error=error)
    return EpisodeSummary(
        task=Task(id="t", prompt="p", answer={"a": 1, "b": "x"} if answer is None else answer),
        status=status,
        final_answer=fa,
        tool_calls=tuple({} for _ in range(calls)),
        turns=1,
        invalid_tool_calls=invalid,
        format_errors=format_errors,
    )


@pytest.mark.parametrize(
    ("text", "value", "error"),
    [
        ('<final_output>{"a": 1}</final_output>', {"a": 1}, None),
        (
            'x <final_output>{"a": 1}</final_output> y <final_output>{"a": 2}</final_output>',
            {"a": 2},
            None,
        ),
        ('<final_output>\n```json\n{"a": 1}\n```\n</final_output>', {"a": 1}, None),
        (
            "<final_output>[1, 2]</final_output>",
            None,
            "final answer must be a JSON object, got list",
        ),
        ('<final_output>{"a": 1}', None, "final answer has no closing </final_output> tag"),
        (
            "<final_output>" + "[" * 100_000 + "</final_output>",
            None,
            "final answer is not valid JSON",
        ),
    ],
)
def test_tag_extractor__last_block_decoded(text, value, error):
    fa = TagAnswerExtractor()(text)
    assert fa.value == value
    assert (fa.error or "").startswith(error or "")
    assert (fa.error is None) == (error is None)


def test_tag_extractor__no_tag_means_no_answer_and_custom_tags():
    assert TagAnswerExtractor()("just text") is None
    assert TagAnswerExtractor("answer", require_object=False)("<answer>42</answer>").value == 42


def test_json_equal__strict_types():
    assert json_equal({"a": [1, 2.0, None]}, {"a": [1.0, 2, None]})
    assert not json_equal(True, 1) and not json_equal(0, False) and not json_equal("1", 1)
    assert not json_equal({"a": 1}, {"a": 1, "b": 2}) and not json_equal([1], [1, 1])
    assert json_equal(math.nan, math.nan)


def test_field_matches__missing_and_extra_fields():
    assert field_matches({"a": 1, "b": "x", "c": 0}, {"a": 1, "b": "x"}) == {"a": True, "b": True}
    assert field_matches({"a": "1"}, {"a": 1, "b": "x"}) == {"a": False, "b": False}
    assert field_matches(None, {"a": 1}) == {"a": False}
    assert field_matches(3, 3) == {"answer": True}


def test_rewards__exact_partial_format_penalty_and_sum():
    right, half = summary({"a": 1, "b": "x"}), summary({"a": 1, "b": "y"})
    assert ExactMatchReward()(right) == 1.0 and ExactMatchReward()(half) == 0.0
    assert ExactMatchReward(partial=True)(half) == 0.5
    assert ExactMatchReward()(summary({"a": 1, "b": "x"}, status=Status.TRUNCATED)) == 0.0
    assert FormatReward(0.2)(half) == 0.2
    assert FormatReward()(summary(error="bad", status=Status.FORMAT_ERROR)) == 0.0
    pen = ToolCallPenalty(per_call=0.01, per_invalid=0.1, max_penalty=0.25)
    assert pen(summary(calls=3, invalid=1, format_errors=1)) == pytest.approx(-0.23)
    assert pen(summary(calls=3, invalid=5)) == pytest.approx(-0.25)
    total = WeightedSum([(1.0, ExactMatchReward()), (0.1, FormatReward()), (1.0, pen)])
    assert total(summary({"a": 1, "b": "x"}, calls=2)) == pytest.approx(1.0 + 0.1 - 0.02)


def test_evaluator__independent_of_reward_shaping():
    ev = ExactMatchEvaluator()
    assert ev(summary({"a": 1, "b": "x"}, calls=9, invalid=9)) == {
        "success": True,
        "field_accuracy": 1.0,
        "fields": {"a": True, "b": True},
        "status": "ok",
    }
    assert ev(summary({"a": 1, "b": "y"}))["field_accuracy"] == 0.5
    out = ev(summary({"a": 1, "b": "x"}, status=Status.INFRA_ERROR))
    assert out["success"] is False and out["status"] == "infra_error"
    assert ev(summary({"z": 1}, answer={}))["success"] is True
