"""Helpers for the model tests: tiny random HF checkpoints made locally, shared jitted functions.

Checkpoints are made once per session with transformers + torch (config -> random weights ->
``save_pretrained`` into a temporary folder); nothing touches the network. Weights are redrawn
with a larger scale than HF's 0.02 init (and norm scales around 1, non-zero biases) so every
tensor visibly affects the logits and a wrong mapping cannot hide.

Jitted functions take the model's graphdef as a static argument and its state as an array
pytree, so tests with the same model and shapes share one compiled program.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

VOCAB = 96
COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 112,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # Small on purpose: with head_dim 16 and theta 1e4 the wavelengths (6.3 .. 2e4) then fall
    # in all three llama3 regimes (kept, blended, divided by the factor).
    "original_max_position_embeddings": 32,
}
# name -> (transformers config class, extra config kwargs)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama3_untied": ("LlamaConfig", {"rope_scaling": LLAMA3_ROPE, "tie_word_embeddings": False}),
    "llama_linear_bias_tied": (
        "LlamaConfig",
        {
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
            "attention_bias": True,
            "tie_word_embeddings": True,
        },
    ),
    "qwen2_tied": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen2_untied": ("Qwen2Config", {"tie_word_embeddings": False}),
    # head_dim 24 != hidden / heads = 16, as in Qwen3 checkpoints.
    "qwen3_untied": ("Qwen3Config", {"head_dim": 24, "tie_word_embeddings": False}),
    "qwen3_tied": ("Qwen3Config", {"tie_word_embeddings": True, "rope_theta": 1e6}),
}


@dataclass
class Checkpoint:
    """A tiny HF checkpoint on disk and its transformers model (float32, eval mode)."""

    name: str
    path: Path
    torch_model: Any

    def reference_logits(self, tokens: np.ndarray) -> np.ndarray:
        """transformers' logits ``[B, T, V]`` for unpadded rows."""
        import torch

        with torch.no_grad():
            return self.torch_model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


def make_checkpoint(name: str, path: Path, seed: int = 0) -> Checkpoint:
    """Creates variant ``name`` with transformers and saves it to ``path``."""
    import torch
    import transformers

    cls_name, extra = VARIANTS[name]
    config = getattr(transformers, cls_name)(**COMMON, **extra)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return Checkpoint(name, path, model)


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef: Any, state: Any, tokens: Any, positions: Any, segment_ids: Any) -> Any:
    """Jitted ``model(tokens, positions=..., segment_ids=...)`` from split state."""
    model = nnx.merge(graphdef, state)
    return model(tokens, positions=positions, segment_ids=segment_ids)


def run_forward(model: Any, tokens: Any, positions: Any = None, segment_ids: Any = None) -> Any:
    """``forward`` with defaults filled in (so every call has the same pytree structure)."""
    b, t = tokens.shape
    if positions is None:
        positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    if segment_ids is None:
        segment_ids = np.ones((b, t), np.int32)
    graphdef, state = nnx.split(model)
    return np.asarray(forward(graphdef, state, tokens, positions, segment_ids))


def max_rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max |ours - ref| / max |ref|``: elementwise relative error is meaningless near zero."""
    return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def random_tokens(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Deterministic int32 token ids in ``[0, VOCAB)``."""
    return np.random.default_rng(seed).integers(0, VOCAB, size=shape).astype(np.int32)


def assert_same_params(a: Any, b: Any) -> None:
    """Both models (or states) hold the same parameter paths with bit-identical values."""
    flat_a = nnx.to_flat_state(nnx.state(a, nnx.Param))
    flat_b = nnx.to_flat_state(nnx.state(b, nnx.Param))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(x[...], y[...], err_msg=str(path))
