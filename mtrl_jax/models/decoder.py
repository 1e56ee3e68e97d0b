"""The decoder-only transformer (Llama 3 / Qwen2 / Qwen3) as a Flax NNX module.

``Decoder`` stacks its ``L`` blocks along a leading ``layers`` axis (created with ``nnx.vmap``)
and runs them with one ``lax.scan``, so a 28-layer model compiles one block, not 28. Each block
can be rematerialised with a named ``jax.checkpoint`` policy (``DecoderConfig.remat_policy``).

Entry points (all take int32 ``[B, T]`` tokens; ``positions`` and ``segment_ids`` default to
``0..T-1`` and all ones):

* ``model(tokens, positions=..., segment_ids=...)`` -> float32 logits ``[B, T, V]``.
* ``model.token_logprobs(tokens, targets, ...)`` -> float32 log-probs ``[B, T]`` (and
  entropies), computed in chunks so ``[B, T, V]`` never exists (:func:`chunked_token_logprobs`).
* ``model.decode(tokens, cache, ...)`` -> logits and the updated :class:`KVCache` (prefill when
  ``T > 1``, one decoding step when ``T == 1``).

Why chunks: the RL losses need ``log p(target)`` per token, never all logits, which for long
packed rows are huge (151k vocab x 16k tokens = 10 GB in float32). ``lax.map`` applies the head
to ``chunk_size`` tokens at a time, and each chunk is wrapped in ``jax.checkpoint``: otherwise
reverse-mode autodiff would save every chunk's logits for the backward pass and rebuild the full
tensor after all. With it only the ``[chunk, D]`` inputs are kept and logits are recomputed.

The module is jit-agnostic: callers split it (``nnx.split``) and pass only its state through
``jax.jit``, as the learner and sampler do.

Non-goals: MoE, sliding windows, vocab-parallel heads, multimodal inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from mtrl_jax.models.attention import (
    Attention,
    KVCache,
    LayerCache,
    MaskInfo,
    init_cache,
    write_rows,
)
from mtrl_jax.models.config import REMAT_POLICY_NAMES, DecoderConfig
from mtrl_jax.models.layers import MLP, Embed, Projection, RMSNorm, rope_inv_freq, rope_tables

HeadFn = Callable[[Array], Array]  # [C, D] hidden -> [C, V] float32 logits


def chunked_token_logprobs(
    hidden: Array,
    targets: Array,
    head: HeadFn,
    *,
    chunk_size: int = 512,
    return_entropy: bool = False,
) -> Array | tuple[Array, Array]:
    """``log softmax(head(hidden))[target]`` per token, without materialising all logits.

    Args:
        hidden: ``[B, T, D]`` final hidden states (after the last norm).
        targets: ``[B, T]`` int token ids whose log-probabilities are wanted. Ids outside
            ``[0, V)`` are clipped (the result is finite but meaningless; mask it out).
        head: maps ``[C, D]`` hidden states to ``[C, V]`` float32 logits.
        chunk_size: tokens per chunk, counted over the flattened ``B * T`` tokens, so the
            largest temporary is ``[chunk_size, V]`` whatever the batch size. The last chunk is
            zero-padded.
        return_entropy: also return the entropy of each next-token distribution.

    Returns:
        ``logp`` ``[B, T]`` float32, or ``(logp, entropy)`` each ``[B, T]`` float32.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    b, t, d = hidden.shape
    n = b * t
    chunk = min(chunk_size, n)
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n
    flat_h = jnp.pad(hidden.reshape(n, d), ((0, pad), (0, 0)))
    flat_t = jnp.pad(targets.reshape(n).astype(jnp.int32), (0, pad))

    @jax.checkpoint
    def one_chunk(args: tuple[Array, Array]) -> tuple[Array, Array]:
        h, tgt = args  # [C, D], [C]
        logits = head(h).astype(jnp.float32)  # [C, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, tgt[:, None], axis=-1, mode="clip")[:, 0]
        logp = picked - lse
        if not return_entropy:
            return logp, jnp.zeros_like(logp)
        # H = -sum p log p = lse - sum p * logits, with p = exp(logits - lse).
        probs = jnp.exp(logits - lse[:, None])
        entropy = lse - jnp.sum(probs * logits, axis=-1)
        return logp, entropy

    logp, entropy = jax.lax.map(
        one_chunk, (flat_h.reshape(num_chunks, chunk, d), flat_t.reshape(num_chunks, chunk))
    )
    logp = logp.reshape(-1)[:n].reshape(b, t)
    if not return_entropy:
        return logp
    return logp, entropy.reshape(-1)[:n].reshape(b, t)


