"""Batched, jitted sampling with a KV cache: slots, sessions, continuous batching.

Public API::

    from mtrl_jax.sampler import SamplerConfig, SamplingEngine

    engine = SamplingEngine(model, num_slots=8, max_len=4096, tokenizer=tok,
                            config=SamplerConfig(temperature=1.0, top_p=0.95),
                            key=jax.random.key(0))
    result = await engine.generate("episode-0", prompt_ids, stop_strings=("</tool_call>",))
    result.tokens, result.logprobs, result.model_logprobs, result.stop_reason
    result = await engine.generate("episode-0", tool_output_ids)   # prefills only these
    engine.end_session("episode-0")                                # frees the slot
    engine.set_params(new_model_state, version=3)   # earlier KV is never reused by new sessions
    engine.stats.prefilled_tokens, engine.stats.reused_tokens   # prefix reuse across sessions
    results = engine.generate_batch([prompt_a, prompt_b], max_new_tokens=64)   # synchronous

Modules: ``config`` (SamplerConfig, SampleResult, PrefillStats), ``sampling``
(temperature/top-k/top-p and the two log-probs), ``decode`` (the compiled prefill, row-copy and
decode programs), ``stopping`` (stop tokens, stop strings, limits), ``engine`` (slots,
sessions, batched prefill, prefix reuse, the asyncio front end).

Non-goals: paged attention, speculative decoding, multi-host serving, an HTTP server.
"""

from mtrl_jax.sampler.config import (
    STOP_REASONS,
    PrefillStats,
    SamplerConfig,
    SampleResult,
    StopReason,
)
from mtrl_jax.sampler.decode import copy_rows, decode_steps, prefill_chunk, row_bucket
from mtrl_jax.sampler.engine import SamplingEngine
from mtrl_jax.sampler.sampling import row_keys, sample_tokens
from mtrl_jax.sampler.stopping import TurnStopper

__all__ = [
    "STOP_REASONS",
    "PrefillStats",
    "SampleResult",
    "SamplerConfig",
    "SamplingEngine",
    "StopReason",
    "TurnStopper",
    "copy_rows",
    "decode_steps",
    "prefill_chunk",
    "row_bucket",
    "row_keys",
    "sample_tokens",
]
