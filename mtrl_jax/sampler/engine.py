"""Continuous batching over KV-cache slots, with multi-turn sessions and an asyncio front end.

The engine owns one :class:`KVCache` of ``num_slots`` rows. Requests (``generate`` calls) are
served FIFO: a request takes its session's slot, or a free one for a new session, is prefilled
(only the tokens the slot does not hold yet), then joins the shared decode steps. When it stops,
its result is delivered at once and the next waiting request can use a free slot, so short
requests are never held behind long ones.

Sessions and prefix reuse: a session keeps its slot and KV cache between turns, so turn ``n``
prefills only the previous turn's last sampled token plus ``new_tokens``. The context the model
saw is exactly the concatenation of every ``new_tokens`` and every sampled token
(:meth:`SamplingEngine.context`). **Slot policy:** no eviction. A session holds its slot until
:meth:`SamplingEngine.end_session`; requests of new sessions wait while every slot is held. The
rollout engine must therefore end sessions (episodes) it is done with.

Randomness: each request gets a request id, by default the next value of a per-engine counter,
and its token ``i`` is drawn with ``fold_in(fold_in(key, request_id), i)``: repeated calls never
reuse noise, and a request's draws do not depend on what else is in the batch. Callers that need
draws independent of *arrival order* (which depends on thread scheduling when environments run
tools on worker threads) pass their own ``request_id``, unique under the current key, and move
to a fresh key with :meth:`SamplingEngine.set_key` between rounds (the trainer folds the step
into it), so a resumed run samples exactly what the uninterrupted run did.

Weights: :meth:`SamplingEngine.set_params` swaps them between device calls. A result's
``policy_version`` is the oldest version that sampled any of its tokens. The KV cache of earlier
turns is not recomputed after a swap (as in other in-flight-update samplers).

Threading: the asyncio loop does all bookkeeping; only the decode call (device work plus the
device-to-host copy) runs in a worker thread so environments keep running meanwhile. Prefill
runs on the loop thread.

Non-goals: eviction/preemption, per-request sampling settings, prefix sharing across sessions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtrl_jax.sampler.config import SamplerConfig, SampleResult, StopReason
from mtrl_jax.sampler.decode import decode_steps, prefill_chunk
from mtrl_jax.sampler.stopping import TurnStopper


@dataclasses.dataclass
class _Session:
    slot: int | None = None
    context: list[int] = dataclasses.field(default_factory=list)
    cached: int = 0  # tokens of `context` written into the slot's cache
    sampled: int = 0  # sampled tokens over all turns (episode budget)
    busy: bool = False
    ending: bool = False  # end_session was called during a call in flight: free at its end


@dataclasses.dataclass
class _Request:
    session_id: str
    new_tokens: list[int]
    max_new_tokens: int
    stop_token_ids: Sequence[int]
    stop_strings: Sequence[str]
    on_done: Callable[[SampleResult], None]
    on_error: Callable[[BaseException], None] | None = None
    request_id: int = -1  # -1: take the engine's counter when started
    stopper: TurnStopper | None = None
    result: SampleResult = dataclasses.field(default_factory=SampleResult)


class SamplingEngine:
    """Serves ``generate`` calls from many sessions over ``num_slots`` cache rows.

    Args:
        model: a :class:`~mtrl_jax.models.Decoder`.
        num_slots: rows of the KV cache (``B`` of every decode step).
        max_len: most tokens (prompts plus samples) one session's context may hold.
        tokenizer: ``decode(list[int]) -> str``, needed only for stop strings.
        config: sampling distribution, limits and prefill buckets.
        key: base PRNG key (typed or raw ``uint32[2]``).
        decode_steps_per_call: tokens per slot per decode call (``lax.scan`` inside one
            program). Larger amortises dispatch and host sync; a slot that stops mid-call wastes
            the rest of that call's steps.
    """

    def __init__(
        self,
        model: Any,
        *,
        num_slots: int,
        max_len: int,
        tokenizer: Any = None,
        config: SamplerConfig,
        key: jax.Array,
        decode_steps_per_call: int = 1,
    ) -> None:
        if num_slots < 1 or max_len < 2 or decode_steps_per_call < 1:
            raise ValueError("need num_slots >= 1, max_len >= 2, decode_steps_per_call >= 1")
        self.config = config
        self.num_slots = num_slots
        self.max_len = max_len
        self.tokenizer = tokenizer
        self.decode_steps_per_call = decode_steps_per_call
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        self._key = key
        self._graphdef, self._state = nnx.split(model)
        self._state_sharding: Any = None  # set by `place`; new weights are moved to it
        self._version = 0
        slack = max(config.prefill_buckets) + decode_steps_per_call
        self._cache = model.init_cache(num_slots, max_len + slack, config.cache_dtype)
        self._sampling = {
            "temperature": jnp.float32(config.temperature),
            "top_k": jnp.int32(config.top_k),
            "top_p": jnp.float32(config.top_p),
            "greedy": config.greedy,
            "filtered": config.top_k > 0 or config.top_p < 1.0,
        }
        self._sessions: dict[str, _Session] = {}
        self._free = list(range(num_slots))
        self._pending: deque[_Request] = deque()
        self._running: dict[int, _Request] = {}  # slot -> request
        self._counter = itertools.count()
        self._batch_ids = itertools.count()
        self._task: asyncio.Task[None] | None = None
        # Host mirror of the decode inputs, one entry per slot.
        self._last = np.zeros(num_slots, np.int32)
        self._request_ids = np.zeros(num_slots, np.int32)
        self._token_index = np.zeros(num_slots, np.int32)

    # ------------------------------------------------------------------------------ public

    def set_params(self, model_or_state: Any, version: int) -> None:
        """Uses new weights (a ``Decoder`` or its ``nnx.State``) from the next device call."""
        if isinstance(model_or_state, nnx.Module):
            graphdef, state = nnx.split(model_or_state)
            if graphdef != self._graphdef:
                raise ValueError("set_params needs a model of the same structure")
            model_or_state = state
        if self._state_sharding is not None:
            model_or_state = jax.device_put(model_or_state, self._state_sharding)
        self._state = model_or_state
        self._version = int(version)

    def place(self, state_sharding: Any, cache_sharding: Any) -> None:
        """Moves the weights and the KV cache to these shardings (e.g. onto a device mesh).

        Later :meth:`set_params` calls move new weights to ``state_sharding`` too. The jitted
        programs compile for the new layouts; the noise is keyed per request and token, so the
        tokens do not depend on the placement. Call it between device calls.

        Args:
            state_sharding: a pytree of shardings matching the model's ``nnx.State``.
            cache_sharding: a ``KVCache`` of shardings matching the engine's cache.
        """
        if self._running:
            raise RuntimeError("place while requests are running")
        self._state_sharding = state_sharding
        self._state = jax.device_put(self._state, state_sharding)
        self._cache = jax.device_put(self._cache, cache_sharding)

    def set_key(self, key: jax.Array) -> None:
        """Uses a new base PRNG key (typed or raw) for requests started from now on.

        Call it only between rounds, when no request is running: running requests draw their
        remaining tokens from the engine's current key. The default request counter restarts.
        """
        if self._running:
            raise RuntimeError("set_key while requests are running would change their noise")
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        self._key = key
        self._counter = itertools.count()

    def context(self, session_id: str) -> list[int]:
        """Every token the sampler saw for the session: all ``new_tokens`` and samples."""
        return list(self._sessions[session_id].context)

    def session_slot(self, session_id: str) -> int | None:
        """The cache row the session holds (None if it has none yet)."""
        session = self._sessions.get(session_id)
        return None if session is None else session.slot

    def end_session(self, session_id: str) -> None:
        """Forgets the session and frees its slot for waiting requests.

        If a call of the session is still in flight (its caller timed out or was cancelled),
        the session is ended as soon as that call finishes, so its slot is never leaked.
        """
        session = self._sessions.get(session_id)
        if session is None:
            return
        if session.busy:
            session.ending = True
            return
        del self._sessions[session_id]
        if session.slot is not None:
            self._free.append(session.slot)
        self._kick()

    async def generate(
        self,
        session_id: str,
        new_tokens: list[int],
        *,
        max_new_tokens: int | None = None,
        stop_token_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
        request_id: int | None = None,
    ) -> SampleResult:
        """Appends ``new_tokens`` to the session's context and samples the next turn.

        Concurrent calls (other sessions) share decode steps through a background task.

        Args:
            session_id: created on first use; reuse it for the next turn of the episode.
            new_tokens: tokens to add before sampling (prompt, or env text of this turn).
            max_new_tokens: turn limit (default ``config.max_new_tokens``).
            stop_token_ids: ids that end the turn (kept in the output).
            stop_strings: strings that end the turn (needs a tokenizer; see ``stopping``).
            request_id: the noise stream of this call, in ``[0, 2**31 - 1)``; the caller keeps
                it unique under the current key. None: the engine's counter.

        Returns:
            The sampled turn. If the context cannot hold ``new_tokens`` plus one sampled
            token (or the episode budget is spent), nothing is sampled, the session is left
            unchanged and ``stop_reason`` is ``"context_full"`` (or ``"max_new_tokens"``).
        """
        future: asyncio.Future[SampleResult] = asyncio.get_running_loop().create_future()

        def done(result: SampleResult) -> None:
            if not future.done():  # the caller may have been cancelled meanwhile
                future.set_result(result)

        def fail(error: BaseException) -> None:
            if not future.done():
                future.set_exception(error)

        if request_id is not None and not 0 <= request_id < 2**31 - 1:
            raise ValueError(f"request_id must be in [0, 2**31 - 1), got {request_id}")
        self._submit(session_id, new_tokens, max_new_tokens, stop_token_ids, stop_strings, done)
        self._pending[-1].on_error = fail
        if request_id is not None:
            self._pending[-1].request_id = request_id
        self._kick()
        return await future

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int | None = None,
        stop_token_ids: Sequence[int] = (),
        stop_strings: Sequence[str] = (),
    ) -> list[SampleResult]:
        """Synchronously samples one turn per prompt, each in a throwaway session.

        Slots are refilled as soon as a prompt finishes. Not for use while async calls run.
        """
        if self._task is not None and not self._task.done():
            raise RuntimeError("generate_batch cannot run while async generate calls are served")
        results: list[SampleResult | None] = [None] * len(prompts)
        batch = next(self._batch_ids)
        for i, prompt in enumerate(prompts):
            sid = f"__batch{batch}_{i}"

            def done(result: SampleResult, i: int = i, sid: str = sid) -> None:
                results[i] = result
                self._sessions[sid].busy = False
                self.end_session(sid)

            self._submit(sid, list(prompt), max_new_tokens, stop_token_ids, stop_strings, done)
        while self._pending or self._running:
            self._admit()
            if self._running:
                self._consume(self._dispatch_decode())
        return [r for r in results if r is not None]

    # ---------------------------------------------------------------------------- internal

    def _submit(
        self,
        session_id: str,
        new_tokens: Sequence[int],
        max_new_tokens: int | None,
        stop_token_ids: Sequence[int],
        stop_strings: Sequence[str],
        on_done: Callable[[SampleResult], None],
    ) -> None:
        # Caller errors are raised here, before the request can fail a shared device call.
        if stop_strings and self.tokenizer is None:
            raise ValueError("stop_strings need a tokenizer (pass tokenizer= to the engine)")
        if not new_tokens and not self._sessions.get(session_id, _Session()).context:
            raise ValueError(f"session {session_id!r} has no context: pass new_tokens")
        session = self._sessions.setdefault(session_id, _Session())
        if session.busy:
            raise RuntimeError(f"session {session_id!r} already has a generate call in flight")
        session.busy = True
        limit = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        request = _Request(
            session_id, [int(t) for t in new_tokens], limit, stop_token_ids, stop_strings, on_done
        )
        self._pending.append(request)

    def _kick(self) -> None:
        """Starts the background task when there is work and an event loop to run it."""
        if not self._pending or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # synchronous caller (generate_batch drives the work itself)
        self._task = loop.create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while self._pending or self._running:
                self._admit()
                if not self._running:
                    return  # everything waiting needs a slot; end_session restarts us
                self._consume(await asyncio.to_thread(self._dispatch_decode))
        except BaseException as error:
            # A failed device call leaves the cache in an unknown state: fail every caller
            # rather than leave their awaits hanging.
            failed = [*self._running.values(), *self._pending]
            for request in failed:
                self._sessions[request.session_id].busy = False
                if request.on_error is not None:
                    request.on_error(error)
            self._running.clear()
            self._pending.clear()
            for request in failed:
                if self._sessions.get(request.session_id, _Session()).ending:
                    self.end_session(request.session_id)
            raise

    def _admit(self) -> None:
        """Starts every waiting request that has (or can take) a slot, in FIFO order."""
        waiting: deque[_Request] = deque()
        while self._pending:
            request = self._pending.popleft()
            session = self._sessions[request.session_id]
            if session.slot is None:
                if not self._free:
                    waiting.append(request)
                    continue
                session.slot = self._free.pop(0)
            self._start(request, session)
        self._pending = waiting

    def _start(self, request: _Request, session: _Session) -> None:
        request.result.policy_version = self._version
        context_after = len(session.context) + len(request.new_tokens)
        budget = self.config.max_episode_tokens
        room = self.max_len - context_after
        limit = request.max_new_tokens
        if budget is not None:
            limit = min(limit, budget - session.sampled)
        reason: StopReason = "context_full" if room < limit else "max_new_tokens"
        limit = min(limit, room)
        if limit < 1:
            request.result.stop_reason = reason
            self._finish(request, session)
            return
        request.stopper = TurnStopper(
            request.stop_token_ids,
            request.stop_strings,
            limit=limit,
            limit_reason=reason,
            tokenizer=self.tokenizer,
        )
        if request.request_id < 0:
            request.request_id = next(self._counter) % (2**31 - 1)
        session.context.extend(request.new_tokens)
        todo = session.context[session.cached :]
        largest = max(self.config.prefill_buckets)
        assert session.slot is not None
        for begin in range(0, len(todo), largest):
            chunk = todo[begin : begin + largest]
            padded = np.zeros((1, self.config.bucket_for(len(chunk))), np.int32)
            padded[0, : len(chunk)] = chunk
            self._cache, token, logp, model_logp = prefill_chunk(
                self._graphdef,
                self._state,
                self._cache,
                padded,
                slot=jnp.int32(session.slot),
                start=jnp.int32(session.cached + begin),
                num_real=jnp.int32(len(chunk)),
                base_key=self._key,
                request_id=jnp.int32(request.request_id),
                **self._sampling,
            )
        session.cached = len(session.context)
        self._running[session.slot] = request
        self._token_index[session.slot] = 0
        self._request_ids[session.slot] = request.request_id
        self._accept(request, session, [(token[0], logp[0], model_logp[0])])

    def _dispatch_decode(self) -> tuple[Any, ...]:
        """One decode call over all slots; returns host arrays ``[steps, B]`` (thread-safe)."""
        active = np.zeros(self.num_slots, bool)
        active[list(self._running)] = True
        version = self._version
        self._cache, tokens, logps, model_logps = decode_steps(
            self._graphdef,
            self._state,
            self._cache,
            self._last.copy(),
            active=active,
            request_ids=self._request_ids.copy(),
            token_index=self._token_index.copy(),
            base_key=self._key,
            num_steps=self.decode_steps_per_call,
            **self._sampling,
        )
        return version, np.asarray(tokens), np.asarray(logps), np.asarray(model_logps)

    def _consume(self, outputs: tuple[Any, ...]) -> None:
        version, tokens, logps, model_logps = outputs
        for slot, request in list(self._running.items()):
            request.result.policy_version = min(request.result.policy_version, version)
            session = self._sessions[request.session_id]
            steps = zip(tokens[:, slot], logps[:, slot], model_logps[:, slot], strict=True)
            self._accept(request, session, list(steps))

    def _accept(self, request: _Request, session: _Session, draws: list[Any]) -> None:
        """Appends draws to the request until it stops; delivers it if it did."""
        assert request.stopper is not None and session.slot is not None
        result = request.result
        for token, logp, model_logp in draws:
            token = int(token)
            reason = request.stopper.push(token)
            result.tokens.append(token)
            result.logprobs.append(float(logp))
            result.model_logprobs.append(float(model_logp))
            session.context.append(token)
            session.sampled += 1
            if reason is not None:
                result.stop_reason = reason
                # The final token was sampled but never fed: the cache holds all but it.
                session.cached = len(session.context) - 1
                del self._running[session.slot]
                self._finish(request, session)
                return
        session.cached = len(session.context) - 1
        self._last[session.slot] = result.tokens[-1]
        self._token_index[session.slot] = len(result.tokens) - 1

    def _finish(self, request: _Request, session: _Session) -> None:
        session.busy = False
        request.on_done(request.result)
        if session.ending:
            self.end_session(request.session_id)
