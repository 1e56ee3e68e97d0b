"""Continuous batching over KV-cache slots, with multi-turn sessions and an asyncio front end.

The engine owns one :class:`KVCache` of ``num_slots`` rows. Requests (``generate`` calls) are
served FIFO: a request takes its session's slot, or a free one for a new session, is prefilled
(only the tokens the slot does not hold yet), then joins the shared decode steps. When it stops,
its result is delivered at once and the next waiting request can use a free slot, so short
requests are never held behind long ones.

Sessions: a session keeps its slot and KV cache between turns, so turn ``n``
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

Batched prefill: the requests admitted together are prefilled together, one device call per
chunk, prefill bucket and ``prefill_rows`` rows (padded to a power of two, see ``decode``). Each
row's draw is keyed by its own request and its arithmetic is that of the row alone, so it is the
draw the request would get alone (up to the rounding of matmuls of another shape). On CPU the
default is one row per call: batched rows were measured to cost more there.

Prefix reuse across sessions (``prefix_reuse=True``): the host records which tokens each cache
row holds and under which weights (an epoch bumped by every ``set_params``). A new session
starts from the longest prefix of its prompt that any row holds under the *current* weights: its
own (free) slot's costs nothing, another slot's (busy or free) is copied if that gains at least
``min_shared_prefix`` tokens. New sessions admitted together that share a prefix (the G
samples of an RL group, the system prompt of every task) get it prefilled once and copied,
level by level down their common-prefix tree. At least the prompt's last token is always
prefilled, since the first draw needs its logits. KV rows are copied, not shared, so there is no
reference counting and no eviction; ``stats`` counts prefilled and reused tokens.

Weights: :meth:`SamplingEngine.set_params` swaps them between device calls. A result's
``policy_version`` is the oldest version that sampled any of its tokens. The KV cache of earlier
turns of a running session is not recomputed after a swap (as in other in-flight-update
samplers), but it is never reused for a new session. (A swap from another thread while a new
session is being admitted acts like a swap right after its prefix was prefilled.)

Threading: the asyncio loop does all bookkeeping; only the decode call (device work plus the
device-to-host copy) runs in a worker thread so environments keep running meanwhile. Prefill
runs on the loop thread.

Non-goals: eviction/preemption, per-request sampling settings, paged (reference-counted) prefix
blocks, reuse of a prefix computed under other weights.
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

from mtrl_jax.sampler.config import PrefillStats, SamplerConfig, SampleResult, StopReason
from mtrl_jax.sampler.decode import (
    copy_rows,
    decode_steps,
    live_slot_buckets,
    prefill_chunk,
    row_bucket,
)
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


@dataclasses.dataclass
class _Row:
    """One row of a batched prefill: ``tokens`` into ``slot`` from position ``start``."""

    slot: int
    tokens: list[int]
    start: int
    request_id: int | None = None  # the draw's noise stream; None: a shared prefix, no draw


def _common_prefix(held: np.ndarray, prompt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[B]`` length of the common prefix of ``prompt`` ``[n]`` and each row of ``held``.

    ``held`` is ``[B, n]`` (rows cut to the prompt's length); row ``b`` counts only up to its
    ``valid[b]`` reusable tokens.
    """
    if prompt.size == 0:
        return np.zeros(held.shape[0], np.int64)
    equal = held == prompt[None, :]
    lengths = np.where(equal.all(axis=1), prompt.size, np.argmin(equal, axis=1))
    return np.minimum(lengths, valid)


