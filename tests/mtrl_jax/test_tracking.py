"""Tests of MLflow tracking: everything is read back from a local SQLite store in tmp_path."""

from __future__ import annotations

import json
import logging
import math
import os

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from mtrl_gym import EvalOnlyError
from mtrl_jax.tracking import MlflowTracker, NullTracker, make_tracker
from mtrl_jax.trajectory import TrajectoryRecord, read_trajectories


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path, monkeypatch):
    # Anything that fell back to MLflow's global state would land in tmp_path, never ./mlruns;
    # the tests check that the tracker restores this state untouched.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'stray.db'}")


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    # One database for the module: creating a SQLite store costs seconds on this machine.
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def make_tracker_in(store_uri, tmp_path, **kwargs):
    kwargs.setdefault("experiment", "tests")
    return MlflowTracker(tracking_uri=store_uri, run_name="t", run_dir=tmp_path / "run", **kwargs)


def make_record(**overrides):
    # Two turns: turn 0 samples tokens 3..6 and calls add (ok) and mul (error); turn 1 samples
    # token 8 and answers. Sampled logprobs: turn 0 mean (-0.5 - 1 - 1.5) / 3 = -1.0.
    fields = {
        "task_id": "q1",
        "group_id": "0:0:q1",
        "messages": [
            {"role": "system", "content": "You are a calculator."},
            {"role": "user", "content": "40 + 2?"},
            {
                "role": "assistant",
                "content": "<tool_call>add</tool_call><tool_call>mul</tool_call>",
            },
            {"role": "tool", "content": "42", "tool_call_id": "call_1_0", "name": "add"},
            {"role": "tool", "content": "Error: no mul", "tool_call_id": "call_1_1", "name": "mul"},
            {"role": "assistant", "content": '<final_output>{"answer": 42}</final_output>'},
        ],
        "tokens": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "loss_mask": [0, 0, 0, 1, 1, 1, 0, 0, 1, 0],
        "logprobs": [0, 0, 0, -0.5, -1.0, -1.5, 0, 0, -0.25, 0],
        "sampling_logprobs": [0] * 10,
        "policy_version": [-1, -1, -1, 2, 2, 2, -1, -1, 3, -1],
        "turn_spans": [(3, 6), (8, 9)],
        "reward": 1.0,
        "eval": {"success": True},
        "final_answer": {"answer": 42},
        "tool_calls": [
            {
                "id": "call_1_0",
                "name": "add",
                "arguments": {"a": 40, "b": 2},
                "result": "42",
                "error": None,
            },
            {
                "id": "call_1_1",
                "name": "mul",
                "arguments": {"a": 1},
                "result": None,
                "error": "no mul",
            },
        ],
        "timings": {"episode_s": 1.0, "sample_s": 0.4, "env_s": 0.2},
        "advantage": 0.5,
    }
    fields.update(overrides)
    return TrajectoryRecord(**fields)


def test_mlflow_tracker__params_arrive_flattened_and_long_values_are_cut(store_uri, tmp_path):
    tracker = make_tracker_in(store_uri, tmp_path)
    long_key = "k" * 300
    params = {
        "model": {"d_model": 64, "layers": [1, 2]},
        "name": "run",
        "note": "a" * 2000,
        long_key: None,
        "many": {f"p{i}": i for i in range(150)},  # more than one log_batch (100 params)
        "a*b": 1,
        "a?b": 2,  # both become "a_b" (MLflow refuses * and ?); the first one stays
    }
    tracker.log_params(params)
    tracker.close()
    logged = MlflowClient(store_uri).get_run(tracker.run_id).data.params
    assert logged["model.d_model"] == "64" and logged["model.layers"] == "[1, 2]"
    assert logged["name"] == "run" and logged["many.p149"] == "149"
    assert len(logged) == 6 + 150 and logged["a_b"] == "1"
    note = logged["note"]
    assert (
        len(note) == 500 and note.startswith("a" * 400) and note.endswith("[truncated 2000 chars]")
    )
    (cut_key,) = [k for k in logged if k.startswith("kkk")]
    assert len(cut_key) == 250 and logged[cut_key] == "null"
    path = mlflow.artifacts.download_artifacts(
        run_id=tracker.run_id, artifact_path="params.json", tracking_uri=store_uri
    )
    with open(path) as f:
        full = json.load(f)
    assert full["note"] == "a" * 2000 and full[long_key] == "null"


