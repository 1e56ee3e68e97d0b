"""The sampler's compiled programs: batched prefill, row copies, and batched decoding.

All take the model (if any) as ``(graphdef, state)``: the graphdef is a static argument and only
the state crosses the jit boundary, so new weights of the same shapes (``set_params``) never
recompile. Shapes are fixed by construction:

* :func:`prefill_chunk` sees ``R`` rows of ``P`` tokens, ``P`` one of
  ``SamplerConfig.prefill_buckets`` and ``R`` a power of two capped at the engine's
  ``prefill_rows`` (:func:`row_bucket`): at most ``len(buckets) * (log2(prefill_rows) + 2)``
  programs per engine, one per bucket when ``prefill_rows == 1``.
* :func:`copy_rows` sees ``R`` (row-bucketed) pairs: at most ``log2(B) + 2`` programs.
* :func:`decode_steps` always sees all ``B`` slots and runs ``num_steps`` (static) tokens per
  call with ``lax.scan``, attending to the first ``live_slots`` (static) cache slots only: one
  program per live-slot bucket (:func:`live_slot_buckets`, at most ``MAX_LIVE_BUCKETS + 1``).

Slot bookkeeping. A slot is one row of the :class:`KVCache`. The host owns the truth about how
many tokens each slot holds and passes it as ``start`` to every prefill, which overwrites the
row's write index; so a slot is reused (new session: ``start = 0``), extended (next turn:
``start = len(context)``) or continued after a copied prefix (``start = prefix length``)
without a reset program. Correctness of stale contents rests on the attention rule
(``key_slot <= query_slot``, same non-zero segment): every slot at or before a query's own slot
has been written by the current context, and everything after it is masked whatever it holds.
Prefill padding is written with segment 0 and the index is set past the real tokens only, so the
next write overwrites the padding. Decode rows that are not active write segment-0 garbage at
their index and do not advance it. The same rule is why :func:`copy_rows` may copy whole rows:
entries past the shared prefix are overwritten by the destination's own prefill before any
query at or after them exists.

Padding rows (to reach the row bucket) carry the slot id ``B``, one past the last row: they
read some real row (clamped), compute garbage, and their scatters are dropped
(``mode="drop"``), so they write nowhere. Real rows of one call have distinct slots, so the
scatters never collide.

The cache is allocated ``max_len + slack`` long (slack = largest bucket + ``num_steps``) so a
padded chunk or a decode chunk that runs past a row's end never reaches the end of the buffer,
where ``dynamic_update_slice`` would clamp its start and overwrite real entries.

Non-goals: paged caches (a shared prefix is copied, not referenced), ragged prefill without
padding.
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


def row_bucket(num_rows: int, limit: int) -> int:
    """Rows of a batched call: the next power of two, capped at ``limit``.

    >>> [row_bucket(n, 6) for n in (1, 2, 3, 5, 6)]
    [1, 2, 4, 6, 6]
    """
    if not 1 <= num_rows <= limit:
        raise ValueError(f"need 1 <= num_rows <= limit, got {num_rows} of {limit}")
    return min(1 << (num_rows - 1).bit_length(), limit)


# Most live-slot buckets (decode programs) per engine.
MAX_LIVE_BUCKETS = 16


def live_slot_buckets(cache_len: int, smallest: int) -> tuple[int, ...]:
    """The decode programs' live-slot counts: even multiples of ``smallest``, then the cache.

    A decode call attends to the smallest bucket that covers every active slot's last query,
    so attention reads the live part of the cache plus less than one spacing, instead of all
    ``cache_len`` slots. The spacing is ``smallest``, widened (to a multiple of it) so that
    there are at most :data:`MAX_LIVE_BUCKETS` buckets below the cache length: that many
    compiled programs at most. ``smallest = 0``: one bucket, the whole cache.

    >>> live_slot_buckets(600, 128)
    (128, 256, 384, 512, 600)
    >>> live_slot_buckets(8192, 128)[:3], len(live_slot_buckets(8192, 128))
    ((512, 1024, 1536), 16)
    >>> live_slot_buckets(600, 0)
    (600,)
    """
    if cache_len < 1 or smallest < 0:
        raise ValueError(f"need cache_len >= 1 and smallest >= 0, got {cache_len}, {smallest}")
    if smallest == 0:
        return (cache_len,)
    below = -(-cache_len // smallest) - 1  # multiples of `smallest` below cache_len
    spacing = smallest * max(1, -(-below // MAX_LIVE_BUCKETS))
    return (*range(spacing, cache_len, spacing), cache_len)


def _gather_rows(cache: KVCache, slots: Array) -> tuple[Array, Array, Array]:
    """``k``, ``v`` ``[L, R, S, K, H]`` and segments ``[R, S]`` of ``slots`` (padding clamped)."""
    read = jnp.minimum(slots, cache.index.shape[0] - 1)
    return cache.k[:, read], cache.v[:, read], cache.segment_ids[read]


def _scatter_rows(
    cache: KVCache, slots: Array, k: Array, v: Array, segments: Array, index: Array
) -> KVCache:
    """Writes whole rows back into ``slots``; rows with slot ``B`` (padding) are dropped."""
    return KVCache(
        k=cache.k.at[:, slots].set(k.astype(cache.k.dtype), mode="drop"),
        v=cache.v.at[:, slots].set(v.astype(cache.v.dtype), mode="drop"),
        segment_ids=cache.segment_ids.at[slots].set(segments, mode="drop"),
        index=cache.index.at[slots].set(index, mode="drop"),
    )


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("cache",))
def prefill_chunk(
    graphdef: Any,
    state: Any,
    cache: KVCache,
    tokens: Array,
    *,
    slots: Array,
    starts: Array,
    num_real: Array,
    base_key: Array,
    request_ids: Array,
    temperature: Array,
    top_k: Array,
    top_p: Array,
    greedy: bool,
    filtered: bool,
) -> tuple[KVCache, Array, Array, Array]:
    """Writes ``tokens[r, :num_real[r]]`` into slot ``slots[r]`` at ``starts[r]``; samples each.

    Every row is computed exactly as it would be alone: rows only meet in shared matmuls, and
    each row's draw is keyed by its own request id (token 0 of that request).

    Args:
        graphdef: static model graphdef.
        state: the model's state (weights).
        cache: the engine's cache (donated).
        tokens: ``[R, P]`` int32, real tokens then padding.
        slots: ``[R]`` int32 distinct cache rows; ``B`` marks a padding row (writes nothing).
        starts: ``[R]`` int32 tokens each slot already holds for its context.
        num_real: ``[R]`` int32, ``1 <= num_real <= P`` for real rows (0 for padding).
        base_key: the engine's typed key.
        request_ids: ``[R]`` int32 request id of each row (the draw is token 0 of it).
        temperature: float32 scalar (see :func:`sample_tokens`).
        top_k: int32 scalar.
        top_p: float32 scalar.
        greedy: static sampling mode.
        filtered: static sampling mode.

    Returns:
        The cache, and ``[R]`` tokens, sampling log-probs and model log-probs drawn from the
        logits after each row's last real token.
    """
    model = nnx.merge(graphdef, state)
    r, p = tokens.shape
    offsets = jnp.arange(p, dtype=jnp.int32)[None, :]
    k, v, segments = _gather_rows(cache, slots)
    rows = KVCache(k=k, v=v, segment_ids=segments, index=starts.astype(jnp.int32))
    hidden, rows = model.hidden_states(
        tokens,
        positions=starts[:, None] + offsets,
        segment_ids=(offsets < num_real[:, None]).astype(jnp.int32),
        cache=rows,
    )
    assert rows is not None
    last = hidden[jnp.arange(r), jnp.maximum(num_real - 1, 0)]  # [R, D]
    keys = row_keys(base_key, request_ids, jnp.zeros((r,), jnp.int32))
    token, logp, model_logp = sample_tokens(
        model.logits(last),
        keys,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        filtered=filtered,
    )
    cache = _scatter_rows(cache, slots, rows.k, rows.v, rows.segment_ids, starts + num_real)
    return cache, token, logp, model_logp


@functools.partial(jax.jit, donate_argnames=("cache",))
def copy_rows(cache: KVCache, *, sources: Array, targets: Array, lengths: Array) -> KVCache:
    """Copies cache row ``sources[i]`` into row ``targets[i]``, all pairs at once.

    All reads happen before all writes, so a row may be a source of one pair and the target of
    another. The whole row is copied (see the module docstring for why that is safe); the
    target's write index is set to ``lengths[i]``, the shared prefix the host will extend.

    Args:
        cache: the engine's cache (donated).
        sources: ``[R]`` int32 rows to read.
        targets: ``[R]`` int32 distinct rows to write; ``B`` marks a padding pair.
        lengths: ``[R]`` int32 tokens of the prefix the target now holds.

    Returns:
        The cache.
    """
    k, v, segments = _gather_rows(cache, sources)
    return _scatter_rows(cache, targets, k, v, segments, lengths)


@functools.partial(
    jax.jit, static_argnames=(*_STATIC, "num_steps", "live_slots"), donate_argnames=("cache",)
)
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
    live_slots: int | None = None,
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
        live_slots: static; every active slot's index plus ``num_steps`` must not exceed it
            (the last query of the call sits at ``index + num_steps - 1``). Attention reads
            those slots only; None: the whole cache. Idle slots' outputs are garbage anyway.

    Returns:
        The cache and ``[num_steps, B]`` tokens, sampling log-probs and model log-probs.
    """
    model = nnx.merge(graphdef, state)
    segment = active.astype(jnp.int32)[:, None]  # [B, 1]

    def step(carry: tuple[KVCache, Array], i: Array) -> tuple[tuple[KVCache, Array], Any]:
        cache, last = carry
        hidden, new_cache = model.hidden_states(
            last[:, None],
            positions=cache.index[:, None],
            segment_ids=segment,
            cache=cache,
            live_slots=live_slots,
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