def _plan_shares(prompts: Sequence[np.ndarray], min_len: int) -> list[list[tuple[list[int], int]]]:
    """Which groups of new sessions share a prefix, level by level (a walk of their prefix tree).

    A group of two or more prompts whose common prefix reaches at least ``min_len`` tokens past
    what its members already share gets that prefix prefilled once and copied. It then splits
    by the next token and each part is planned the same way, one level deeper (the copies of a
    level must land before the next level extends them).

    Args:
        prompts: the shareable tokens of each session (its prompt without the last token, which
            is always prefilled because the first draw needs its logits).
        min_len: the shortest shared segment worth a prefill and a copy.

    Returns:
        Per level, ``(member indices, shared prefix length)``; groups of one level are disjoint.

    >>> a, b, c = [7] * 20 + [1], [7] * 20 + [2], [7] * 20 + [2, 3]
    >>> _plan_shares([np.array(p) for p in (a, b, c)], min_len=16)
    [[([0, 1, 2], 20)]]
    """
    levels: list[list[tuple[list[int], int]]] = []
    # (members, prefix they will hold, prefix they share, level); members share >= 1 more token.
    stack = [(list(range(len(prompts))), 0, 0, 0)]
    while stack:
        members, held, depth, level = stack.pop()
        if len(members) < 2:
            continue
        first = prompts[members[0]][depth:]
        shared = depth + min(_prefix_length(first, prompts[m][depth:]) for m in members[1:])
        if shared - held >= min_len:
            levels.extend([] for _ in range(level + 1 - len(levels)))
            levels[level].append((members, shared))
            held, level = shared, level + 1
        parts: dict[int, list[int]] = {}
        for m in members:
            if len(prompts[m]) > shared:
                parts.setdefault(int(prompts[m][shared]), []).append(m)
        stack.extend((part, held, shared, level) for part in parts.values())
    return levels