def test_mlflow_tracker__metrics_arrive_at_steps_and_non_finite_are_counted(
    store_uri, tmp_path, caplog
):
    tracker = make_tracker_in(store_uri, tmp_path)
    tracker.log_metrics({"loss/policy": 0.5, "rollout/return_mean": np.float32(1.25)}, step=0)
    tracker.log_metrics({"loss/policy": 0.25}, step=3)
    with caplog.at_level(logging.WARNING, logger="mtrl_jax.tracking"):
        tracker.log_metrics({"loss/kl": math.nan, "perf/x": -math.inf, "loss/policy": 0.125}, 5)
    assert "loss/kl" in caplog.text and "perf/x" in caplog.text
    with pytest.raises(TypeError, match="loss/bad"):
        tracker.log_metrics({"loss/bad": "high"}, step=6)
    with pytest.raises(ValueError, match="step"):
        tracker.log_metrics({"loss/policy": 1.0}, step=-1)
    tracker.close()
    client = MlflowClient(store_uri)
    history = client.get_metric_history(tracker.run_id, "loss/policy")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (3, 0.25), (5, 0.125)]
    (ret,) = client.get_metric_history(tracker.run_id, "rollout/return_mean")
    assert (ret.step, ret.value) == (0, 1.25)
    assert client.get_metric_history(tracker.run_id, "loss/kl") == []
    (count,) = client.get_metric_history(tracker.run_id, "tracking/nonfinite_metrics")
    assert (count.step, count.value) == (5, 2.0)


def spans_by_type(trace):
    out = {}
    for span in trace.data.spans:
        out.setdefault(span.span_type, []).append(span)
    return out


