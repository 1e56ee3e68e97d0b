"""Parity with transformers: logits, RoPE frequencies, save -> transformers load, bf16."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors import safe_open

from mtrl_jax.models import RopeConfig, load_pretrained, save_pretrained
from mtrl_jax.models.layers import rope_inv_freq
from tests.mtrl_jax.models.helpers import (
    VARIANTS,
    assert_same_params,
    max_rel_error,
    random_tokens,
    run_forward,
)

# T = 40 runs past the llama3 variant's original context (32), where its scaling matters.
TOKENS = random_tokens((2, 40), seed=1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_decoder__fp32_logits_match_transformers(checkpoints, variant):
    ckpt = checkpoints[variant]
    model = load_pretrained(ckpt.path, dtype=jnp.float32)
    ours = run_forward(model, TOKENS)
    ref = ckpt.reference_logits(TOKENS)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    err = max_rel_error(ours, ref)
    print(f"{variant}: max|ours - hf| / max|hf| = {err:.2e} (max|hf| = {np.abs(ref).max():.2f})")
    assert err < 1e-4


@pytest.mark.parametrize(
    "rope_parameters",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ],
)
def test_rope_inv_freq__matches_transformers(rope_parameters):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(
        hidden_size=2048,
        num_attention_heads=16,
        max_position_embeddings=131072,
        rope_parameters=rope_parameters,
    )
    kind = rope_parameters["rope_type"]
    if kind == "default":
        dim = 128
        ref = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    else:
        ref, scaling = ROPE_INIT_FUNCTIONS[kind](hf, "cpu")
        assert scaling == 1.0
    ours = rope_inv_freq(RopeConfig.from_hf(hf.to_dict()), 128)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    if kind == "llama3":  # all three regimes present: kept, blended, divided by the factor
        plain = rope_inv_freq(RopeConfig(theta=500000.0), 128)
        ratio = plain / ours
        assert np.isclose(ratio, 1.0).any() and np.isclose(ratio, 8.0).any()
        assert ((ratio > 1.01) & (ratio < 7.99)).any()


@pytest.mark.parametrize("variant", ["llama3_untied", "qwen2_tied", "qwen3_untied"])
def test_save_pretrained__transformers_loads_identical_weights(checkpoints, variant, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = checkpoints[variant]
    save_pretrained(load_pretrained(ckpt.path), tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(reloaded) is type(ckpt.torch_model)
    assert reloaded.config.tie_word_embeddings == ckpt.torch_model.config.tie_word_embeddings
    # float32 weights round-trip bit for bit, so transformers' logits are identical.
    with torch.no_grad():
        again = reloaded(torch.as_tensor(TOKENS, dtype=torch.long)).logits.numpy()
    np.testing.assert_array_equal(again, ckpt.reference_logits(TOKENS))


def test_save_pretrained__sharded_folder_loads_in_both(checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = checkpoints["qwen3_untied"]
    model = load_pretrained(ckpt.path)
    save_pretrained(model, tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        again = reloaded(torch.as_tensor(TOKENS, dtype=torch.long)).logits.numpy()
    np.testing.assert_array_equal(again, ckpt.reference_logits(TOKENS))
    assert_same_params(load_pretrained(tmp_path), model)


def test_decoder__bf16_forward_close_to_fp32(checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = checkpoints["qwen3_untied"]
    model = load_pretrained(ckpt.path, dtype="bfloat16")
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert {v[...].dtype for _, v in params} == {jnp.dtype(jnp.bfloat16)}
    ours = run_forward(model, TOKENS)
    assert ours.dtype == np.float32  # the head accumulates and returns float32
    ref = ckpt.reference_logits(TOKENS)
    # Tolerance: bf16 keeps 8 significant bits, unit roundoff u = 2^-8 = 3.9e-3. Weights,
    # matmul inputs and the residual stream are each rounded once per op (~10 roundings per
    # block, 2 blocks, plus the head); errors of random sign add in quadrature, so the *typical*
    # (RMS) logit error is about sqrt(25) u = 5u ~ 2e-2 of the RMS logit. The worst of the
    # 7680 logits sits a few standard deviations out, so the max error is instead bounded
    # against transformers' own bf16 forward of the same weights (measured: ours 2.3e-2, theirs
    # 2.4e-2 of max|logit|): independent bf16 implementations should agree on its size, and a
    # missing float32 upcast (norm, softmax, RoPE angles at position 39) would blow past both.
    rms = np.sqrt(np.mean((ours - ref) ** 2) / np.mean(ref**2))
    err = max_rel_error(ours, ref)
    hf_bf16 = AutoModelForCausalLM.from_pretrained(
        ckpt.path, dtype=torch.bfloat16, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        theirs = hf_bf16(torch.as_tensor(TOKENS, dtype=torch.long)).logits.float().numpy()
    print(f"bf16 vs fp32: rms {rms:.2e}, max {err:.2e} (transformers bf16 max: ", end="")
    print(f"{max_rel_error(theirs, ref):.2e})")
    assert rms < 2e-2
    assert err < 1.5 * max_rel_error(theirs, ref)
    # Saving a bf16 model writes bf16 tensors that transformers loads as bf16.
    save_pretrained(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="numpy") as f:
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path).dtype == torch.bfloat16
