"""Drawing one token per row from logits: temperature, top-k, top-p, greedy.

Two log-probabilities come back with every token, and they answer different questions:

* ``logprob`` is ``log q(token)`` under the distribution the token was actually drawn from:
  ``softmax(logits / temperature)`` restricted to the top-k and top-p set and renormalised.
  For greedy decoding (``temperature == 0``) ``q`` is a point mass and ``logprob`` is ``0``.
* ``model_logprob`` is ``log p(token)`` under the raw model, ``log_softmax(logits)`` with no
  temperature and no filtering. The learner uses it as the behaviour log-prob (it is what the
  trainer's own forward pass recomputes, so the two can be compared token for token).

Randomness: each row gets its own key, built by the caller as
``fold_in(fold_in(base_key, request_counter), token_index)``, so a row's draw depends only on
which request it serves and which token it is, never on what else shares the batch, and no two
calls reuse noise.

Non-goals: min-p, repetition penalties, logit biases, speculative decoding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def row_keys(base_key: Array, request_ids: Array, token_index: Array) -> Array:
    """Per-row keys ``fold_in(fold_in(base_key, request_id), token_index)``.

    Args:
        base_key: the engine's typed PRNG key.
        request_ids: ``[B]`` int32 per-call counter of the request each row serves.
        token_index: ``[B]`` int32 index of the token being drawn within that request.

    Returns:
        ``[B]`` typed keys.
    """

    def one(request_id: Array, index: Array) -> Array:
        return jax.random.fold_in(jax.random.fold_in(base_key, request_id), index)

    return jax.vmap(one)(request_ids, token_index)


def sample_tokens(
    logits: Array,
    keys: Array,
    *,
    temperature: Array | float,
    top_k: Array | int,
    top_p: Array | float,
    greedy: bool,
    filtered: bool,
) -> tuple[Array, Array, Array]:
    """Draws one token per row.

    Args:
        logits: ``[B, V]`` float32 model logits.
        keys: ``[B]`` typed PRNG keys (see :func:`row_keys`).
        temperature: scalar > 0 (ignored when ``greedy``).
        top_k: scalar int, 0 = off (used only when ``filtered``).
        top_p: scalar in (0, 1] (used only when ``filtered``).
        greedy: static: argmax decoding.
        filtered: static: apply top-k/top-p. Off, the vocabulary is never sorted, which
            matters for 150k-token vocabularies.

    Returns:
        ``tokens`` ``[B]`` int32, sampling ``logprob`` ``[B]`` and ``model_logprob`` ``[B]``
        (float32; see the module docstring).
    """
    model_logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, V]
    if greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        chosen = jnp.take_along_axis(model_logp, tokens[:, None], axis=-1)[:, 0]
        return tokens, jnp.zeros_like(chosen), chosen
    scaled = logits.astype(jnp.float32) / temperature
    if filtered:
        scaled = _filter_top_k_top_p(scaled, top_k, top_p)
    sample_logp = jax.nn.log_softmax(scaled, axis=-1)
    tokens = jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)
    pick = tokens[:, None]
    return (
        tokens,
        jnp.take_along_axis(sample_logp, pick, axis=-1)[:, 0],
        jnp.take_along_axis(model_logp, pick, axis=-1)[:, 0],
    )


def _filter_top_k_top_p(scaled: Array, top_k: Array | int, top_p: Array | float) -> Array:
    """Sets logits outside the top-k / top-p set to ``-inf`` (``[B, V]`` -> ``[B, V]``).

    Ties at the boundary are kept (a token is dropped only if strictly less likely than the
    last kept one), so the kept set never depends on the sort's tie order.
    """
    vocab = scaled.shape[-1]
    sorted_logits = -jnp.sort(-scaled, axis=-1)  # [B, V] descending
    ranks = jnp.arange(vocab)[None, :]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    # Nucleus: keep sorted token i iff the mass strictly before it is < top_p (the first
    # token is always kept).
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = (ranks < k) & (mass_before < top_p)
    # The smallest kept logit is the threshold for the unsorted row.
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)