_cp = jax.checkpoint_policies
# Name -> `jax.checkpoint` policy; "none" means no rematerialisation at all. "full" saves
# nothing inside a block (recomputes it in the backward pass); the dots policies keep matmul
# outputs and recompute only the cheap elementwise work.
REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "none": None,
    "full": _cp.nothing_saveable,
    "nothing_saveable": _cp.nothing_saveable,
    "everything_saveable": _cp.everything_saveable,
    "dots_saveable": _cp.dots_saveable,
    "dots_with_no_batch_dims_saveable": _cp.dots_with_no_batch_dims_saveable,
}
assert tuple(REMAT_POLICIES) == REMAT_POLICY_NAMES


class Block(nnx.Module):
    """One pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs) -> None:
        d = config.hidden_size
        self.input_layernorm = RMSNorm(d, "embed", config=config, rngs=rngs)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(d, "embed", config=config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self,
        x: Array,
        cos: Array,
        sin: Array,
        mask_info: MaskInfo,
        kv_cache: LayerCache | None = None,
        write_at: Array | None = None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """``[B, T, D]`` -> ``[B, T, D]`` (and the stacked cache with this layer updated)."""
        attn_out, kv_cache = self.self_attn(
            self.input_layernorm(x), cos, sin, mask_info, kv_cache, write_at
        )
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv_cache


class Decoder(nnx.Module):
    """Causal language model: embedding, ``L`` stacked blocks, final norm, output head.

    Args:
        config: the architecture and numerics.
        rngs: randomness for the initial weights (normal with ``initializer_range`` std,
            norms at one, biases at zero, as transformers initialises them).
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        self.embed_tokens = Embed(config, rngs=rngs)

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(config, rngs=rngs)

        self.layers = make_blocks(rngs)  # every parameter gets a leading [L] "layers" axis
        self.norm = RMSNorm(config.hidden_size, "embed", config=config, rngs=rngs)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Projection(
                (config.hidden_size,),
                (config.vocab_size,),
                ("embed",),
                ("vocab",),
                use_bias=False,
                config=config,
                rngs=rngs,
            )
        )

    # ----------------------------------------------------------------------------- public API

    def __call__(
        self,
        tokens: Array,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        parent_ids: Array | None = None,
    ) -> Array:
        """Full forward pass.

        Args:
            tokens: ``[B, T]`` int32 token ids.
            positions: ``[B, T]`` int32 RoPE positions; restart them at 0 for each packed
                sequence. Default ``0..T-1`` in every row.
            segment_ids: ``[B, T]`` int32 packed-sequence ids, 0 = padding. Tokens attend
                only within their own non-zero segment. Default all ones.
            parent_ids: ``[B, T]`` int32 segment each token also attends to: a shared prefix
                earlier in the row that its segment continues (positions then continue the
                prefix's). None: none (the same as ``segment_ids``).

        Returns:
            ``[B, T, V]`` float32 logits.
        """
        hidden, _ = self.hidden_states(
            tokens, positions=positions, segment_ids=segment_ids, parent_ids=parent_ids
        )
        return self.logits(hidden)

    def token_logprobs(
        self,
        tokens: Array,
        targets: Array,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        parent_ids: Array | None = None,
        chunk_size: int = 512,
        return_entropy: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Log-probabilities of ``targets`` under the model, chunked over tokens.

        Args:
            tokens: ``[B, T]`` int32 inputs.
            targets: ``[B, T]`` int32 ids scored at each position (usually ``tokens``
                shifted left by one); out-of-range ids give finite garbage, so mask them.
            positions: as in ``__call__``.
            segment_ids: as in ``__call__``.
            parent_ids: as in ``__call__``.
            chunk_size: tokens (over the flattened ``B * T``) per head evaluation; peak
                temporary memory is ``chunk_size * V`` float32.
            return_entropy: also return each position's next-token entropy.

        Returns:
            ``logp`` ``[B, T]`` float32, or ``(logp, entropy)``.
        """
        hidden, _ = self.hidden_states(
            tokens, positions=positions, segment_ids=segment_ids, parent_ids=parent_ids
        )
        return chunked_token_logprobs(
            hidden,
            targets,
            self._head_fn(),
            chunk_size=chunk_size,
            return_entropy=return_entropy,
        )

    def decode(
        self,
        tokens: Array,
        cache: KVCache,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
    ) -> tuple[Array, KVCache]:
        """Runs ``tokens`` against the cache and appends them to it.

        Args:
            tokens: ``[B, T]`` int32: a prompt (prefill) or one new token per row (``T = 1``).
            cache: from :meth:`init_cache` or a previous call.
            positions: ``[B, T]`` RoPE positions; default ``cache.index[:, None] + 0..T-1``.
                Pass them when rows are padded differently.
            segment_ids: ``[B, T]``; 0 marks padding (never attended to). Default ones.

        Returns:
            ``[B, T, V]`` float32 logits and the cache with ``T`` more slots filled per row.
            (For a long prefill where only the last logits matter, call
            :meth:`hidden_states` with ``cache=`` and :meth:`logits` on the rows you need.)
        """
        hidden, new_cache = self.hidden_states(
            tokens, positions=positions, segment_ids=segment_ids, cache=cache
        )
        assert new_cache is not None
        return self.logits(hidden), new_cache

    def init_cache(self, batch: int, max_len: int, dtype: jnp.dtype | str | None = None) -> KVCache:
        """An empty :class:`KVCache` for this model (see :func:`attention.init_cache`)."""
        return init_cache(self.config, batch, max_len, dtype)

    def logits(self, hidden: Array) -> Array:
        """Output head: ``[..., D]`` final hidden states -> ``[..., V]`` float32 logits."""
        return self._head_fn()(hidden)

    def hidden_states(
        self,
        tokens: Array,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        parent_ids: Array | None = None,
        cache: KVCache | None = None,
        live_slots: int | None = None,
    ) -> tuple[Array, KVCache | None]:
        """Embedding, blocks and final norm: ``[B, T]`` -> ``[B, T, D]`` (and the new cache).

        ``parent_ids`` (see ``__call__``) is for the full forward only, not with ``cache``.
        ``live_slots`` (static, with ``cache``): attend to cache slots ``0 .. live_slots - 1``
        only. Exact when every query's slot is below it (the caller's promise: later keys are
        masked anyway); reads ``live_slots / S`` of the cache. None: all ``S`` slots.
        """
        cfg = self.config
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)
        arange = jnp.arange(t, dtype=jnp.int32)[None, :]
        if cache is None:
            slots = jnp.broadcast_to(arange, (b, t))
            parents = None if parent_ids is None else parent_ids.astype(jnp.int32)
            mask_info = MaskInfo(slots, segment_ids, slots, segment_ids, parents)
            write_at = None
        elif parent_ids is not None:
            raise ValueError("parent_ids are for the full forward, not for decoding with a cache")
        else:
            write_at = cache.index
            slots = write_at[:, None] + arange  # [B, T] slots the new tokens go to
            k_segments = write_rows(cache.segment_ids, segment_ids, write_at)
            if live_slots is not None and not 1 <= live_slots <= cache.max_len:
                raise ValueError(f"live_slots must be in [1, {cache.max_len}], got {live_slots}")
            live_slots = live_slots or cache.max_len
            k_slots = jnp.arange(live_slots, dtype=jnp.int32)[None, :]
            mask_info = MaskInfo(slots, segment_ids, k_slots, k_segments[:, :live_slots])
        if positions is None:
            positions = slots
        # One RoPE table for all layers (as transformers does); inv_freq is a host constant.
        cos, sin = rope_tables(
            positions, rope_inv_freq(cfg.rope, cfg.head_dim), jnp.dtype(cfg.dtype)
        )
        x = self.embed_tokens(tokens)

        graphdef, layer_state = nnx.split(self.layers)

        # The cache rides in the scan carry, not in xs/ys: each layer then scatters only its new
        # entries into the (donated, loop-carried) buffers in place, instead of the scan
        # stacking a fresh copy of every layer's full cache on every call.
        def body(carry: Any, xs: Any) -> tuple[Any, None]:
            x, kv = carry
            state, layer = xs
            block = nnx.merge(graphdef, state)
            layer_cache = None if kv is None else LayerCache(kv[0], kv[1], layer, live_slots)
            x, kv = block(x, cos, sin, mask_info, layer_cache, write_at)
            return (x, kv), None

        policy_name = cfg.remat_policy
        if policy_name != "none":
            # prevent_cse=False is safe (and faster) inside scan, per the jax.checkpoint docs.
            body = jax.checkpoint(body, policy=REMAT_POLICIES[policy_name], prevent_cse=False)
        kv_init = None if cache is None else (cache.k, cache.v)
        layer_ids = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        (x, kv_out), _ = jax.lax.scan(body, (x, kv_init), (layer_state, layer_ids))
        hidden = self.norm(x)
        if cache is None:
            return hidden, None
        new_cache = KVCache(k=kv_out[0], v=kv_out[1], segment_ids=k_segments, index=cache.index + t)
        return hidden, new_cache

    # ------------------------------------------------------------------------------ internal

    def _head_fn(self) -> Callable[[Array], Array]:
        """``hidden [..., D] -> logits [..., V]`` float32, reading the weights once."""
        dtype = jnp.dtype(self.config.dtype)
        if self.lm_head is None:
            weight = self.embed_tokens.embedding[...].astype(dtype)  # [V, D]
            spec = "...d,vd->...v"
        else:
            weight = self.lm_head.kernel[...].astype(dtype)  # [D, V]
            spec = "...d,dv->...v"

        def head(hidden: Array) -> Array:
            # float32 accumulation: logits feed log-softmax and sampling.
            return jnp.einsum(
                spec, hidden.astype(dtype), weight, preferred_element_type=jnp.float32
            )

        return head
