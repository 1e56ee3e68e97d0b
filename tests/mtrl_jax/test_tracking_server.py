"""Integration test: a real ``mlflow server`` on 127.0.0.1 receives runs, metrics and traces."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
from mlflow import MlflowClient

from mtrl_jax.tracking import MlflowTracker
from tests.mtrl_jax.test_tracking import make_record

pytestmark = pytest.mark.integration
START_TIMEOUT_S = 40.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    """Starts ``mlflow server`` in its own process group; yields its URI; always stops it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'stray.db'}")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so teardown stops the workers too
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"mlflow server did not answer /health within {START_TIMEOUT_S} s")
            time.sleep(0.25)
        yield uri
    finally:
        # start_new_session made the server the leader of group proc.pid: stop the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_mlflow_tracker__against_a_real_server(mlflow_server, tmp_path):
    tracker = MlflowTracker(
        tracking_uri=mlflow_server, experiment="server", run_name="int", run_dir=tmp_path / "run"
    )
    tracker.log_params({"algo": {"loss": "cispo"}, "note": "n" * 2000})
    tracker.log_metrics({"loss/policy": 0.5}, step=0)
    tracker.log_metrics({"loss/policy": 0.25, "rollout/return_mean": 1.0}, step=1)
    tracker.log_episodes([make_record(), make_record(task_id="q2")], step=1)
    tracker.log_trajectories([make_record()], step=1)
    tracker.close()

    client = MlflowClient(mlflow_server)  # a fresh client reads everything back over HTTP
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["algo.loss"] == "cispo" and len(run.data.params["note"]) == 500
    history = client.get_metric_history(tracker.run_id, "loss/policy")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.25)]
    traces = client.search_traces(locations=[tracker.experiment_id], run_id=tracker.run_id)
    assert sorted(t.info.tags["mlflow.traceName"] for t in traces) == ["episode/q1", "episode/q2"]
    for trace in traces:
        types = [s.span_type for s in trace.data.spans]
        assert types.count("CHAT_MODEL") == 2 and types.count("TOOL") == 2
    listed = [a.path for a in client.list_artifacts(tracker.run_id, "trajectories/train")]
    assert listed == ["trajectories/train/step_000001.jsonl"]
    local = mlflow.artifacts.download_artifacts(
        run_id=tracker.run_id, artifact_path=listed[0], tracking_uri=mlflow_server
    )
    with open(local) as f:
        assert len(f.readlines()) == 1