def test_mlflow_tracker__logs_one_trace_per_episode_with_turn_and_tool_spans(store_uri, tmp_path):
    tracker = make_tracker_in(store_uri, tmp_path)
    # Record 2: one turn, status format_error. call_1_0 has no tool message (found by its id);
    # call_9_0 names a turn that does not exist (kept under the root span).
    other = make_record(
        task_id="q2",
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "oops"}],
        turn_spans=[(3, 6)],
        status="format_error",
        eval=None,
        advantage=None,
        timings={},
        tool_calls=[
            {"id": "call_1_0", "name": "add", "arguments": {}, "result": "0", "error": None},
            {"id": "call_9_0", "name": "add", "arguments": {}, "result": "0", "error": None},
        ],
    )
    env_before = os.environ["MLFLOW_TRACKING_URI"]
    tracker.log_episodes([make_record(), other], step=7)
    assert os.environ["MLFLOW_TRACKING_URI"] == env_before == mlflow.get_tracking_uri()
    tracker.close()

    traces = MlflowClient(store_uri).search_traces(
        locations=[tracker.experiment_id], run_id=tracker.run_id
    )
    by_name = {t.info.tags["mlflow.traceName"]: t for t in traces}
    assert sorted(by_name) == ["episode/q1", "episode/q2"]
    trace = by_name["episode/q1"]
    assert trace.info.tags["mtrl.step"] == "7" and trace.info.tags["mtrl.tag"] == "train"
    assert trace.info.state.value == "OK" and by_name["episode/q2"].info.state.value == "ERROR"
    spans = spans_by_type(trace)
    (root,) = spans["AGENT"]
    assert root.inputs == {"messages": make_record().messages[:2]}
    assert root.outputs == {"final_answer": {"answer": 42}, "eval": {"success": True}}
    attrs = root.attributes
    assert (attrs["mtrl.task_id"], attrs["mtrl.group_id"], attrs["mtrl.status"]) == (
        "q1",
        "0:0:q1",
        "ok",
    )
    assert attrs["mtrl.reward"] == 1.0 and attrs["mtrl.eval_success"] is True
    assert attrs["mtrl.advantage"] == 0.5 and attrs["mtrl.num_turns"] == 2
    assert attrs["mtrl.num_tool_calls"] == 2

    turns = sorted(spans["CHAT_MODEL"], key=lambda s: s.attributes["mtrl.turn"])
    assert [s.name for s in turns] == ["turn 0", "turn 1"]
    assert all(s.parent_id == root.span_id for s in turns)
    assert turns[0].inputs == {"messages": make_record().messages[:2]}
    assert turns[1].inputs == {"messages": make_record().messages[:5]}
    assert turns[0].outputs == make_record().messages[2]["content"]
    assert turns[0].attributes["mtrl.sampled_tokens"] == 3
    assert turns[0].attributes["mtrl.logprob_mean"] == pytest.approx(-1.0)
    assert turns[1].attributes["mtrl.policy_version"] == 3

    tools = sorted(spans["TOOL"], key=lambda s: s.start_time_ns)
    assert [s.name for s in tools] == ["tool add", "tool mul"]
    assert all(s.parent_id == turns[0].span_id for s in tools)
    assert tools[0].inputs == {"a": 40, "b": 2} and tools[0].outputs == "42"
    assert tools[0].status.status_code.value == "OK"
    assert tools[1].outputs == {"error": "no mul"}
    assert tools[1].status.status_code.value == "ERROR"
    assert tools[1].status.description == "no mul"

    # Synthetic clock: sampled tokens 3 and 1 share sample_s = 0.4 s (0.3, 0.1); env_s = 0.2 s
    # is 0.1 per turn, 0.05 per tool call of turn 0. Root lasts episode_s = 1.0 s.
    def seconds(span):
        return (span.end_time_ns - span.start_time_ns) / 1e9

    assert seconds(root) == pytest.approx(1.0, abs=1e-6)
    assert [seconds(s) for s in turns] == pytest.approx([0.4, 0.2], abs=1e-6)
    assert [seconds(s) for s in tools] == pytest.approx([0.05, 0.05], abs=1e-6)
    assert turns[0].start_time_ns == root.start_time_ns
    assert turns[1].start_time_ns == turns[0].end_time_ns
    assert (tools[0].start_time_ns - turns[0].start_time_ns) / 1e9 == pytest.approx(0.3, abs=1e-6)

    spans2 = spans_by_type(by_name["episode/q2"])
    (root2,) = spans2["AGENT"]
    (turn2,) = spans2["CHAT_MODEL"]
    assert root2.status.description == "format_error"
    parents = sorted(s.parent_id == turn2.span_id for s in spans2["TOOL"])
    assert parents == [False, True]  # call_1_0 under turn 0, call_9_0 under the root


def test_mlflow_tracker__log_trajectories_writes_a_jsonl_artifact(store_uri, tmp_path):
    tracker = make_tracker_in(store_uri, tmp_path)
    records = [make_record(), make_record(task_id="q2")]
    path = tracker.log_trajectories(records, step=12)
    assert path == tmp_path / "run" / "trajectories" / "train" / "step_000012.jsonl"
    with pytest.raises(EvalOnlyError):
        tracker.log_trajectories([make_record(eval_only=True)], step=13)
    tracker.log_trajectories([make_record(eval_only=True)], step=13, tag="eval")
    with pytest.raises(ValueError, match="tag"):
        tracker.log_trajectories(records, step=12, tag="../escape")
    tracker.close()
    client = MlflowClient(store_uri)
    listed = [a.path for a in client.list_artifacts(tracker.run_id, "trajectories/train")]
    assert listed == ["trajectories/train/step_000012.jsonl"]
    local = mlflow.artifacts.download_artifacts(
        run_id=tracker.run_id, artifact_path=listed[0], tracking_uri=store_uri
    )
    assert [r.to_dict() for r in read_trajectories(local)] == [r.to_dict() for r in records]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "trajectories/eval")] == [
        "trajectories/eval/step_000013.jsonl"
    ]


