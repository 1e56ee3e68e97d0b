"""The learner on the real decoder: packed rows train exactly like one trajectory per row."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtrl_jax.losses import LossConfig
from mtrl_jax.models import Decoder, DecoderConfig
from mtrl_jax.packing import PackingConfig, pack_trajectories, pad_trajectories, unpack
from mtrl_jax.train_step import (
    TrainConfig,
    init_train_state,
    make_grad_fn,
    make_logprob_fn,
    make_train_step,
)
from mtrl_jax.types import Trajectory

VOCAB = 64
HF = {
    "architectures": ["Qwen3ForCausalLM"],
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
CFG = TrainConfig(
    loss=LossConfig(policy_loss="cispo", is_correction="token", aggregation="seq-mean-token-mean"),
    chunk_size=16,
)


def trajectories(seed=0, count=6):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(4, 15))
        mask = (rng.random(n) < 0.7).astype(np.float32)
        mask[0] = 0.0
        out.append(
            Trajectory(
                tokens=rng.integers(0, VOCAB, n),
                loss_mask=mask,
                behaviour_logp=-rng.gamma(2.0, 1.0, n).astype(np.float32),
                advantages=float(rng.normal()),
                policy_version=i,
            )
        )
    return out


def assert_same_training(graphdef, state, batch, info, padded, padded_info):
    """Same per-trajectory log-probs, loss and gradient as one trajectory per row."""
    logprob = make_logprob_fn(graphdef, chunk_size=16)
    lp = unpack(np.asarray(logprob(state.params, state.rest, batch)), info)
    lp_padded = unpack(np.asarray(logprob(state.params, state.rest, padded)), padded_info)
    for a, b in zip(lp, lp_padded, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    grad_fn = make_grad_fn(graphdef, CFG)
    g, m = grad_fn(state, batch)
    g_padded, m_padded = grad_fn(state, padded)
    np.testing.assert_allclose(m["loss/total"], m_padded["loss/total"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(g_padded), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    return lp_padded


def test_decoder_training__packed_equals_unpacked_and_a_step_updates_params():
    model = Decoder(DecoderConfig.from_hf(HF), rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(model, CFG)
    trajs = trajectories()
    pcfg = PackingConfig(seq_len=32)
    packed, packed_info = pack_trajectories(trajs, pcfg)
    padded, padded_info = pad_trajectories(trajs, pcfg)
    assert packed.tokens.shape[0] < padded.tokens.shape[0]
    packed, padded = (jax.tree.map(jnp.asarray, b) for b in (packed, padded))
    assert_same_training(graphdef, state, packed, packed_info, padded, padded_info)

    before = [np.asarray(x).copy() for x in jax.tree.leaves(state.params)]
    new_state, metrics = make_train_step(graphdef, CFG)(state, packed)
    assert np.isfinite(float(metrics["loss/total"])) and int(new_state.step) == 1
    after = jax.tree.leaves(new_state.params)
    assert any(not np.allclose(a, np.asarray(b)) for a, b in zip(before, after, strict=True))


def prompt_trajectories(seed=0, prompts=(10, 7), per_prompt=3):
    """Trajectories that start with one of a few shared prompts (loss mask 0 on the prompt)."""
    rng = np.random.default_rng(seed)
    out = []
    for g, p in enumerate(prompts):
        prompt = rng.integers(0, VOCAB, p)
        for i in range(per_prompt):
            n = int(rng.integers(2, 9))
            mask = np.concatenate([np.zeros(p), (rng.random(n) < 0.7)]).astype(np.float32)
            mask[p] = 1.0
            out.append(
                Trajectory(
                    tokens=np.concatenate([prompt, rng.integers(0, VOCAB, n)]),
                    loss_mask=mask,
                    behaviour_logp=-rng.gamma(2.0, 1.0, p + n).astype(np.float32),
                    advantages=float(rng.normal()),
                    policy_version=g * per_prompt + i,
                )
            )
    return out


def test_decoder_training__shared_prefix_rows_equal_one_trajectory_per_row():
    """A prompt stored once (tree attention via parent ids) gives the same log-probs, loss and
    gradient as every trajectory alone in its row."""
    model = Decoder(DecoderConfig.from_hf(HF), rngs=nnx.Rngs(1))
    graphdef, state = init_train_state(model, CFG)
    trajs = prompt_trajectories() + trajectories(seed=3, count=2)
    shared, shared_info = pack_trajectories(trajs, PackingConfig(seq_len=32, share_prefix=3))
    padded, padded_info = pad_trajectories(trajs, PackingConfig(seq_len=32))
    assert shared_info.metrics["packing/shared_slots"] > 0
    assert shared.tokens.shape[0] < padded.tokens.shape[0]
    shared, padded = (jax.tree.map(jnp.asarray, b) for b in (shared, padded))
    lp_padded = assert_same_training(graphdef, state, shared, shared_info, padded, padded_info)

    # Without the parent ids the continuations would not see their prompt: a real difference.
    logprob = make_logprob_fn(graphdef, chunk_size=16)
    cut = shared.replace(parent_ids=None)
    lp_cut = unpack(np.asarray(logprob(state.params, state.rest, cut)), shared_info)
    assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(lp_cut, lp_padded, strict=True))
