"""The decoder's configuration, read from and written to Hugging Face ``config.json`` files.

One frozen dataclass, :class:`DecoderConfig`, describes every supported architecture: Llama 3,
Qwen2/Qwen2.5 and Qwen3 differ only in flags (Qwen2 has q/k/v biases, Qwen3 normalises q and k
per head). :meth:`DecoderConfig.from_hf` reads both config layouts found in the wild: published
checkpoints carry ``rope_theta`` plus ``rope_scaling``; transformers 5 writes one
``rope_parameters`` dict. :meth:`DecoderConfig.to_hf` writes both, so transformers 4 and 5 read
our checkpoints.

Non-goals: sliding-window attention, MoE, per-layer RoPE, YaRN/dynamic/LongRoPE scaling, MLP
biases. Configs asking for them are rejected with an error naming the key, never half-supported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# HF architecture name -> (model_type, family). The family decides which flags the HF config
# controls (see `DecoderConfig.from_hf`).
ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_MODEL_TYPES = {model_type: arch for arch, model_type in ARCHITECTURES.items()}

ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("xla", "cudnn")
# Names accepted by `remat_policy`; `mtrl_jax.models.decoder.REMAT_POLICIES` maps them to
# `jax.checkpoint` policies. Kept here so configs validate without importing JAX.
REMAT_POLICY_NAMES = (
    "none",
    "full",
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)


@dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """Rotary position embedding: base frequency and an optional scaling rule.

    Attributes:
        theta: base of the geometric frequency ladder (``rope_theta``).
        kind: ``"default"``, ``"linear"`` (all frequencies divided by ``factor``) or
            ``"llama3"`` (low frequencies divided by ``factor``, a smooth blend in between).
        factor: scaling factor for ``linear`` and ``llama3``.
        low_freq_factor: ``llama3`` only.
        high_freq_factor: ``llama3`` only.
        original_max_position_embeddings: ``llama3`` only: the pre-training context length.
    """

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.kind not in ROPE_TYPES:
            raise ValueError(f"rope type {self.kind!r} is not supported; supported: {ROPE_TYPES}")
        if self.kind == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("llama3 rope scaling needs high_freq_factor > low_freq_factor")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> RopeConfig:
        """Reads RoPE settings from either config layout (``rope_parameters`` wins)."""
        params = dict(hf.get("rope_parameters") or {})
        legacy = dict(hf.get("rope_scaling") or {})
        if params and all(isinstance(v, Mapping) for v in params.values()):
            raise ValueError("per-layer-type rope_parameters are not supported")
        merged = {**legacy, **params}
        kind = merged.get("rope_type", merged.get("type", "default"))
        if merged.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported")
        if kind not in ROPE_TYPES:
            raise ValueError(f"rope type {kind!r} is not supported; supported: {ROPE_TYPES}")
        theta = merged.get("rope_theta", hf.get("rope_theta", 10000.0))
        kwargs: dict[str, Any] = {"theta": float(theta), "kind": kind}
        if kind in ("linear", "llama3"):
            kwargs["factor"] = float(_require(merged, "factor", "rope scaling"))
        if kind == "llama3":
            kwargs["low_freq_factor"] = float(_require(merged, "low_freq_factor", "rope scaling"))
            kwargs["high_freq_factor"] = float(_require(merged, "high_freq_factor", "rope scaling"))
            # transformers falls back to max_position_embeddings the same way.
            original = merged.get(
                "original_max_position_embeddings", hf.get("max_position_embeddings")
            )
            if original is None:
                raise ValueError("llama3 rope scaling needs original_max_position_embeddings")
            kwargs["original_max_position_embeddings"] = int(original)
        return cls(**kwargs)

    def scaling_dict(self) -> dict[str, Any] | None:
        """The scaling part in HF's keys (``None`` for plain RoPE)."""
        if self.kind == "default":
            return None
        out: dict[str, Any] = {"rope_type": self.kind, "factor": self.factor}
        if self.kind == "llama3":
            out["low_freq_factor"] = self.low_freq_factor
            out["high_freq_factor"] = self.high_freq_factor
            out["original_max_position_embeddings"] = self.original_max_position_embeddings
        return out


@dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """Architecture and numerics of a decoder-only transformer (Llama 3 / Qwen2 / Qwen3).

    Shape letters used across ``mtrl_jax.models``: ``V`` vocab, ``D`` hidden size, ``F`` MLP
    width, ``L`` layers, ``N`` query heads, ``K`` key/value heads, ``H`` head dim.

    Attributes:
        architecture: HF architecture name, one of :data:`ARCHITECTURES`.
        vocab_size: ``V``.
        hidden_size: ``D``.
        intermediate_size: ``F`` (SwiGLU width).
        num_layers: ``L``.
        num_heads: ``N``.
        num_kv_heads: ``K``; ``N`` must be a multiple of it (grouped-query attention).
        head_dim: ``H``; Qwen3 sets it independently of ``D / N``.
        rms_norm_eps: epsilon inside every RMSNorm.
        rope: rotary embedding settings.
        max_position_embeddings: informational (written back to ``config.json``).
        tie_word_embeddings: the output head reuses the input embedding.
        qkv_bias: q/k/v projections have biases (Qwen2; Llama/Qwen3 ``attention_bias``).
        out_bias: the output projection has a bias (Llama/Qwen3 ``attention_bias`` only).
        qk_norm: RMSNorm over each query and key head before RoPE (Qwen3).
        initializer_range: std of the normal init for random weights (HF's convention).
        bos_token_id: written back to ``config.json``; unused by the model.
        eos_token_id: written back to ``config.json``; unused by the model.
        pad_token_id: written back to ``config.json``; unused by the model.
        dtype: compute dtype (activations, matmul inputs). Softmax, norms and log-probs always
            run in float32.
        param_dtype: storage dtype of the parameters.
        remat_policy: per-block rematerialisation, one of :data:`REMAT_POLICY_NAMES`.
        attention_impl: ``"xla"`` (default, tested) or ``"cudnn"`` (UNVERIFIED: never run on a
            GPU in this repository's tests; see ``attention.py``).
        attention_block: query block of the full (no-cache) forward on the ``xla`` path: each
            block attends only to keys up to its end, skipping what causality masks anyway
            (``attention.attend_causal_blocks``). 0 attends all ``T`` keys at once.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    attention_impl: Literal["xla", "cudnn"] = "xla"
    attention_block: int = 128

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(_unknown_architecture(self.architecture))
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads <= 0 or self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a positive multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be positive and even (RoPE), got {self.head_dim}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.remat_policy not in REMAT_POLICY_NAMES:
            raise ValueError(
                f"unknown remat_policy {self.remat_policy!r}; choose from {REMAT_POLICY_NAMES}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}")
        if self.attention_block < 0:
            raise ValueError(f"attention_block must be >= 0, got {self.attention_block}")

    @property
    def model_type(self) -> str:
        """HF ``model_type`` (``llama``, ``qwen2`` or ``qwen3``)."""
        return ARCHITECTURES[self.architecture]

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (``G = N / K``)."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes: Any) -> DecoderConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> DecoderConfig:
        """Builds a config from a parsed HF ``config.json``.

        Args:
            hf: the parsed JSON.
            **overrides: fields to set on top (typically ``dtype``, ``param_dtype``,
                ``remat_policy``).

        Raises:
            ValueError: unknown architecture, missing key, or a feature we do not implement.
        """
        arch = _architecture_of(hf)
        family = ARCHITECTURES[arch]
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported (only 'silu')")
        if hf.get("mlp_bias", False):
            raise ValueError("mlp_bias=true is not supported")
        if hf.get("use_sliding_window", False):
            raise ValueError("use_sliding_window=true is not supported")
        num_heads = int(_require(hf, "num_attention_heads"))
        hidden = int(_require(hf, "hidden_size"))
        # Qwen2 always has q/k/v biases and never an o_proj bias; Llama and Qwen3 put one
        # `attention_bias` flag on all four projections.
        attention_bias = bool(hf.get("attention_bias", False))
        eos = hf.get("eos_token_id")
        kwargs: dict[str, Any] = {
            "architecture": arch,
            "vocab_size": int(_require(hf, "vocab_size")),
            "hidden_size": hidden,
            "intermediate_size": int(_require(hf, "intermediate_size")),
            "num_layers": int(_require(hf, "num_hidden_layers")),
            "num_heads": num_heads,
            "num_kv_heads": int(hf.get("num_key_value_heads") or num_heads),
            "head_dim": int(hf.get("head_dim") or hidden // num_heads),
            "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
            "rope": RopeConfig.from_hf(hf),
            "max_position_embeddings": int(hf.get("max_position_embeddings", 32768)),
            "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "qkv_bias": True if family == "qwen2" else attention_bias,
            "out_bias": False if family == "qwen2" else attention_bias,
            "qk_norm": family == "qwen3",
            "initializer_range": float(hf.get("initializer_range", 0.02)),
            "bos_token_id": hf.get("bos_token_id"),
            "eos_token_id": tuple(eos) if isinstance(eos, list) else eos,
            "pad_token_id": hf.get("pad_token_id"),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """The HF ``config.json`` contents (readable by transformers 4.51+ and 5)."""
        family = self.model_type
        if family == "qwen2" and (not self.qkv_bias or self.out_bias):
            raise ValueError("Qwen2 checkpoints need qkv_bias=True and out_bias=False")
        if family != "qwen2" and self.qkv_bias != self.out_bias:
            raise ValueError(f"{self.architecture} uses one attention_bias for q/k/v/o")
        if self.qk_norm != (family == "qwen3"):
            raise ValueError(f"qk_norm={self.qk_norm} does not match {self.architecture}")
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else None
        scaling = self.rope.scaling_dict()
        out: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos if eos is not None else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            # Both layouts: transformers 4 reads rope_theta/rope_scaling, 5 rope_parameters.
            "rope_theta": self.rope.theta,
            "rope_scaling": scaling,
            "rope_parameters": {
                "rope_type": "default",
                **(scaling or {}),
                "rope_theta": self.rope.theta,
            },
            "attention_dropout": 0.0,
            "use_cache": True,
            "dtype": self.param_dtype,
        }
        if family == "qwen2":
            out["use_sliding_window"] = False
        else:
            out["attention_bias"] = self.qkv_bias
        if family == "llama":
            out["mlp_bias"] = False
        if family == "qwen3":
            out["use_sliding_window"] = False
        return out


def _architecture_of(hf: Mapping[str, Any]) -> str:
    archs = hf.get("architectures") or []
    if archs:
        arch = archs[0]
        if arch not in ARCHITECTURES:
            raise ValueError(_unknown_architecture(arch))
        return arch
    model_type = hf.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ValueError(_unknown_architecture(f"model_type={model_type!r}"))
    return _MODEL_TYPES[model_type]


def _unknown_architecture(name: str) -> str:
    return f"unsupported architecture {name!r}; supported: {', '.join(ARCHITECTURES)}"


def _require(hf: Mapping[str, Any], key: str, where: str = "config.json") -> Any:
    if key not in hf or hf[key] is None:
        raise ValueError(f"{where} is missing {key!r}")
    return hf[key]
