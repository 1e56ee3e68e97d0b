import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
_PATH = Path(__file__).resolve().parents[1] / "scripts" / "probe_decision.py"
_SPEC = importlib.util.spec_from_file_location("probe_decision", _PATH)
probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe)


def test_probe__summary_by_class_matches_a_hand_count():
    # Two lost tasks (true: refund) and one moving task (true: wait).
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.4, 0.2, 0.2], [0.25, 0.25, 0.2, 0.3]])
    out = probe.summarise(probs, ["refund", "refund", "wait"])
    assert out["p_true"] == pytest.approx((0.7 + 0.2 + 0.3) / 3, abs=1e-3)
    assert out["argmax_ok"] == pytest.approx(2 / 3, abs=1e-3)
    assert out["lost"]["n"] == 2 and out["lost"]["argmax_ok"] == 0.5
    assert out["lost"]["mean_probs"]["credit"] == pytest.approx(0.25)
    assert out["moving"]["p_true"] == pytest.approx(0.3)
    assert "late-gold" not in out


def test_probe__answer_probs_match_a_numpy_softmax_over_final_message_scores():
    import jax.numpy as jnp

    logits = np.random.default_rng(0).normal(size=(8, 6, 5)).astype(np.float32)
    tokens = np.random.default_rng(1).integers(0, 5, size=(8, 6)).astype(np.int32)
    mask = np.zeros((8, 6), np.float32)
    mask[:, 3:] = 1  # the final message: tokens 3..5, scored from positions 2..4

    def model(t):
        return jnp.asarray(logits)[: t.shape[0]]

    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    scores = (picked * mask[:, 1:]).sum(-1).reshape(2, 4)
    want = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    got = probe.answer_probs(model, tokens, mask, chunk=8)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_probe__candidate_rows_differ_only_in_the_scored_action(tmp_path):
    import csv
    import json

    from mtrl_jax.models.make_default import build_default
    from mtrl_jax.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(build_default(tmp_path / "default"))
    tokens, mask, truths = probe.candidate_batch(tokenizer, "test", 3)
    data = Path(__file__).resolve().parents[1] / "envs" / "suites" / "quickstart" / "data"
    with open(data / "tasks.csv", newline="") as f:
        want = [row["action"] for row in csv.DictReader(f) if row["split"] == "test"][:3]
    assert truths == want
    assert tokens.shape[0] == mask.shape[0] == 4 * len(truths)
    for task in range(len(truths)):
        rows = range(4 * task, 4 * task + 4)
        starts = {int(np.argmax(mask[i])) for i in rows}
        assert len(starts) == 1  # the same context before the final message
        (start,) = starts
        assert all((tokens[i, :start] == tokens[4 * task, :start]).all() for i in rows)
        for i, action in zip(rows, probe.ACTIONS, strict=True):
            scored = tokens[i, mask[i] > 0].tolist()
            assert scored[-1] == tokenizer.eos_token_id
            text = tokenizer.decode(scored[:-1])
            answer = json.loads(text.split("<final_output>")[1].split("</final_output>")[0])
            assert answer["action"] == action
            assert (tokens[i, len(scored) + start :] == 0).all()  # padding after the row
