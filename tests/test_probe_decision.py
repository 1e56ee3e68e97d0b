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


def test_probe__answer_probs_normalise_final_message_scores():
    class Uniform:  # every token equally likely: the four candidates tie
        def __call__(self, tokens):
            import jax.numpy as jnp

            return jnp.zeros((*tokens.shape, 8))

    tokens = np.ones((8, 5), np.int32)
    mask = np.zeros((8, 5), np.float32)
    mask[:, 3:] = 1
    np.testing.assert_allclose(probe.answer_probs(Uniform(), tokens, mask), 0.25, atol=1e-6)
