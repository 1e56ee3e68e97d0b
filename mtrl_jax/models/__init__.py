"""Decoder-only language models (Llama 3, Qwen2/2.5, Qwen3) in Flax NNX, with HF checkpoint I/O.

Public API::

    from mtrl_jax.models import load_pretrained, load_tokenizer, save_pretrained

    model = load_pretrained("path/to/hf-folder", dtype="bfloat16")
    logits = model(tokens)                                  # [B, T] int32 -> [B, T, V] float32
    logp = model.token_logprobs(tokens, targets)            # [B, T] float32, chunked head
    cache = model.init_cache(batch=4, max_len=1024)
    logits, cache = model.decode(prompt_tokens, cache)      # prefill, then one token per call
    tokenizer = load_tokenizer("path/to/hf-folder")
    save_pretrained(model, "out/folder")                    # loads in transformers too

``python -m mtrl_jax.models.make_default --out DIR`` writes the tiny default model and tokenizer.

Non-goals: Hub downloads, architectures beyond Llama/Qwen2/Qwen3, sampling (see the sampler).
"""

from typing import TYPE_CHECKING, Any

from mtrl_jax.models.attention import KVCache, MaskInfo, init_cache
from mtrl_jax.models.config import ARCHITECTURES, DecoderConfig, RopeConfig
from mtrl_jax.models.decoder import REMAT_POLICIES, Decoder
from mtrl_jax.models.pretrained import load_pretrained, save_pretrained, tensor_specs
from mtrl_jax.models.tokenizer import CHAT_TEMPLATE, load_tokenizer, train_tokenizer

if TYPE_CHECKING:
    from mtrl_jax.models.make_default import build_default

__all__ = [
    "ARCHITECTURES",
    "CHAT_TEMPLATE",
    "REMAT_POLICIES",
    "Decoder",
    "DecoderConfig",
    "KVCache",
    "MaskInfo",
    "RopeConfig",
    "build_default",
    "init_cache",
    "load_pretrained",
    "load_tokenizer",
    "save_pretrained",
    "tensor_specs",
    "train_tokenizer",
]


def __getattr__(name: str) -> Any:
    # `build_default` is imported on first use: its module plays the environments (gymnasium,
    # mtrl_gym), and importing it here would also trip runpy's warning for
    # `python -m mtrl_jax.models.make_default`.
    if name == "build_default":
        from mtrl_jax.models.make_default import build_default

        return build_default
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
