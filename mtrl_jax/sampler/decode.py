"""The sampler's two compiled programs: prefill a chunk into one slot, and batched decoding.

Both take the model as ``(graphdef, state)``: the graphdef is a static argument and only the
state crosses the jit boundary, so new weights of the same shapes (``set_params``) never
recompile. Shapes are fixed by construction:

* :func:`prefill_chunk` always sees one row of ``P`` tokens, ``P`` one of
  ``SamplerConfig.prefill_buckets``: one program per bucket.
* :func:`decode_steps` always sees all ``B`` slots and runs ``num_steps`` (static) tokens per
  call with ``lax.scan``: one program per engine.

Slot bookkeeping. A slot is one row of the :class:`KVCache`. The host owns the truth about how
many tokens each slot holds and passes it as ``start`` to every prefill, which overwrites the
row's write index; so a slot is reused (new session: ``start = 0``) or extended (next turn:
``start = len(context)``) without a reset program. Correctness of stale contents rests on the
attention rule (``key_slot <= query_slot``, same non-zero segment): every slot at or before a
query's own slot has been written by the current context, and everything after it is masked
whatever it holds. Prefill padding is written with segment 0 and the index is set past the real
tokens only, so the next write overwrites the padding. Decode rows that are not active write
segment-0 garbage at their index and do not advance it.

The cache is allocated ``max_len + slack`` long (slack = largest bucket + ``num_steps``) so a
padded chunk or a decode chunk that runs past a row's end never reaches the end of the buffer,
where ``dynamic_update_slice`` would clamp its start and overwrite real entries.

Non-goals: batched prefill of several slots in one call, paged caches, prefix sharing between
different sessions.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from mtrl_jax.models.attention import KVCache
from mtrl_jax.sampler.sampling import row_keys, sample_tokens

# Static arguments: the graphdef and the two sampling-mode flags (engine constants).
_STATIC = ("graphdef", "greedy", "filtered")


def _take_row(x: Array, slot: Array, axis: int) -> Array:
    return jax.lax.dynamic_slice_in_dim(x, slot, 1, axis=axis)


def _put_row(x: Array, row: Array, slot: Array, axis: int) -> Array:
    return jax.lax.dynamic_update_slice_in_dim(x, row.astype(x.dtype), slot, axis=axis)


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("cache",))
def prefill_chunk(
    graphdef: Any,
    state: Any,
    cache: KVCache,
    tokens: Array,
    *,
    slot: Array,
    start: Array,
    num_real: Array,
    base_key: Array,
    request_id: Array,
    temperature: Array,
    top_k: Array,
    top_p: Array,
    greedy: bool,
    filtered: bool,
) -> tuple[KVCache, Array, Array, Array]:
    """Writes ``tokens[0, :num_real]`` into ``slot`` at ``start`` and samples the next token.

    Args:
        graphdef: static model graphdef.
        state: the model's state (weights).
        cache: the engine's cache (donated).
        tokens: ``[1, P]`` int32, real tokens then padding.
        slot: int32 row of the cache.
        start: int32 number of tokens the slot already holds for this context.
        num_real: int32 ``1 <= num_real <= P``.
        base_key: the engine's typed key.
        request_id: int32 per-call counter of the request (the draw is token 0 of it).
        temperature: float32 scalar (see :func:`sample_tokens`).
        top_k: int32 scalar.
        top_p: float32 scalar.
        greedy: static sampling mode.
        filtered: static sampling mode.

    Returns:
        The cache, and the ``[1]`` token, sampling log-prob and model log-prob drawn from the
        logits after the last real token.
    """
    model = nnx.merge(graphdef, state)
    p = tokens.shape[1]
    offsets = jnp.arange(p, dtype=jnp.int32)[None, :]
    row = KVCache(
        k=_take_row(cache.k, slot, 1),
        v=_take_row(cache.v, slot, 1),
        segment_ids=_take_row(cache.segment_ids, slot, 0),
        index=jnp.reshape(start, (1,)).astype(jnp.int32),
    )
    hidden, row = model.hidden_states(
        tokens,
        positions=start + offsets,
        segment_ids=(offsets < num_real).astype(jnp.int32),
        cache=row,
    )
    assert row is not None
    last = jax.lax.dynamic_index_in_dim(hidden[0], num_real - 1, axis=0, keepdims=True)
    keys = row_keys(base_key, jnp.reshape(request_id, (1,)), jnp.zeros((1,), jnp.int32))
    token, logp, model_logp = sample_tokens(
        model.logits(last),
        keys,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        filtered=filtered,
    )
    cache = KVCache(
        k=_put_row(cache.k, row.k, slot, 1),
        v=_put_row(cache.v, row.v, slot, 1),
        segment_ids=_put_row(cache.segment_ids, row.segment_ids, slot, 0),
        index=cache.index.at[slot].set(start + num_real),
    )
    return cache, token, logp, model_logp


@functools.partial(jax.jit, static_argnames=(*_STATIC, "num_steps"), donate_argnames=("cache",))
def decode_steps(
    graphdef: Any,
    state: Any,
    cache: KVCache,
    tokens: Array,
    *,
    active: Array,
    request_ids: Array,
    token_index: Array,
    base_key: Array,
    temperature: Array,
    top_k: Array,
    top_p: Array,
    greedy: bool,
    filtered: bool,
    num_steps: int,
) -> tuple[KVCache, Array, Array, Array]:
    """Feeds each active slot its last token and samples ``num_steps`` tokens per slot.

    Args:
        graphdef: static model graphdef.
        state: the model's state (weights).
        cache: the engine's cache (donated).
        tokens: ``[B]`` int32 last sampled token of each slot (anything for idle slots).
        active: ``[B]`` bool; idle slots write segment-0 padding and keep their index.
        request_ids: ``[B]`` int32 request counter per slot.
        token_index: ``[B]`` int32 index (within its request) of the token fed in this call;
            the first draw of the call is ``token_index + 1``.
        base_key: the engine's typed key.
        temperature: float32 scalar.
        top_k: int32 scalar.
        top_p: float32 scalar.
        greedy: static sampling mode.
        filtered: static sampling mode.
        num_steps: static tokens per slot per call. The host discards what a slot draws after
            it stops (stop tokens and strings are checked outside jit).

    Returns:
        The cache and ``[num_steps, B]`` tokens, sampling log-probs and model log-probs.
    """
    model = nnx.merge(graphdef, state)
    segment = active.astype(jnp.int32)[:, None]  # [B, 1]

    def step(carry: tuple[KVCache, Array], i: Array) -> tuple[tuple[KVCache, Array], Any]:
        cache, last = carry
        hidden, new_cache = model.hidden_states(
            last[:, None], positions=cache.index[:, None], segment_ids=segment, cache=cache
        )
        assert new_cache is not None
        new_cache = new_cache.replace(index=jnp.where(active, cache.index + 1, cache.index))
        keys = row_keys(base_key, request_ids, token_index + 1 + i)
        out = sample_tokens(
            model.logits(hidden[:, 0]),
            keys,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            greedy=greedy,
            filtered=filtered,
        )
        return (new_cache, out[0]), out

    (cache, _), (toks, logps, model_logps) = jax.lax.scan(
        step, (cache, tokens), jnp.arange(num_steps, dtype=jnp.int32)
    )
    return cache, toks, logps, model_logps
