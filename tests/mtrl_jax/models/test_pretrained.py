"""Checkpoint loading: both config layouts, and clear errors for what we cannot load."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from mtrl_jax.models import Decoder, DecoderConfig, RopeConfig, load_pretrained, save_pretrained
from tests.mtrl_jax.models.helpers import assert_same_params
from tests.mtrl_jax.test_decoder_training import HF

# The same llama3-scaled Llama config in the layout of published checkpoints (transformers 4)
# and in the one transformers 5 writes.
LEGACY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": True,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
}
V5 = {k: v for k, v in LEGACY.items() if k not in ("rope_theta", "rope_scaling")}
V5["rope_parameters"] = {**LEGACY["rope_scaling"], "rope_theta": 500000.0}


def test_decoder_config__both_rope_layouts_read_the_same():
    legacy, v5 = DecoderConfig.from_hf(LEGACY), DecoderConfig.from_hf(V5)
    assert legacy == v5
    assert legacy.rope == RopeConfig(
        theta=500000.0,
        kind="llama3",
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    assert legacy.head_dim == 64 and legacy.num_groups == 4 and legacy.tie_word_embeddings
    assert legacy.eos_token_id == (128001, 128008, 128009)
    # Older exports spell the scaling kind "type"; to_hf() writes both layouts and reads back.
    old = {**LEGACY, "rope_scaling": {"type": "linear", "factor": 4.0}}
    assert DecoderConfig.from_hf(old).rope == RopeConfig(theta=500000.0, kind="linear", factor=4.0)
    assert DecoderConfig.from_hf(legacy.to_hf()) == legacy


def test_load_pretrained__reads_legacy_config_layout(checkpoints, tmp_path):
    # transformers 5 wrote this checkpoint with rope_parameters; rewrite it the old way.
    src = checkpoints["llama3_untied"].path
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = params
    (tmp_path / "config.json").write_text(json.dumps(config))
    old, new = load_pretrained(tmp_path), load_pretrained(src)
    assert old.config == new.config and old.config.rope.kind == "llama3"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'"),
        ({"architectures": None, "model_type": "mistral"}, "model_type='mistral'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"num_attention_heads": None}, "missing 'num_attention_heads'"),
    ],
)
def test_decoder_config__rejects_what_it_cannot_run(changes, match):
    with pytest.raises(ValueError, match=match):
        DecoderConfig.from_hf({**LEGACY, **changes})


def _copy_with(src, dst, *, config=None, tensors=None):
    """Copies checkpoint ``src`` to ``dst``, editing config keys and/or the tensor dict."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
    if config is not None:
        hf = json.loads((src / "config.json").read_text()) | config
        (dst / "config.json").write_text(json.dumps(hf))
    if tensors is not None:
        weights = tensors(load_file(str(src / "model.safetensors")))
        save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_load_pretrained__unknown_architecture_is_a_clear_error(checkpoints, tmp_path):
    config = {"architectures": ["FalconForCausalLM"]}
    path = _copy_with(checkpoints["qwen2_tied"].path, tmp_path, config=config)
    with pytest.raises(ValueError, match="unsupported architecture 'FalconForCausalLM'"):
        load_pretrained(path)


def test_load_pretrained__mismatched_shape_names_the_tensor(checkpoints, tmp_path):
    name = "model.layers.1.self_attn.k_proj.weight"

    def shrink(weights):
        weights[name] = weights[name][:-1]
        return weights

    path = _copy_with(checkpoints["qwen3_untied"].path, tmp_path, tensors=shrink)
    with pytest.raises(ValueError, match=rf"tensor '{name}' has shape \(47, 64\).*\(48, 64\)"):
        load_pretrained(path)


def test_load_pretrained__config_disagreeing_with_weights_names_the_tensor(checkpoints, tmp_path):
    path = _copy_with(checkpoints["qwen3_untied"].path, tmp_path, config={"vocab_size": 100})
    with pytest.raises(ValueError, match="'model.embed_tokens.weight' has shape"):
        load_pretrained(path)


def test_load_pretrained__missing_and_unexpected_tensors_are_named(checkpoints, tmp_path):
    src = checkpoints["qwen2_tied"].path
    missing = "model.layers.0.self_attn.q_proj.bias"

    def drop(weights):
        del weights[missing]
        return weights

    with pytest.raises(ValueError, match=f"missing tensor '{missing}'"):
        load_pretrained(_copy_with(src, tmp_path / "a", tensors=drop))

    def add(weights):
        weights["model.layers.0.mlp.gate_proj.bias"] = np.zeros(112, np.float32)
        weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(8, np.float32)
        return weights

    with pytest.raises(ValueError, match=r"unexpected tensors: \['model.layers.0.mlp.gate_proj"):
        load_pretrained(_copy_with(src, tmp_path / "b", tensors=add))


def test_load_pretrained__tied_checkpoint_with_head_copy_and_missing_files(checkpoints, tmp_path):
    src = checkpoints["qwen2_tied"].path

    def add_head(weights):
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"].copy()
        return weights

    model = load_pretrained(_copy_with(src, tmp_path / "a", tensors=add_head))
    assert model.lm_head is None  # the copy of a tied head is ignored, not an error
    reference = load_pretrained(src)
    assert_same_params(model, reference)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(tmp_path / "empty")


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
@pytest.mark.parametrize("max_shard_bytes", [5 * 2**30, 20_000], ids=["one_file", "sharded"])
def test_save_pretrained__weights_files_follow_the_umask_like_config_json(
    tmp_path, umask, max_shard_bytes
):
    # safetensors alone writes 0600 whatever the umask: an exported folder other users could
    # read except for its weights.
    model = Decoder(DecoderConfig.from_hf(HF), rngs=nnx.Rngs(0))
    before = os.umask(umask)
    try:
        save_pretrained(model, tmp_path, max_shard_bytes=max_shard_bytes)
    finally:
        os.umask(before)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    weights = [n for n in modes if n.endswith(".safetensors")]
    assert (len(weights) > 1) == (max_shard_bytes == 20_000), weights
    assert set(modes.values()) == {0o666 & ~umask}, {n: oct(m) for n, m in modes.items()}