def _prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token arrays."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


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
        prefix_reuse: start new sessions from KV rows that already hold a prefix of their
            prompt (see the module docstring); False prefills every new session from scratch
            (the reference path; the same draws up to float rounding).
        min_shared_prefix: the shortest prefix worth copying from another slot (a session's
            own slot is reused at any length).
        prefill_rows: most rows per prefill call. None: every slot on accelerators, where one
            call per chunk amortises launches and weight reads, but 1 on CPU, where rows
            batched together were measured to cost 1.4-4x more each (their ``[R, N, T, S]``
            attention intermediates outgrow the caches; ``benchmarks/bench_rollout_round.py``).
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
        prefix_reuse: bool = True,
        min_shared_prefix: int = 16,
        prefill_rows: int | None = None,
    ) -> None:
        if num_slots < 1 or max_len < 2 or decode_steps_per_call < 1 or min_shared_prefix < 1:
            raise ValueError(
                "need num_slots >= 1, max_len >= 2, decode_steps_per_call >= 1, "
                "min_shared_prefix >= 1"
            )
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
        self.live_slot_buckets = live_slot_buckets(self._cache.max_len, config.min_live_slots)
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
        self.prefix_reuse = prefix_reuse
        self.min_shared_prefix = min_shared_prefix
        if prefill_rows is None:
            prefill_rows = 1 if jax.default_backend() == "cpu" else num_slots
        if not 1 <= prefill_rows <= num_slots:
            raise ValueError(f"prefill_rows must be in [1, num_slots], got {prefill_rows}")
        self.prefill_rows = prefill_rows
        self.stats = PrefillStats()
        # Host record of each cache row for reuse by new sessions: the tokens it holds, and how
        # many leading ones were computed under the weights of epoch `_held_epoch[slot]`.
        self._epoch = 0  # bumped by every set_params (version numbers may repeat)
        self._held = np.zeros((num_slots, self._cache.max_len), np.int32)
        self._held_len = np.zeros(num_slots, np.int64)
        self._held_epoch = np.zeros(num_slots, np.int64)

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
        self._epoch += 1  # KV computed so far is never reused by a new session

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
            self._held_len[:] = 0  # the cache may hold anything now
            for request in failed:
                if self._sessions.get(request.session_id, _Session()).ending:
                    self.end_session(request.session_id)
            raise

    def _admit(self) -> None:
        """Starts every waiting request that has (or can take) a slot, in FIFO order."""
        waiting: deque[_Request] = deque()
        started: list[tuple[_Request, _Session]] = []
        while self._pending:
            request = self._pending.popleft()
            session = self._sessions[request.session_id]
            if session.slot is None and not self._free:
                waiting.append(request)
                continue
            try:
                # Limits first: a prompt that cannot fit finishes here and never takes a slot.
                if not self._prepare(request, session):
                    continue
                if session.slot is None:
                    session.slot = self._take_free_slot(request.new_tokens)
            except BaseException:
                # Keep every request in a queue so `_serve`'s failure handler reaches its caller.
                self._pending.appendleft(request)
                self._pending.extendleft(reversed(waiting))
                self._pending.extendleft(reversed([r for r, _ in started]))
                raise
            started.append((request, session))
        self._pending = waiting
        if started:
            try:
                self._prefill(started)
            except BaseException:
                # Started requests sit in neither queue until they run: put the undelivered ones
                # back so `_serve`'s failure handler reaches their callers too.
                limbo = [r for r, s in started if s.busy and self._running.get(s.slot) is not r]
                self._pending.extendleft(reversed(limbo))
                raise

    def _take_free_slot(self, prompt: Sequence[int]) -> int:
        """A free slot for a new session: the one holding most of its prompt (FIFO on ties)."""
        index = 0
        if self.prefix_reuse and len(prompt) > 1:
            shareable = np.asarray(prompt[:-1], np.int32)
            free = np.asarray(self._free)
            held = self._held[free, : shareable.size]
            index = int(np.argmax(_common_prefix(held, shareable, self._reusable()[free])))
        return self._free.pop(index)

    def _prepare(self, request: _Request, session: _Session) -> bool:
        """Sets the request's limits and noise stream; False if it finished without sampling."""
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
            return False
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
        return True

    def _prefill(self, started: list[tuple[_Request, _Session]]) -> None:
        """Prefills what each started request's slot lacks, together; takes the first draws."""
        if self.prefix_reuse:
            fresh = [session for _, session in started if session.cached == 0]
            self._reuse_held(fresh)
            self._share_prefixes(fresh)
        rows = [
            _Row(s.slot, s.context[s.cached :], s.cached, r.request_id)  # type: ignore[arg-type]
            for r, s in started
        ]
        draws = self._run_rows(rows)
        for (request, session), draw in zip(started, draws, strict=True):
            assert session.slot is not None and draw is not None
            session.cached = len(session.context)
            self._running[session.slot] = request
            self._token_index[session.slot] = 0
            self._request_ids[session.slot] = request.request_id
            self._accept(request, session, [draw], self._epoch)

    def _reusable(self) -> np.ndarray:
        """``[B]`` leading tokens of each row computed under the current weights."""
        return np.where(self._held_epoch == self._epoch, self._held_len, 0)

    def _reuse_held(self, sessions: list[_Session]) -> None:
        """Starts each new session from the longest reusable prefix any row holds.

        Decided on one snapshot of the rows and copied in one call before anything is written,
        so a row may serve as a source while its own new session overwrites it later.
        """
        reusable = self._reusable()
        copies: list[tuple[int, int, int]] = []
        for session in sessions:
            assert session.slot is not None
            prompt = np.asarray(session.context[:-1], np.int32)
            lengths = _common_prefix(self._held[:, : prompt.size], prompt, reusable)
            own, best = int(lengths[session.slot]), int(np.argmax(lengths))
            if lengths[best] - own >= self.min_shared_prefix:
                copies.append((best, session.slot, int(lengths[best])))
                session.cached = int(lengths[best])
            else:
                session.cached = own
                self._held_len[session.slot] = min(self._held_len[session.slot], own)
            self.stats.reused_tokens += session.cached
        self._copy(copies)

    def _share_prefixes(self, sessions: list[_Session]) -> None:
        """Prefills each prefix several new sessions share once and copies it to the others."""
        prompts = [np.asarray(s.context[:-1], np.int32) for s in sessions]
        for level in _plan_shares(prompts, self.min_shared_prefix):
            rows: list[_Row] = []
            copies: list[tuple[int, int, int]] = []
            for members, shared in level:
                group = [sessions[m] for m in members]
                leader = max(group, key=lambda s: s.cached)  # the member holding the most
                assert leader.slot is not None
                if leader.cached < shared:
                    rows.append(
                        _Row(leader.slot, leader.context[leader.cached : shared], leader.cached)
                    )
                    leader.cached = shared
                for session in group:
                    if session.cached < shared:
                        assert session.slot is not None
                        copies.append((leader.slot, session.slot, shared))
                        self.stats.reused_tokens += shared - session.cached
                        session.cached = shared
            self._run_rows(rows)
            self._copy(copies)

    def _run_rows(self, rows: list[_Row]) -> list[tuple[Any, Any, Any] | None]:
        """Prefills the rows (distinct slots); returns the draw after each row's last token.

        Rows longer than the largest bucket go in chunks of it. In each round of chunks, the
        rows whose chunk needs the same bucket share calls of up to ``prefill_rows`` rows; rows
        without a ``request_id`` get no draw (None) and cost no device-to-host copy.
        """
        # Epoch before weights: `set_params` writes the weights first, so a new epoch read here
        # implies new weights, and KV is never recorded under a newer epoch than computed it.
        epoch = self._epoch
        state = self._state
        largest = max(self.config.prefill_buckets)
        calls: list[tuple[Any, list[tuple[int, int]]]] = []  # outputs, (row, index in call)
        for offset in range(0, max((len(r.tokens) for r in rows), default=0), largest):
            by_bucket: dict[int, list[int]] = {}
            for i, row in enumerate(rows):
                left = len(row.tokens) - offset
                if left > 0:
                    by_bucket.setdefault(self.config.bucket_for(min(left, largest)), []).append(i)
            for bucket, same in by_bucket.items():
                for first in range(0, len(same), self.prefill_rows):
                    members = same[first : first + self.prefill_rows]
                    outputs = self._prefill_call(state, bucket, [rows[i] for i in members], offset)
                    last = [
                        (i, j)
                        for j, i in enumerate(members)
                        if len(rows[i].tokens) - offset <= largest
                        and rows[i].request_id is not None
                    ]
                    calls.append((outputs, last))
        draws: list[tuple[Any, Any, Any] | None] = [None] * len(rows)
        for outputs, last in calls:
            if last:
                tokens, logps, model_logps = (np.asarray(x) for x in outputs)
                for i, j in last:
                    draws[i] = (tokens[j], logps[j], model_logps[j])
        for row in rows:
            self._hold(row.slot, row.start, row.tokens, epoch)
        return draws

    def _prefill_call(
        self, state: Any, bucket: int, rows: list[_Row], offset: int
    ) -> tuple[Any, Any, Any]:
        """One device call: chunk ``offset`` of each row, padded to ``bucket`` tokens."""
        largest = max(self.config.prefill_buckets)
        size = row_bucket(len(rows), self.prefill_rows)
        tokens = np.zeros((size, bucket), np.int32)
        slots = np.full(size, self.num_slots, np.int32)  # padding rows write nowhere
        starts = np.zeros(size, np.int32)
        num_real = np.zeros(size, np.int32)
        request_ids = np.zeros(size, np.int32)
        for j, row in enumerate(rows):
            chunk = row.tokens[offset : offset + largest]
            tokens[j, : len(chunk)] = chunk
            slots[j], starts[j], num_real[j] = row.slot, row.start + offset, len(chunk)
            request_ids[j] = row.request_id or 0
        self.stats.prefilled_tokens += int(num_real.sum())
        self.stats.prefill_calls += 1
        self._cache, *outputs = prefill_chunk(
            self._graphdef,
            state,
            self._cache,
            tokens,
            slots=slots,
            starts=starts,
            num_real=num_real,
            base_key=self._key,
            request_ids=request_ids,
            **self._sampling,
        )
        return tuple(outputs)  # type: ignore[return-value]

    def _copy(self, copies: list[tuple[int, int, int]]) -> None:
        """Copies ``(source, target, length)`` rows in one call and records what targets hold."""
        if not copies:
            return
        size = row_bucket(len(copies), self.num_slots)
        sources = np.zeros(size, np.int32)
        targets = np.full(size, self.num_slots, np.int32)  # padding pairs write nowhere
        lengths = np.zeros(size, np.int32)
        for j, copy in enumerate(copies):
            sources[j], targets[j], lengths[j] = copy
        self._cache = copy_rows(self._cache, sources=sources, targets=targets, lengths=lengths)
        self.stats.copy_calls += 1
        # All reads before all writes, as on the device: a target may be another pair's source.
        held = [(self._held[src, :n].copy(), self._held_epoch[src]) for src, _, n in copies]
        for (_, target, length), (tokens, epoch) in zip(copies, held, strict=True):
            self._held[target, :length] = tokens
            self._held_len[target] = length
            self._held_epoch[target] = epoch

    def _hold(self, slot: int, start: int, tokens: Sequence[int], epoch: int) -> None:
        """Records that ``tokens`` were written into ``slot`` from ``start`` under ``epoch``."""
        if not tokens:
            return
        end = start + len(tokens)
        self._held[slot, start:end] = tokens
        if start == 0:
            self._held_epoch[slot] = epoch
        if start <= self._held_len[slot] and self._held_epoch[slot] == epoch:
            self._held_len[slot] = end
        else:  # the run of one epoch's tokens ends where other weights' tokens begin
            self._held_len[slot] = min(self._held_len[slot], start)

    def _dispatch_decode(self) -> tuple[Any, ...]:
        """One decode call over all slots; returns host arrays ``[steps, B]`` (thread-safe)."""
        active = np.zeros(self.num_slots, bool)
        active[list(self._running)] = True
        # Each running slot's cache index is its session's `cached`; the call's last query
        # sits `num_steps - 1` past it, and the cache has room for that (the slack).
        steps = self.decode_steps_per_call
        need = max(self._sessions[r.session_id].cached for r in self._running.values()) + steps
        live = next(n for n in self.live_slot_buckets if n >= need)
        version, epoch = self._version, self._epoch  # before the weights (see `_run_rows`)
        self._cache, tokens, logps, model_logps = decode_steps(
            self._graphdef,
            self._state,
            self._cache,
            self._last.copy(),
            active=active,
            request_ids=self._request_ids.copy(),
            token_index=self._token_index.copy(),
            base_key=self._key,
            num_steps=steps,
            live_slots=live,
            **self._sampling,
        )
        return version, epoch, np.asarray(tokens), np.asarray(logps), np.asarray(model_logps)

    def _consume(self, outputs: tuple[Any, ...]) -> None:
        version, epoch, tokens, logps, model_logps = outputs
        for slot, request in list(self._running.items()):
            request.result.policy_version = min(request.result.policy_version, version)
            session = self._sessions[request.session_id]
            steps = zip(tokens[:, slot], logps[:, slot], model_logps[:, slot], strict=True)
            self._accept(request, session, list(steps), epoch)

    def _accept(self, request: _Request, session: _Session, draws: list[Any], epoch: int) -> None:
        """Appends draws to the request until it stops; delivers it if it did.

        ``epoch`` is the weights epoch of the call that fed the tokens written now.
        """
        assert request.stopper is not None and session.slot is not None
        result = request.result
        fed_from = session.cached
        stopped = False
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
                stopped = True
                break
        # The last token was sampled but not fed yet: the cache holds all but it.
        session.cached = len(session.context) - 1
        self._hold(session.slot, fed_from, session.context[fed_from : session.cached], epoch)
        if stopped:
            del self._running[session.slot]
            self._finish(request, session)
            return
        self._last[session.slot] = result.tokens[-1]
        self._token_index[session.slot] = len(result.tokens) - 1

    def _finish(self, request: _Request, session: _Session) -> None:
        session.busy = False
        request.on_done(request.result)
        if session.ending:
            self.end_session(request.session_id)
