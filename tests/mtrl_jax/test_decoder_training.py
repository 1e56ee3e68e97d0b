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


def test_decoder_training__packed_equals_unpacked_and_a_step_updates_params():
    model = Decoder(DecoderConfig.from_hf(HF), rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(model, CFG)
    trajs = trajectories()
    pcfg = PackingConfig(seq_len=32)
    packed, packed_info = pack_trajectories(trajs, pcfg)
    padded, padded_info = pad_trajectories(trajs, pcfg)
    assert packed.tokens.shape[0] < padded.tokens.shape[0]
    packed, padded = (jax.tree.map(jnp.asarray, b) for b in (packed, padded))

    logprob = make_logprob_fn(graphdef, chunk_size=16)
    lp_packed = unpack(np.asarray(logprob(state.params, state.rest, packed)), packed_info)
    lp_padded = unpack(np.asarray(logprob(state.params, state.rest, padded)), padded_info)
    for a, b in zip(lp_packed, lp_padded, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    grad_fn = make_grad_fn(graphdef, CFG)
    g_packed, m_packed = grad_fn(state, packed)
    g_padded, m_padded = grad_fn(state, padded)
    np.testing.assert_allclose(m_packed["loss/total"], m_padded["loss/total"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_padded), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)

    before = [np.asarray(x).copy() for x in jax.tree.leaves(state.params)]
    new_state, metrics = make_train_step(graphdef, CFG)(state, packed)
    assert np.isfinite(float(metrics["loss/total"])) and int(new_state.step) == 1
    after = jax.tree.leaves(new_state.params)
    assert any(not np.allclose(a, np.asarray(b)) for a, b in zip(before, after, strict=True))
