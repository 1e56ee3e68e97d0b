# ruff: noqa: F722
# (F722: jaxtyping shape strings such as "B T" are not Python expressions.)
"""Token-level policy losses, sampler-mismatch corrections, KL and entropy terms, aggregation.

Three log-probs per sampled token meet here: ``logp`` (current params, differentiated),
``old_logp`` (the trainer's params before this round of updates) and ``behaviour_logp`` (the
sampler that produced the token; it may run another numerics stack or an older policy version).
Policy losses use the ratio ``r = pi / pi_old``; the sampler/trainer mismatch ``pi_old / mu`` is
corrected separately by an importance weight (``is_correction``), so every loss composes with
every correction. All three are chosen by name from small registries:

- ``POLICY_LOSSES``: ``ppo`` (asymmetric clip, optional dual clip), ``cispo``, ``is``.
- ``IS_CORRECTIONS``: ``none``, ``token``, ``sequence`` (truncated at ``is_cap``).
- ``KL_ESTIMATORS``: ``k1``, ``k2``, ``k3``.

``compute_loss`` combines them and aggregates per-token terms with one of four modes; it takes
the normalisers (token and sequence counts) as arguments so that gradient accumulation over
micro-batches sums to exactly the full-batch gradient.

Non-goals: value losses (no critic), sequence-level ratios in the policy loss (GSPO).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp

from mtrl_jax.registry import Registry
from mtrl_jax.types import Array, Float, Int, TrainBatch

Aggregation = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
]
PolicyLossFn = Callable[..., tuple[Float[Array, "B T"], dict[str, Float[Array, "B T"]]]]
CorrectionFn = Callable[..., tuple[Float[Array, "B T"], Float[Array, "B T"]]]
KLFn = Callable[[Float[Array, "B T"], Float[Array, "B T"]], Float[Array, "B T"]]

POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
IS_CORRECTIONS: Registry[CorrectionFn] = Registry("IS correction")
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
    """The objective: policy loss, mismatch correction, regularisers and aggregation.

    Attributes:
        policy_loss: ``ppo``, ``cispo`` or ``is`` (registry names); ``nll`` is supervised
            fine-tuning (``mtrl sft``).
        clip_low: PPO lower clip, ``r >= 1 - clip_low``.
        clip_high: PPO upper clip, ``r <= 1 + clip_high`` (DAPO's clip-higher uses 0.28).
        dual_clip_c: PPO dual clip for negative advantages (``> 1``, commonly 3), or None.
        cispo_clip_low: CISPO lower bound on the IS weight ``1 - cispo_clip_low``; None (the
            MiniMax-M1 choice) leaves it unbounded below.
        cispo_clip_high: CISPO upper bound ``1 + cispo_clip_high``.
        is_correction: ``none``, ``token`` or ``sequence`` weight ``pi_old / mu``.
        is_cap: truncation ``C`` of that weight; None (token level only) leaves it untruncated.
        kl_coef: weight of the KL penalty to the reference policy (needs ``ref_logp``).
        kl_estimator: ``k1``, ``k2`` or ``k3``.
        entropy_coef: weight of the entropy bonus (subtracted from the loss).
        aggregation: ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum`` or
            ``seq-mean-token-sum-norm`` (Dr. GRPO); a sequence is a segment of a packed row.
            See :func:`token_weights`.
        norm_tokens: the constant ``C`` of ``seq-mean-token-sum-norm`` (required there, unused
            otherwise): Dr. GRPO uses the longest generation allowed, e.g. the rollout's
            sampled-token limit of one sequence.
    """

    policy_loss: str = "ppo"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip_c: float | None = None
    cispo_clip_low: float | None = None
    cispo_clip_high: float = 0.2
    is_correction: str = "none"
    is_cap: float | None = 2.0
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    aggregation: Aggregation = "token-mean"
    norm_tokens: int | None = None

    def __post_init__(self) -> None:
        POLICY_LOSSES.check(self.policy_loss)
        IS_CORRECTIONS.check(self.is_correction)
        KL_ESTIMATORS.check(self.kl_estimator)
        if self.aggregation not in get_args(Aggregation):
            raise ValueError(f"aggregation must be one of {get_args(Aggregation)}")
        normed = self.aggregation == "seq-mean-token-sum-norm"
        if normed and self.norm_tokens is None:
            raise ValueError("aggregation seq-mean-token-sum-norm needs norm_tokens (its C)")
        if not normed and self.norm_tokens is not None:
            raise ValueError(
                f"norm_tokens is only used with aggregation seq-mean-token-sum-norm, "
                f"got aggregation {self.aggregation!r}"
            )
        if self.norm_tokens is not None and self.norm_tokens < 1:
            raise ValueError(f"norm_tokens must be >= 1, got {self.norm_tokens}")
        if not (0.0 <= self.clip_low < 1.0 and self.clip_high >= 0.0):
            raise ValueError("need 0 <= clip_low < 1 and clip_high >= 0")
        if self.dual_clip_c is not None and not self.dual_clip_c > 1.0:
            raise ValueError(f"dual_clip_c must be > 1, got {self.dual_clip_c}")
        if self.cispo_clip_low is not None and not 0.0 <= self.cispo_clip_low <= 1.0:
            raise ValueError("cispo_clip_low must be in [0, 1] or None")
        if not self.cispo_clip_high >= 0.0:
            raise ValueError("cispo_clip_high must be >= 0")
        if self.is_cap is not None and not self.is_cap > 0.0:
            raise ValueError(f"is_cap must be > 0, got {self.is_cap}")
        if self.is_correction == "sequence" and self.is_cap is None:
            raise ValueError("sequence-level IS needs is_cap: an untruncated product overflows")
        if self.kl_coef < 0.0 or self.entropy_coef < 0.0:
            raise ValueError("kl_coef and entropy_coef must be >= 0")


def _log_ratio(a: Array, b: Array, loss_mask: Array) -> Array:
    """``a - b`` on loss tokens and 0 elsewhere, so ``exp`` never overflows in padding."""
    return jnp.where(loss_mask > 0, a - b, 0.0)


# --- policy losses: (logp, old_logp, advantages, loss_mask, cfg) -> (loss [B, T], stats) -----


@POLICY_LOSSES.register("ppo")
def ppo_clip_loss(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, "B T"],
    loss_mask: Float[Array, "B T"],
    cfg: LossConfig,
) -> tuple[Float[Array, "B T"], dict[str, Float[Array, "B T"]]]:
    """PPO clipped surrogate with asymmetric bounds and optional dual clip, per token.

    ``l_t = max(-A_t r_t, -A_t clip(r_t, 1 - eps_low, 1 + eps_high))``, ``r_t = pi/pi_old``
    (Schulman et al. 2017, arXiv 1707.06347; decoupled ``eps_low``/``eps_high`` from DAPO, Yu et
    al. 2025, arXiv 2503.14476). Dual clip bounds the loss of negative advantages:
    ``l_t = min(l_t, -c A_t)`` where ``A_t < 0`` (Ye et al. 2020, arXiv 1912.09729). The gradient
    is zero where a bound is active: ``A > 0, r > 1 + eps_high``; ``A < 0, r < 1 - eps_low``;
    ``A < 0, r > c``.
    """
    ratio = jnp.exp(_log_ratio(logp, old_logp, loss_mask))
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = jnp.maximum(unclipped, clipped)
    clip_high = (advantages > 0) & (ratio > 1.0 + cfg.clip_high)
    clip_low = (advantages < 0) & (ratio < 1.0 - cfg.clip_low)
    dual = jnp.zeros_like(clip_low)
    if cfg.dual_clip_c is not None:
        loss = jnp.where(advantages < 0, jnp.minimum(loss, -cfg.dual_clip_c * advantages), loss)
        dual = (advantages < 0) & (ratio > cfg.dual_clip_c)
    stats = {
        "policy/clipfrac": (clip_low | clip_high).astype(jnp.float32),
        "policy/clipfrac_low": clip_low.astype(jnp.float32),
        "policy/clipfrac_high": clip_high.astype(jnp.float32),
        "policy/dual_clipfrac": dual.astype(jnp.float32),
    }
    return loss, stats


@POLICY_LOSSES.register("cispo")
def cispo_loss(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, "B T"],
    loss_mask: Float[Array, "B T"],
    cfg: LossConfig,
) -> tuple[Float[Array, "B T"], dict[str, Float[Array, "B T"]]]:
    """CISPO: clip the IS weight, not the update, so every token keeps a gradient.

    ``l_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A_t log pi(o_t)`` with ``sg`` the stop
    gradient (MiniMax-M1, arXiv 2506.13585, eq. 4-5). The gradient ``-w_t A_t grad log pi`` flows
    through the log-prob only, and is nonzero for clipped tokens too, unlike PPO's.
    """
    ratio = jnp.exp(_log_ratio(logp, old_logp, loss_mask))
    low = 0.0 if cfg.cispo_clip_low is None else 1.0 - cfg.cispo_clip_low
    weight = jax.lax.stop_gradient(jnp.clip(ratio, low, 1.0 + cfg.cispo_clip_high))
    loss = -weight * advantages * logp
    high = ratio > 1.0 + cfg.cispo_clip_high
    below = ratio < low
    zero = jnp.zeros_like(ratio)
    stats = {
        "policy/clipfrac": (below | high).astype(jnp.float32),
        "policy/clipfrac_low": below.astype(jnp.float32),
        "policy/clipfrac_high": high.astype(jnp.float32),
        "policy/dual_clipfrac": zero,
    }
    return loss, stats


def _no_clip_stats(like: Array) -> dict[str, Array]:
    """The clip-fraction stats of a loss that never clips: zeros shaped like ``like``."""
    zero = jnp.zeros_like(like)
    names = ("clipfrac", "clipfrac_low", "clipfrac_high", "dual_clipfrac")
    return {f"policy/{name}": zero for name in names}


@POLICY_LOSSES.register("is")
def is_policy_loss(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, "B T"],
    loss_mask: Float[Array, "B T"],
    cfg: LossConfig,
) -> tuple[Float[Array, "B T"], dict[str, Float[Array, "B T"]]]:
    """Unclipped importance-sampled policy gradient, per token.

    ``l_t = -r_t A_t`` with ``r_t = pi/pi_old``, whose gradient ``-r_t A_t grad log pi`` is the
    off-policy REINFORCE estimator (Precup et al. 2000; Degris et al. 2012, arXiv 1205.4839;
    the token-level approximation of e.g. Tunix/verl "vanilla" losses). Combined with
    ``is_correction="token"`` and ``is_cap=None`` the full weight is ``pi/mu``, importance
    sampling from the behaviour policy; with a cap it is truncated IS (TIS).
    """
    del cfg
    ratio = jnp.exp(_log_ratio(logp, old_logp, loss_mask))
    return -ratio * advantages, _no_clip_stats(ratio)


@POLICY_LOSSES.register("nll")
def nll_loss(
    logp: Float[Array, "B T"],
    old_logp: Float[Array, "B T"],
    advantages: Float[Array, "B T"],
    loss_mask: Float[Array, "B T"],
    cfg: LossConfig,
) -> tuple[Float[Array, "B T"], dict[str, Float[Array, "B T"]]]:
    """Negative log-likelihood of the masked tokens: supervised fine-tuning.

    ``l_t = -log pi(o_t)``. Advantages and old log-probs are ignored: every masked token is a
    demonstration to imitate (``mtrl sft`` on oracle episodes or recorded trajectories). It is
    the on-policy REINFORCE gradient with ``A = 1`` on data the policy did not sample, i.e.
    behaviour cloning; use it for warm starts, not for RL.
    """
    del old_logp, advantages, loss_mask, cfg
    return -logp, _no_clip_stats(logp)


# --- sampler/trainer mismatch: (old_logp, behaviour_logp, mask, segment_ids, cfg) -> weight --


@IS_CORRECTIONS.register("none")
def no_correction(
    old_logp: Float[Array, "B T"],
    behaviour_logp: Float[Array, "B T"],
    loss_mask: Float[Array, "B T"],
    segment_ids: Int[Array, "B T"],
    cfg: LossConfig,
) -> tuple[Float[Array, "B T"], Float[Array, "B T"]]:
    """No correction: weight 1 (treats the sampler as the old policy). Returns (weight, 0)."""
    del behaviour_logp, loss_mask, segment_ids, cfg
    return jnp.ones_like(old_logp), jnp.zeros_like(old_logp)


@IS_CORRECTIONS.register("token")
def token_tis(
    old_logp: Float[Array, "B T"],
    behaviour_logp: Float[Array, "B T"],
    loss_mask: Float[Array, "B T"],
    segment_ids: Int[Array, "B T"],
    cfg: LossConfig,
) -> tuple[Float[Array, "B T"], Float[Array, "B T"]]:
    """Token-level truncated IS for the sampler/trainer mismatch: ``w_t = min(pi_old/mu, C)``.

    Multiplies each token's policy loss (Yao et al. 2025, "Your Efficient RL Framework Secretly
    Brings You Off-Policy RL Training", TIS; truncation after Ionides 2008, "Truncated
    Importance Sampling"). ``C = None`` gives plain IS. Returns (weight, truncated indicator).
    """
    del segment_ids
    ratio = jnp.exp(_log_ratio(old_logp, behaviour_logp, loss_mask))
    if cfg.is_cap is None:
        return ratio, jnp.zeros_like(ratio)
    return jnp.minimum(ratio, cfg.is_cap), (ratio > cfg.is_cap).astype(jnp.float32)


@IS_CORRECTIONS.register("sequence")
def sequence_tis(
    old_logp: Float[Array, "B T"],
    behaviour_logp: Float[Array, "B T"],
    loss_mask: Float[Array, "B T"],
    segment_ids: Int[Array, "B T"],
    cfg: LossConfig,
) -> tuple[Float[Array, "B T"], Float[Array, "B T"]]:
    """Sequence-level truncated IS: ``w_s = min(prod_{t in s} pi_old(o_t)/mu(o_t), C)``.

    One weight per segment (a trajectory), over its sampled tokens only, given to all of them
    (sequence-level TIS as in Liu, Li et al. 2025, "When Speed Kills Stability: Demystifying RL
    Collapse from the Training-Inference Mismatch"; Yao et al. 2025). Computed in log space and
    truncated there, so the product never overflows. Returns (weight, truncated indicator).
    """
    assert cfg.is_cap is not None  # LossConfig guarantees it
    log_w = _per_segment_sum(_log_ratio(old_logp, behaviour_logp, loss_mask), segment_ids)
    log_cap = jnp.log(cfg.is_cap)
    weight = jnp.exp(jnp.minimum(log_w, log_cap))
    return weight, (log_w > log_cap).astype(jnp.float32)


# --- KL to the reference policy: per-token estimators of KL(pi || pi_ref) ---------------------


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Float[Array, "B T"], ref_logp: Float[Array, "B T"]) -> Float[Array, "B T"]:
    """``k1 = log pi - log pi_ref`` (unbiased, high variance; Schulman 2020, "Approximating KL")."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Float[Array, "B T"], ref_logp: Float[Array, "B T"]) -> Float[Array, "B T"]:
    """``k2 = (log pi_ref - log pi)^2 / 2`` (biased, low variance; Schulman 2020)."""
    return 0.5 * (ref_logp - logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Float[Array, "B T"], ref_logp: Float[Array, "B T"]) -> Float[Array, "B T"]:
    """``k3 = pi_ref/pi - 1 - log(pi_ref/pi)`` (unbiased, >= 0; Schulman 2020; GRPO's KL)."""
    delta = ref_logp - logp
    return jnp.expm1(delta) - delta  # expm1: exp(d) - 1 would lose the small-d digits first


# --- aggregation ------------------------------------------------------------------------------


class LossDenominators(NamedTuple):
    """Normalisers of the aggregated loss, taken over the *full* batch before micro-batching.

    Attributes:
        num_tokens: number of loss tokens (``sum(loss_mask)``).
        num_seqs: number of segments holding at least one loss token.
    """

    num_tokens: Float[Array, ""]
    num_seqs: Float[Array, ""]


def _segment_buckets(segment_ids: Int[Array, "B T"]) -> tuple[Int[Array, "B T"], int]:
    """A batch-wide bucket per (row, segment): ``row * (T + 1) + segment_id``, and their count.

    Segment ids are row-local and ``<= T``, so buckets of different rows never collide.
    """
    b, t = segment_ids.shape
    return jnp.arange(b)[:, None] * (t + 1) + segment_ids, b * (t + 1)


def _per_segment_sum(values: Float[Array, "B T"], segment_ids: Int[Array, "B T"]) -> Array:
    """For every slot, the sum of ``values`` over its segment."""
    index, num = _segment_buckets(segment_ids)
    sums = jax.ops.segment_sum(values.reshape(-1), index.reshape(-1), num_segments=num)
    return sums[index]


def loss_denominators(
    loss_mask: Float[Array, "B T"], segment_ids: Int[Array, "B T"]
) -> LossDenominators:
    """Counts loss tokens and sequences (segments with a loss token) in a batch."""
    index, num = _segment_buckets(segment_ids)
    per_segment = jax.ops.segment_sum(loss_mask.reshape(-1), index.reshape(-1), num_segments=num)
    return LossDenominators(loss_mask.sum(), (per_segment > 0).sum().astype(jnp.float32))


def token_weights(
    loss_mask: Float[Array, "B T"],
    segment_ids: Int[Array, "B T"],
    aggregation: Aggregation,
    denominators: LossDenominators,
    norm_tokens: int | None = None,
) -> Float[Array, "B T"]:
    """Per-token weights ``w`` such that the aggregated loss is ``sum_t w_t l_t``.

    - ``token-mean``: ``w_t = m_t / N_tokens`` (every token counts the same; DAPO).
    - ``seq-mean-token-mean``: ``w_t = m_t / (n_s N_seqs)`` (each sequence's mean, then the mean
      over sequences: the original GRPO).
    - ``seq-mean-token-sum``: ``w_t = m_t / N_seqs`` (sum over a sequence's tokens, mean over
      sequences).
    - ``seq-mean-token-sum-norm``: ``w_t = m_t / (C N_seqs)`` with ``C = norm_tokens`` a
      constant: the sum over a sequence's tokens divided by ``C``, mean over sequences (Dr.
      GRPO, Liu et al. 2025, arXiv 2503.20783). Unlike ``1 / n_s``, a constant gives every token
      the same weight whatever its sequence's length, so long wrong answers are not punished
      less per token than short ones; unlike ``token-mean``, a token's weight does not depend
      on how long the *other* sequences of the batch are.

    ``m`` is the loss mask, ``n_s`` the loss tokens of ``t``'s segment. Counts come from
    ``denominators`` so that micro-batch losses add up to the full-batch loss.
    """
    if aggregation == "token-mean":
        return loss_mask / jnp.maximum(denominators.num_tokens, 1.0)
    seqs = jnp.maximum(denominators.num_seqs, 1.0)
    if aggregation == "seq-mean-token-sum":
        return loss_mask / seqs
    if aggregation == "seq-mean-token-sum-norm":
        if norm_tokens is None:
            raise ValueError("seq-mean-token-sum-norm needs norm_tokens")
        return loss_mask / (seqs * norm_tokens)
    seg_tokens = _per_segment_sum(loss_mask, segment_ids)
    return loss_mask / (jnp.maximum(seg_tokens, 1.0) * seqs)


def _ratio_metrics(
    logp: Float[Array, "B T"],
    batch: TrainBatch,
    is_weight: Float[Array, "B T"],
    truncated: Float[Array, "B T"],
    token_mean: Float[Array, "B T"],
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Token-mean (additive) and max metrics of ``pi/pi_old`` and of the mismatch ``pi_old/mu``.

    ``policy/approx_kl`` is ``k3`` of KL(pi_old || pi): ``r - 1 - log r`` (Schulman 2020).
    """
    mask = batch.loss_mask
    log_ratio = jax.lax.stop_gradient(_log_ratio(logp, batch.old_logp, mask))
    ratio = jnp.exp(log_ratio)
    mismatch = jnp.exp(_log_ratio(batch.old_logp, batch.behaviour_logp, mask))
    sums = {
        "policy/ratio_mean": (token_mean * ratio).sum(),
        "policy/approx_kl": (token_mean * (ratio - 1.0 - log_ratio)).sum(),
        "is/ratio_mean": (token_mean * mismatch).sum(),
        "is/weight_mean": (token_mean * is_weight).sum(),
        "is/truncated_frac": (token_mean * truncated).sum(),
    }
    maxes = {
        "policy/ratio_max": jnp.where(mask > 0, ratio, 0.0).max(),
        "is/ratio_max": jnp.where(mask > 0, mismatch, 0.0).max(),
        "is/weight_max": jnp.where(mask > 0, is_weight, 0.0).max(),
    }
    return sums, maxes


def compute_loss(
    logp: Float[Array, "B T"],
    entropy: Float[Array, "B T"] | None,
    batch: TrainBatch,
    cfg: LossConfig,
    denominators: LossDenominators,
) -> tuple[Float[Array, ""], dict[str, Array], dict[str, Array]]:
    """The total loss of a (micro-)batch and its metrics.

    ``L = sum_t w_t (c_t l_t + beta k_t - alpha H_t)``: ``w`` the aggregation weights, ``l`` the
    policy loss, ``c`` the mismatch IS weight, ``k`` the KL estimate, ``H`` the entropy.

    Returns:
        ``(loss, sums, maxes)``: ``sums`` are additive over micro-batches (each already divided
        by the full-batch normaliser), ``maxes`` combine by ``max``. Names: ``loss/{total,
        policy,kl,entropy}`` (each part as it enters the total), ``policy/{clipfrac,
        clipfrac_low,clipfrac_high,dual_clipfrac,approx_kl,ratio_mean,ratio_max,entropy,
        kl_ref}``, ``is/{ratio_mean,ratio_max,weight_mean,weight_max,truncated_frac}``.
    """
    mask, seg = batch.loss_mask, batch.segment_ids
    weights = token_weights(mask, seg, cfg.aggregation, denominators, cfg.norm_tokens)
    token_mean = mask / jnp.maximum(denominators.num_tokens, 1.0)  # for metrics

    per_token, stats = POLICY_LOSSES.get(cfg.policy_loss)(
        logp, batch.old_logp, batch.advantages, mask, cfg
    )
    is_weight, truncated = IS_CORRECTIONS.get(cfg.is_correction)(
        batch.old_logp, batch.behaviour_logp, mask, seg, cfg
    )
    policy = (weights * is_weight * per_token).sum()
    sums = {name: (token_mean * value).sum() for name, value in stats.items()}
    ratio_sums, maxes = _ratio_metrics(logp, batch, is_weight, truncated, token_mean)
    sums |= ratio_sums

    kl = jnp.zeros(())
    if cfg.kl_coef > 0.0 and batch.ref_logp is None:
        raise ValueError("kl_coef > 0 needs batch.ref_logp")
    if batch.ref_logp is not None:
        k = KL_ESTIMATORS.get(cfg.kl_estimator)(logp, jnp.where(mask > 0, batch.ref_logp, logp))
        kl = cfg.kl_coef * (weights * k).sum()
        sums["policy/kl_ref"] = jax.lax.stop_gradient((token_mean * k).sum())
    ent = jnp.zeros(())
    if cfg.entropy_coef > 0.0 and entropy is None:
        raise ValueError("entropy_coef > 0 needs the model's entropy")
    if entropy is not None:
        ent = -cfg.entropy_coef * (weights * entropy).sum()
        sums["policy/entropy"] = jax.lax.stop_gradient((token_mean * entropy).sum())
    total = policy + kl + ent
    sums |= {"loss/total": total, "loss/policy": policy, "loss/kl": kl, "loss/entropy": ent}
    return total, {k: jax.lax.stop_gradient(v) for k, v in sums.items()}, maxes
