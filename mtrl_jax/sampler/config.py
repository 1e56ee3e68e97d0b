"""Sampler configuration and the result record handed to the rollout engine.

:class:`SamplerConfig` holds everything that is fixed for an engine's lifetime: the sampling
distribution (temperature, top-k, top-p), default and per-episode token limits, and the prefill
shape buckets that bound recompilation. :class:`SampleResult` is the plain-data record of one
``generate`` call; :class:`PrefillStats` counts an engine's prefill work.

Non-goals: per-request sampling parameters (one engine samples one distribution; make a second
engine for evaluation settings), beam search, logit processors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StopReason = Literal["stop_token", "stop_string", "max_new_tokens", "context_full"]
STOP_REASONS: tuple[str, ...] = ("stop_token", "stop_string", "max_new_tokens", "context_full")


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How tokens are drawn and how shapes are bucketed.

    Attributes:
        temperature: logits are divided by it before top-k/top-p; ``0`` means greedy (argmax
            of the model's logits).
        top_k: keep the ``k`` most likely tokens; ``0`` disables the filter.
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``
            (nucleus sampling); ``1.0`` disables the filter. Applied after top-k.
        max_new_tokens: default per-turn limit when ``generate`` gets none.
        max_episode_tokens: per-session budget of *sampled* tokens over all turns (None: no
            budget). A turn that exhausts it stops with ``"max_new_tokens"``.
        prefill_buckets: new tokens are padded up to the smallest bucket that holds them;
            longer inputs are prefilled in chunks of the largest bucket. Each bucket is one
            compiled prefill program, so this tuple bounds prefill recompilation.
        cache_dtype: KV-cache storage dtype (None: the model's compute dtype).
        min_live_slots: decode steps attend only to the leading cache slots that can hold
            live keys, rounded up to a multiple of this number (128, 256, ...; at most 16
            multiples, more widely spaced for long caches; one compiled decode program each);
            0 attends to the whole cache every step.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_episode_tokens: int | None = None
    prefill_buckets: tuple[int, ...] = (16, 64, 256)
    cache_dtype: str | None = None
    min_live_slots: int = 128

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.max_episode_tokens is not None and self.max_episode_tokens <= 0:
            raise ValueError(f"max_episode_tokens must be positive, got {self.max_episode_tokens}")
        if self.min_live_slots < 0:
            raise ValueError(
                f"min_live_slots must be >= 0 (0: whole cache), got {self.min_live_slots}"
            )
        buckets = self.prefill_buckets
        if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"prefill_buckets must be positive and increasing, got {buckets}")

    @property
    def greedy(self) -> bool:
        """True when ``temperature == 0``."""
        return self.temperature == 0.0

    def bucket_for(self, num_tokens: int) -> int:
        """The padded length of a prefill chunk of ``num_tokens`` (``1 <= n <= max bucket``).

        >>> SamplerConfig(prefill_buckets=(4, 16)).bucket_for(5)
        16
        """
        for bucket in self.prefill_buckets:
            if num_tokens <= bucket:
                return bucket
        raise ValueError(f"{num_tokens} tokens exceed the largest bucket {self.prefill_buckets}")


@dataclass
class SampleResult:
    """What one ``generate`` call sampled.

    Attributes:
        tokens: sampled token ids, stop token or the token completing a stop string included.
        logprobs: ``log q(token)`` under the *sampling* distribution (after temperature,
            top-k and top-p; ``0.0`` for every greedy token, whose distribution is a point
            mass).
        model_logprobs: ``log p(token)`` under the raw model (log-softmax of the unscaled,
            unfiltered logits): the behaviour log-prob the learner's importance ratios use.
        policy_version: the oldest parameter version that sampled any of ``tokens`` (the
            version given to ``set_params``; conservative for staleness bounds).
        stop_reason: why the turn ended.
    """

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    model_logprobs: list[float] = field(default_factory=list)
    policy_version: int = 0
    stop_reason: StopReason = "max_new_tokens"


@dataclass
class PrefillStats:
    """Running totals of an engine's prompt work (reset it by assigning a fresh one).

    Every token a request needs in its slot before sampling is either prefilled or reused. A
    shared prefix prefilled once counts as prefilled for the session whose slot computed it and
    as reused for every session it was copied to, so ``prefilled_tokens + reused_tokens`` is the
    number of tokens all requests needed.

    Attributes:
        prefilled_tokens: real (unpadded) tokens run through the prefill program.
        reused_tokens: prompt tokens of new sessions taken from KV rows already computed under
            the current weights (held by the session's own slot, or copied) instead of
            prefilled for that session.
        prefill_calls: prefill device calls.
        copy_calls: row-copy device calls.
    """

    prefilled_tokens: int = 0
    reused_tokens: int = 0
    prefill_calls: int = 0
    copy_calls: int = 0
