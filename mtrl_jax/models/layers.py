"""Building blocks of the decoder: projections, embedding, RMSNorm, RoPE, SwiGLU MLP.

Every parameter is an ``nnx.Param`` whose ``out_sharding`` metadata holds *logical* axis names
(``vocab``, ``embed``, ``mlp``, ``heads``, ``kv_heads``, ``head_dim``; ``layers`` is prepended
when blocks are stacked). A sharding module maps them to mesh axes with flax's logical-axis rules
(``flax.linen.logical_axis_rules`` + ``nnx.get_partition_spec``) without touching model code.
``eager_sharding=False`` keeps the names as metadata only, so models build without a mesh.

Numerics follow transformers' Llama/Qwen code: norms run in float32 and cast back, RoPE angles
are computed in float32, matmuls run in the compute dtype.

Non-goals: dropout, MLP biases, any activation other than SiLU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from mtrl_jax.models.config import DecoderConfig, RopeConfig

Initializer = Callable[[Array, Sequence[int], jnp.dtype], Array]


def make_param(
    rngs: nnx.Rngs,
    init: Initializer,
    shape: Sequence[int],
    axes: tuple[str, ...],
    dtype: jnp.dtype,
) -> nnx.Param:
    """A parameter carrying logical axis names (one per dimension) as sharding metadata."""
    if len(axes) != len(shape):
        raise ValueError(f"axis names {axes} do not match shape {tuple(shape)}")
    value = init(rngs.params(), tuple(shape), dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Projection(nnx.Module):
    """A linear map between named tensor shapes, ``y = einsum(x, kernel) (+ bias)``.

    The kernel is laid out ``in_shape + out_shape`` (e.g. ``[D, N, H]`` for the query
    projection) so heads are real axes that can be sharded; HF stores the same numbers as a
    ``[prod(out), prod(in)]`` matrix (see ``pretrained.py``).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: tuple[str, ...],
        out_axes: tuple[str, ...],
        *,
        use_bias: bool,
        config: DecoderConfig,
        rngs: nnx.Rngs,
    ) -> None:
        param_dtype = jnp.dtype(config.param_dtype)
        init = jax.nn.initializers.normal(config.initializer_range)
        self.kernel = make_param(
            rngs, init, (*in_shape, *out_shape), (*in_axes, *out_axes), param_dtype
        )
        self.bias = (
            make_param(rngs, jax.nn.initializers.zeros, out_shape, out_axes, param_dtype)
            if use_bias
            else None
        )
        self.in_ndim = len(in_shape)
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: Array) -> Array:
        """Contracts the last ``in_ndim`` axes of ``x`` with the kernel."""
        kernel = self.kernel[...].astype(self.dtype)
        # [..., *in] x [*in, *out] -> [..., *out]: x's trailing axes meet the kernel's leading.
        contract = (tuple(range(x.ndim - self.in_ndim, x.ndim)), tuple(range(self.in_ndim)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel, (contract, ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding ``[V, D]``; also the output head when embeddings are tied."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs) -> None:
        self.embedding = make_param(
            rngs,
            jax.nn.initializers.normal(config.initializer_range),
            (config.vocab_size, config.hidden_size),
            ("vocab", "embed"),
            jnp.dtype(config.param_dtype),
        )
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, tokens: Array) -> Array:
        """``[B, T]`` int ids -> ``[B, T, D]`` in the compute dtype.

        Ids outside ``[0, V)`` give NaN rows (``jnp.take``'s fill mode): loud, not silent.
        """
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)


class RMSNorm(nnx.Module):
    """``x / rms(x) * scale`` over the last axis, computed in float32 (as transformers does)."""

    def __init__(self, dim: int, axis_name: str, *, config: DecoderConfig, rngs: nnx.Rngs) -> None:
        self.scale = make_param(
            rngs, jax.nn.initializers.ones, (dim,), (axis_name,), jnp.dtype(config.param_dtype)
        )
        self.eps = config.rms_norm_eps

    def __call__(self, x: Array) -> Array:
        """Normalises ``[..., dim]``; returns the input dtype."""
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        # Cast before scaling, like transformers: in bf16 the product is rounded to bf16 once.
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs) -> None:
        d, f = config.hidden_size, config.intermediate_size
        kw = {"use_bias": False, "config": config, "rngs": rngs}
        self.gate_proj = Projection((d,), (f,), ("embed",), ("mlp",), **kw)
        self.up_proj = Projection((d,), (f,), ("embed",), ("mlp",), **kw)
        self.down_proj = Projection((f,), (d,), ("mlp",), ("embed",), **kw)

    def __call__(self, x: Array) -> Array:
        """``[B, T, D]`` -> ``[B, T, D]``."""
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """Inverse frequencies ``[H/2]`` (float32), with linear or llama3 scaling applied.

    Computed in float64 on the host and rounded once, so it is a compile-time constant.
    """
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.kind == "linear":
        inv_freq = inv_freq / rope.factor
    elif rope.kind == "llama3":
        # Llama 3.1: wavelengths longer than the pre-training context / low_freq_factor are
        # stretched by `factor`, shorter than context / high_freq_factor kept, and those in
        # between blended linearly in 1/wavelength.
        ctx = rope.original_max_position_embeddings
        wavelen = 2 * math.pi / inv_freq
        smooth = (ctx / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        blended = (1 - smooth) * inv_freq / rope.factor + smooth * inv_freq
        inv_freq = np.where(
            wavelen > ctx / rope.low_freq_factor,
            inv_freq / rope.factor,
            np.where(wavelen < ctx / rope.high_freq_factor, inv_freq, blended),
        )
    return inv_freq.astype(np.float32)


def rope_tables(positions: Array, inv_freq: np.ndarray, dtype: jnp.dtype) -> tuple[Array, Array]:
    """``cos``, ``sin`` tables ``[B, T, H]`` for integer ``positions`` ``[B, T]``.

    Angles are formed in float32 (positions up to ~2^24 stay exact) and cast to the compute
    dtype afterwards, as transformers does.
    """
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, H/2]
    angles = jnp.concatenate([angles, angles], axis=-1)  # halves layout (HF "rotate_half")
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates ``x`` ``[B, T, heads, H]`` by the tables ``[B, T, H]``.

    Uses the "halves" convention of HF Llama/Qwen checkpoints: dimension ``i`` pairs with
    ``i + H/2`` (not the interleaved pairs of the original RoPE paper).
    """
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
