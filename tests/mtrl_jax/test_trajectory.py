"""Tests of the trajectory record: JSONL round trip, eval-only refusal, learner conversion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtrl_gym import EvalOnlyError
from mtrl_jax.trajectory import TrajectoryRecord, TrajectoryWriter, read_trajectories


def make_record(**overrides):
    # Two samples (per_turn): [prompt 3, sampled 2] and [prompt 2, sampled 3].
    fields = {
        "task_id": "q1",
        "group_id": "0:0:q1",
        "sample_index": 2,
        "messages": [{"role": "user", "content": "héllo ✓"}, {"role": "assistant", "content": "x"}],
        "tokens": [5, 6, 7, 8, 9, 5, 6, 10, 11, 12],
        "loss_mask": [0, 0, 0, 1, 1, 0, 0, 1, 1, 1],
        "logprobs": np.array([0, 0, 0, -1 / 3, -0.1, 0, 0, -2.5, -1e-7, -7.0], np.float32),
        "sampling_logprobs": np.array([0, 0, 0, -0.3, -0.2, 0, 0, -2.4, -1e-6, -6.0], np.float32),
        "policy_version": [-1, -1, -1, 4, 4, -1, -1, 5, 5, 5],
        "turn_spans": [(3, 5), (7, 10)],
        "sample_starts": [0, 5],
        "reward": 1.0,
        "eval": {"success": True, "score": 0.75},
        "status": "ok",
        "final_answer": {"action": "refund"},
        "tool_calls": [
            {"id": "call_1_0", "name": "f", "arguments": {}, "result": "1", "error": None}
        ],
        "timings": {"episode_s": 0.125, "sample_s": 0.1, "env_s": 0.025},
        "mode": "per_turn",
        "advantage": 0.8,
    }
    fields.update(overrides)
    return TrajectoryRecord(**fields)


def test_trajectory_record__jsonl_round_trip_is_exact(tmp_path):
    records = [make_record(), make_record(sample_index=3, advantage=None, eval=None)]
    path = tmp_path / "rollouts" / "step_0.jsonl"
    with TrajectoryWriter(path) as writer:
        for record in records:
            writer.write(record)
    back = read_trajectories(path)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in records]
    for a, b in zip(back, records, strict=True):
        for name in ("tokens", "loss_mask", "logprobs", "sampling_logprobs", "policy_version"):
            got, want = getattr(a, name), getattr(b, name)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)  # bit-exact, float32 included
        assert a.turn_spans == b.turn_spans == [(3, 5), (7, 10)]
    line = json.loads(path.read_text().splitlines()[0])
    assert line["version"] == 1 and isinstance(line["tokens"], list)


def test_trajectory_writer__refuses_eval_only_unless_evaluation_output(tmp_path):
    record = make_record(eval_only=True)
    with TrajectoryWriter(tmp_path / "train.jsonl") as writer, pytest.raises(EvalOnlyError):
        writer.write(record)
    assert (tmp_path / "train.jsonl").read_text() == ""
    with TrajectoryWriter(tmp_path / "eval.jsonl", evaluation_output=True) as writer:
        writer.write(record)
    (back,) = read_trajectories(tmp_path / "eval.jsonl")
    assert back.eval_only
    with pytest.raises(EvalOnlyError):
        back.to_learner()


def test_trajectory_record__to_learner_splits_samples_and_weights_advantages():
    record = make_record()
    first, second = record.to_learner()
    # inverse_count: K = 2 samples, each with advantage 0.8 / 2.
    assert first.advantages == pytest.approx(0.4) and second.advantages == pytest.approx(0.4)
    assert first.tokens.tolist() == [5, 6, 7, 8, 9] and second.tokens.tolist() == [5, 6, 10, 11, 12]
    assert first.loss_mask.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(second.behaviour_logp, record.logprobs[5:])
    assert second.policy_version.tolist() == [-1, -1, 5, 5, 5]
    uniform = record.to_learner(sample_weighting="uniform")
    assert [t.advantages for t in uniform] == pytest.approx([0.8, 0.8])
    extended = make_record(sample_starts=[0], mode="extended").to_learner()
    assert len(extended) == 1 and extended[0].advantages == pytest.approx(0.8)
    empty = {k: [] for k in ("tokens", "loss_mask", "logprobs", "sampling_logprobs")}
    assert make_record(**empty, policy_version=[], turn_spans=[]).to_learner() == []
    with pytest.raises(ValueError, match="no advantage"):
        make_record(advantage=None).to_learner()


def test_trajectory_record__rejects_misaligned_arrays():
    with pytest.raises(ValueError, match="loss_mask"):
        make_record(loss_mask=[0, 1])
    with pytest.raises(ValueError, match="mode"):
        make_record(mode="chunked")
    with pytest.raises(ValueError, match="version"):
        TrajectoryRecord.from_dict({**make_record().to_dict(), "version": 99})