def test_mlflow_tracker__close_marks_run_finished_or_failed(store_uri, tmp_path):
    client = MlflowClient(store_uri)
    tracker = make_tracker_in(store_uri, tmp_path)
    assert client.get_run(tracker.run_id).info.status == "RUNNING"
    tracker.close()
    tracker.close()  # a second close changes nothing
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    with pytest.raises(RuntimeError), make_tracker_in(store_uri, tmp_path) as failing:
        raise RuntimeError("training crashed")
    assert client.get_run(failing.run_id).info.status == "FAILED"
    with pytest.raises(ValueError, match="status"):
        make_tracker_in(store_uri, tmp_path).close("DONE")


def test_mlflow_tracker__resume_run_id_continues_the_same_run(store_uri, tmp_path, caplog):
    first = make_tracker_in(store_uri, tmp_path, experiment="resume")
    first.log_params({"lr": 0.1})
    first.log_metrics({"loss/policy": 1.0}, step=0)
    first.close("FAILED")  # e.g. preempted
    resumed = make_tracker_in(store_uri, tmp_path, experiment="resume", resume_run_id=first.run_id)
    client = MlflowClient(store_uri)
    assert resumed.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    with caplog.at_level(logging.WARNING, logger="mtrl_jax.tracking"):
        resumed.log_params({"lr": 0.2, "steps": 10})  # MLflow refuses to change a param
    assert "lr" in caplog.text
    resumed.log_metrics({"loss/policy": 0.5}, step=1)
    resumed.close()
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1", "steps": "10"}
    history = client.get_metric_history(first.run_id, "loss/policy")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]
    exp = client.get_experiment_by_name("resume")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [first.run_id]


def test_mlflow_tracker__default_store_lives_under_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    tracker = make_tracker(
        True, tracking_uri=None, experiment="local", run_name="r", run_dir=run_dir
    )
    tracker.log_metrics({"loss/policy": 1.0}, step=0)
    tracker.log_episodes([make_record()], step=0)
    tracker.log_text("hello", "notes/hello.txt")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "meta.json").write_text("{}")
    tracker.log_artifact(tmp_path / "ckpt", "checkpoints")
    tracker.log_artifact(tmp_path / "ckpt" / "meta.json")
    tracker.close()
    (tmp_path / "ckpt" / "meta.json").unlink()
    (tmp_path / "ckpt").rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing in the cwd
    assert (run_dir / "mlflow.db").is_file()
    assert (run_dir / "mlartifacts").is_dir()
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    listed = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert listed == {"checkpoints", "meta.json", "notes"}
    (trace,) = client.search_traces(locations=[tracker.experiment_id], run_id=tracker.run_id)
    assert len(spans_by_type(trace)["CHAT_MODEL"]) == 2


def test_make_tracker__disabled_gives_a_null_tracker_that_does_nothing(tmp_path):
    tracker = make_tracker(False, run_dir=tmp_path / "run")
    assert isinstance(tracker, NullTracker) and tracker.run_id is None
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss/policy": math.nan}, step=0)
    tracker.log_episodes([make_record()], step=0)
    assert tracker.log_trajectories([make_record()], step=0) is None
    tracker.log_artifact(tmp_path / "missing.txt")
    tracker.log_dict({"a": 1}, "a.json")
    tracker.log_text("x", "x.txt")
    with tracker:
        pass
    assert list(tmp_path.iterdir()) == []


def test_make_tracker__episode_and_trajectory_switches(store_uri, tmp_path):
    tracker = make_tracker(
        True,
        tracking_uri=store_uri,
        experiment="switches",
        run_dir=tmp_path / "run",
        log_episodes=False,
        log_trajectories=False,
    )
    assert isinstance(tracker, MlflowTracker)
    tracker.log_episodes([make_record()], step=0)
    assert tracker.log_trajectories([make_record()], step=0) is None
    tracker.close()
    client = MlflowClient(store_uri)
    assert len(client.search_traces(locations=[tracker.experiment_id])) == 0
    assert client.list_artifacts(tracker.run_id) == []
