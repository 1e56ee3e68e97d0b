# ruff: noqa: F722
# (F722: jaxtyping shape strings such as "Gn G" are not Python expressions.)
"""Group advantage estimators, chosen by name, and the unbiased pass@k estimator for evaluation.

Every estimator maps the rewards of groups of trajectories sampled for the same task to one
advantage per trajectory. Groups live in a padded ``[Gn, G]`` layout (``Gn`` groups, at most
``G`` samples each) with a ``mask`` that is 0 for padding and for trajectories excluded after an
infrastructure failure, so group sizes may differ. Shared behaviour, tested for every estimator:

- masked entries get advantage 0 and never influence the others;
- a group whose valid rewards are all equal gives advantage 0 (counted in the metrics);
- permuting the samples of a group permutes their advantages.

``to_group_layout``/``from_group_layout`` convert flat per-trajectory arrays (host side) to the
layout and back; ``token_advantages`` broadcasts onto sampled tokens (loss mask 1) only.
``drop_identical_groups`` is DAPO's dynamic-sampling filter on that layout: groups whose rewards
are all equal (no advantage signal) leave the batch instead of diluting it with zeros.

Non-goals: per-token credit assignment (GAE, value functions), reward shaping
(``mtrl_jax.rollout.shaping``), sampling more tasks to refill a filtered batch (the trainer's).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Hashable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtrl_jax.registry import Registry
from mtrl_jax.types import Array, Float

EstimatorFn = Callable[
    [Float[Array, "Gn G"], Float[Array, "Gn G"], "AdvantageConfig"], Float[Array, "Gn G"]
]
ADVANTAGE_ESTIMATORS: Registry[EstimatorFn] = Registry("advantage estimator")


# Estimators whose paper form is unscaled: ``scale_by_std=None`` leaves them unscaled.
_UNSCALED_BY_DEFAULT = frozenset({"best_minus_second"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdvantageConfig:
    """How group advantages are computed, and which groups train at all.

    Attributes:
        estimator: registry name: ``grpo``, ``rloo``, ``pass_at_k`` or ``best_minus_second``.
        scale_by_std: divide by the group's reward std (``grpo``, ``best_minus_second``) or the
            std of k-subset rewards (``pass_at_k``). ``grpo`` without it is Dr. GRPO. ``rloo``
            ignores it (its baseline is already unbiased and unscaled). None (default) is each
            estimator's paper form: scaled for ``grpo`` and ``pass_at_k``, unscaled for
            ``best_minus_second``; see :attr:`scales_by_std`.
        std_ddof: 0 for the population std, 1 for the sample std (verl and TRL use 1).
        k: subset size of ``pass_at_k``; groups with fewer valid samples use all of them. Must
            be ``<= rollout.group_size`` (checked by ``RolloutConfig``).
        eps: added to the std before dividing.
        filter_groups: DAPO's dynamic sampling: drop groups whose valid rewards are all equal
            from the round's training batch (:func:`drop_identical_groups`; counted as
            ``advantage/filtered_groups``).
        refill_rounds: with ``filter_groups``, at most this many extra collections per round,
            each playing as many new tasks as groups are missing from ``env.tasks_per_step``
            (the trainer's refill; 0: the batch just shrinks). A cap, because a policy that
            solves everything (or nothing) would otherwise sample forever.
    """

    estimator: str = "grpo"
    scale_by_std: bool | None = None
    std_ddof: int = 0
    k: int = 1
    eps: float = 1e-6
    filter_groups: bool = False
    refill_rounds: int = 0

    def __post_init__(self) -> None:
        ADVANTAGE_ESTIMATORS.check(self.estimator)
        if self.refill_rounds < 0:
            raise ValueError(f"refill_rounds must be >= 0, got {self.refill_rounds}")
        if self.refill_rounds and not self.filter_groups:
            raise ValueError("refill_rounds needs filter_groups: true (nothing is dropped)")
        if self.std_ddof not in (0, 1):
            raise ValueError(f"std_ddof must be 0 or 1, got {self.std_ddof}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.scale_by_std is None:
            # Stored resolved, so a run's saved config says what ran: a grpo run saved before
            # None existed (True) still matches and resumes, a changed meaning does not.
            object.__setattr__(self, "scale_by_std", self.scales_by_std)

    @property
    def scales_by_std(self) -> bool:
        """``scale_by_std`` resolved: when None, False for ``best_minus_second``, else True."""
        if self.scale_by_std is not None:
            return self.scale_by_std
        return self.estimator not in _UNSCALED_BY_DEFAULT


def _group_stats(
    rewards: Float[Array, "Gn G"], mask: Float[Array, "Gn G"], ddof: int
) -> tuple[Float[Array, " Gn"], Float[Array, " Gn"], Float[Array, " Gn"]]:
    """Per group: number of valid samples, mean and std of their rewards (0 when undefined)."""
    n = mask.sum(-1)
    mean = (rewards * mask).sum(-1) / jnp.maximum(n, 1)
    var = (((rewards - mean[:, None]) * mask) ** 2).sum(-1) / jnp.maximum(n - ddof, 1)
    return n, mean, jnp.sqrt(var)


def _identical_groups(rewards: Float[Array, "Gn G"], mask: Float[Array, "Gn G"]) -> Array:
    """True for groups whose valid rewards are all equal (exact comparison, no tolerance)."""
    valid = mask > 0
    hi = jnp.where(valid, rewards, -jnp.inf).max(-1)
    lo = jnp.where(valid, rewards, jnp.inf).min(-1)
    return hi == lo


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(
    rewards: Float[Array, "Gn G"], mask: Float[Array, "Gn G"], cfg: AdvantageConfig
) -> Float[Array, "Gn G"]:
    """GRPO: the group mean as baseline, optionally scaled by the group std.

    ``A_i = (r_i - mean_j r_j) / (std_j r_j + eps)``, means over the group's valid samples
    (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300). With ``scale_by_std=False``,
    ``A_i = r_i - mean_j r_j`` (Dr. GRPO: Liu et al. 2025, arXiv 2503.20783, which shows the std
    division up-weights too-easy and too-hard groups).
    """
    _, mean, std = _group_stats(rewards, mask, cfg.std_ddof)
    adv = rewards - mean[:, None]
    if cfg.scales_by_std:
        adv = adv / (std[:, None] + cfg.eps)
    # Exact zeros for uniform groups: the float mean of equal rewards can differ from them in the
    # last bit, and dividing by a std of ~1e-17 + eps would blow that up.
    adv = jnp.where(_identical_groups(rewards, mask)[:, None], 0.0, adv)
    return adv * mask


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(
    rewards: Float[Array, "Gn G"], mask: Float[Array, "Gn G"], cfg: AdvantageConfig
) -> Float[Array, "Gn G"]:
    """RLOO: each sample's baseline is the mean reward of the *other* samples of its group.

    ``A_i = r_i - 1/(n-1) * sum_{j != i} r_j = n/(n-1) * (r_i - mean_j r_j)``, 0 when ``n < 2``
    (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et al.
    2024, arXiv 2402.14740). Unbiased because the baseline does not depend on the sample itself.
    """
    del cfg  # no options: RLOO is never std-scaled
    n = mask.sum(-1, keepdims=True)
    total = (rewards * mask).sum(-1, keepdims=True)
    baseline = (total - rewards) / jnp.maximum(n - 1, 1)
    adv = jnp.where(n >= 2, rewards - baseline, 0.0)
    adv = jnp.where(_identical_groups(rewards, mask)[:, None], 0.0, adv)
    return adv * mask


@functools.lru_cache(maxsize=64)
def _pass_at_k_tables(group: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact subset-counting weights for ``pass_at_k_advantages``, as float32 ``[G+1, G+1]``.

    Indexed ``[n, j]``: ``n`` valid samples, ``j`` a 1-based rank in ascending reward order, and
    ``k_n = min(k, n)``. Computed once per ``(G, k)`` in exact integer arithmetic (math.comb), so
    no binomial ratio loses precision in float32 however large ``n`` is.

    - ``w[n, j] = C(j-1, k_n-1) / C(n, k_n)``: a uniform k-subset has its max at rank ``j``.
    - ``s[n, j] = C(j-1, k_n-1) / C(n-1, k_n-1)``: rank ``j`` is the max of a k-subset that
      contains it (the other ``k_n-1`` members rank below it).
    - ``t[n, j] = C(j-2, k_n-2) / C(n-1, k_n-1)``: rank ``j`` is the max of a k-subset that
      contains a given lower rank ``p < j`` (independent of ``p``).
    """

    def comb(a: int, b: int) -> int:
        return math.comb(a, b) if 0 <= b <= a else 0

    w, s, t = (np.zeros((group + 1, group + 1), np.float64) for _ in range(3))
    for n in range(1, group + 1):
        kn = min(k, n)
        for j in range(1, n + 1):
            w[n, j] = comb(j - 1, kn - 1) / comb(n, kn)
            s[n, j] = comb(j - 1, kn - 1) / comb(n - 1, kn - 1)
            t[n, j] = comb(j - 2, kn - 2) / comb(n - 1, kn - 1)
    return w.astype(np.float32), s.astype(np.float32), t.astype(np.float32)


@ADVANTAGE_ESTIMATORS.register("pass_at_k")
def pass_at_k_advantages(
    rewards: Float[Array, "Gn G"], mask: Float[Array, "Gn G"], cfg: AdvantageConfig
) -> Float[Array, "Gn G"]:
    """Pass@k training advantages in analytic group form (Chen et al. 2025, arXiv 2508.10751).

    The reward of a k-subset of the group is its max (pass@k for 0/1 rewards). Over the
    ``C(n, k)`` subsets: ``R = E_S[max S]``, ``sigma^2 = Var_S[max S]``, and sample ``i`` gets
    ``A_i = (E_{S contains i}[max S] - R) / (sigma + eps)`` (no division without
    ``scale_by_std``). Ranking ascending (``p`` = rank of ``i``),
    ``E_{S contains i}[max S] = r_i s[p] + sum_{j>p} r_(j) t[j]`` (see ``_pass_at_k_tables``).
    For 0/1 rewards with ``N_neg`` failures this is the paper's closed form:
    ``R = 1 - C(N_neg, k)/C(n, k)``, ``sigma = sqrt(R(1-R))``, ``A_pos = (1-R)/sigma``,
    ``A_neg = (1 - R - C(N_neg-1, k-1)/C(n-1, k-1))/sigma``. ``k = 1`` is GRPO.
    A group with fewer than ``k`` valid samples uses ``k = n``.
    """
    g = rewards.shape[-1]
    w_tab, s_tab, t_tab = (jnp.asarray(x) for x in _pass_at_k_tables(g, cfg.k))
    valid = mask > 0
    n = valid.sum(-1).astype(jnp.int32)
    # Shift by the group max so every valid reward is <= 0: sums of small weighted terms keep
    # their precision when R is close to the max (the paper's A_pos = (1-R)/sigma case).
    top = jnp.where(valid, rewards, -jnp.inf).max(-1, keepdims=True)
    order = jnp.argsort(jnp.where(valid, rewards, -jnp.inf), axis=-1)  # padding sorts first
    r = jnp.take_along_axis(jnp.where(valid, rewards - top, 0.0), order, axis=-1)
    rank = jnp.clip(jnp.arange(g) - (g - n)[:, None] + 1, 0, g)  # 1-based; 0 for padding
    w, s, t = (tab[n[:, None], rank] for tab in (w_tab, s_tab, t_tab))  # column 0 is all 0
    mean = (w * r).sum(-1, keepdims=True)
    sigma = jnp.sqrt((w * (r - mean) ** 2).sum(-1, keepdims=True))
    above = jnp.cumsum((t * r)[:, ::-1], axis=-1)[:, ::-1] - t * r  # sum over ranks j > p
    adv_sorted = s * r + above - mean
    if cfg.scales_by_std:
        adv_sorted = adv_sorted / (sigma + cfg.eps)
    adv = jnp.take_along_axis(adv_sorted, jnp.argsort(order, axis=-1), axis=-1)
    # Every subset has the same max exactly when ranks k_n..n tie (sigma = 0 in exact arithmetic;
    # in float32 sigma is ~1e-7, which must not be divided by). Compared after sorting, exactly.
    kn = jnp.minimum(cfg.k, n)
    at_k = jnp.take_along_axis(r, jnp.clip(g - n + kn - 1, 0, g - 1)[:, None], axis=-1)
    return jnp.where((at_k == 0.0) | (n[:, None] == 0), 0.0, adv) * mask


@ADVANTAGE_ESTIMATORS.register("best_minus_second")
def best_minus_second_advantages(
    rewards: Float[Array, "Gn G"], mask: Float[Array, "Gn G"], cfg: AdvantageConfig
) -> Float[Array, "Gn G"]:
    """Pass@k for k = n as leave-one-out: only the best sample gets ``r_(1) - r_(2)``.

    The group reward is ``max_j r_j``; with the leave-one-out baseline ``max_{j != i} r_j``,
    ``A_i = max_j r_j - max_{j != i} r_j``, which is ``best - second best`` for the best sample
    and 0 for all others (Walder & Karkhanis 2025, "Pass@K Policy Optimization", arXiv
    2503.19595). Unscaled by default, the paper's form: the gap is already in reward units.
    ``scale_by_std=True`` divides it by the group std + eps (as verl's ``grpo_passk`` can).
    Ties for the best give 0; groups with fewer than 2 valid samples give 0.
    """
    if rewards.shape[-1] < 2:  # no second sample anywhere
        return jnp.zeros_like(rewards)
    valid = mask > 0
    masked = jnp.where(valid, rewards, -jnp.inf)
    best_idx = jnp.argmax(masked, axis=-1)  # the first of tied bests; their gap is 0 anyway
    top2 = jax.lax.top_k(masked, 2)[0]
    gap = jnp.where(valid.sum(-1) >= 2, top2[:, 0] - top2[:, 1], 0.0)
    if cfg.scales_by_std:
        gap = gap / (_group_stats(rewards, mask, cfg.std_ddof)[2] + cfg.eps)
    adv = jax.nn.one_hot(best_idx, rewards.shape[-1], dtype=rewards.dtype) * gap[:, None]
    return adv * mask


def compute_group_advantages(
    rewards: Float[Array, "Gn G"], mask: Float[Array, "Gn G"] | None, cfg: AdvantageConfig
) -> tuple[Float[Array, "Gn G"], dict[str, Array]]:
    """Advantages of every sample with the configured estimator, plus metrics.

    Args:
        rewards: ``[Gn, G]`` rewards (any value in padding).
        mask: ``[Gn, G]`` 1 for samples that count, 0 for padding and excluded samples; None
            means all count.
        cfg: which estimator and its options.

    Returns:
        ``[Gn, G]`` float32 advantages (0 where masked) and scalar metrics under
        ``advantage/``: ``mean``, ``std``, ``abs_max`` (over valid samples), ``samples``,
        ``groups`` (non-empty), ``identical_groups`` (non-empty groups with all-equal rewards,
        hence zero advantage) and ``zero_groups`` (non-empty groups whose advantages are all 0
        for any reason, e.g. a tie for the best under ``best_minus_second``).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    mask = jnp.ones_like(rewards) if mask is None else jnp.asarray(mask, jnp.float32)
    adv = ADVANTAGE_ESTIMATORS.get(cfg.estimator)(rewards, mask, cfg)
    n = mask.sum(-1)
    total = jnp.maximum(n.sum(), 1)
    mean = adv.sum() / total
    nonempty = n > 0
    metrics = {
        "advantage/mean": mean,
        "advantage/std": jnp.sqrt((((adv - mean) * mask) ** 2).sum() / total),
        "advantage/abs_max": jnp.abs(adv * mask).max(),
        "advantage/samples": n.sum(),
        "advantage/groups": nonempty.sum(),
        "advantage/identical_groups": (nonempty & _identical_groups(rewards, mask)).sum(),
        "advantage/zero_groups": (nonempty & jnp.all(adv == 0.0, axis=-1)).sum(),
    }
    return adv, metrics


def token_advantages(
    advantages: Float[Array, " N"], loss_mask: Float[Array, "N T"]
) -> Float[Array, "N T"]:
    """Broadcasts one advantage per trajectory onto its sampled tokens (loss mask 1) only."""
    return jnp.asarray(advantages, jnp.float32)[:, None] * jnp.asarray(loss_mask, jnp.float32)


class GroupLayout(NamedTuple):
    """Flat trajectories arranged as ``[Gn, G]`` groups (host side, numpy).

    Attributes:
        rewards: ``[Gn, G]`` float32 rewards, 0 in padding.
        mask: ``[Gn, G]`` float32, 1 for valid samples.
        group_index: ``[N]`` row of each trajectory.
        slot_index: ``[N]`` column of each trajectory.
        group_keys: the group id of each row.
    """

    rewards: np.ndarray
    mask: np.ndarray
    group_index: np.ndarray
    slot_index: np.ndarray
    group_keys: tuple[Hashable, ...]


def to_group_layout(
    group_ids: Sequence[Hashable],
    rewards: Sequence[float] | np.ndarray,
    valid: Sequence[bool] | np.ndarray | None = None,
    *,
    group_size: int | None = None,
) -> GroupLayout:
    """Arranges flat per-trajectory rewards into the padded group layout.

    Trajectories excluded by ``valid`` (infrastructure failures) keep a slot but get mask 0, so
    they receive advantage 0 and do not move their group's baseline. ``group_size`` pads every
    group to a fixed ``G`` so the jitted estimator sees one shape; it defaults to the largest group.

    Example:
        >>> lay = to_group_layout(["a", "b", "a"], [1.0, 0.5, 0.0], [True, True, False])
        >>> lay.rewards.tolist(), lay.mask.tolist()
        ([[1.0, 0.0], [0.5, 0.0]], [[1.0, 0.0], [1.0, 0.0]])
    """
    rewards = np.asarray(rewards, np.float32)
    valid_arr = np.ones(len(rewards), bool) if valid is None else np.asarray(valid, bool)
    if len(group_ids) != len(rewards) or len(valid_arr) != len(rewards):
        raise ValueError("group_ids, rewards and valid must have the same length")
    keys: dict[Hashable, int] = {}
    group_index = np.array([keys.setdefault(g, len(keys)) for g in group_ids], np.int64)
    counts = np.bincount(group_index, minlength=len(keys))
    size = int(counts.max(initial=0)) if group_size is None else group_size
    if counts.size and counts.max() > size:
        raise ValueError(f"a group has {counts.max()} trajectories, more than group_size={size}")
    slot_index = np.zeros_like(group_index)
    seen = np.zeros(len(keys), np.int64)
    for i, g in enumerate(group_index):
        slot_index[i], seen[g] = seen[g], seen[g] + 1
    grid = np.zeros((len(keys), size), np.float32)
    mask = np.zeros((len(keys), size), np.float32)
    grid[group_index, slot_index] = np.where(valid_arr, rewards, 0.0)
    mask[group_index, slot_index] = valid_arr
    return GroupLayout(grid, mask, group_index, slot_index, tuple(keys))


def from_group_layout(values: np.ndarray | Array, layout: GroupLayout) -> np.ndarray:
    """Reads ``[Gn, G]`` values (e.g. advantages) back into the flat trajectory order ``[N]``."""
    return np.asarray(values)[layout.group_index, layout.slot_index]


def drop_identical_groups(layout: GroupLayout) -> tuple[GroupLayout, int]:
    """Dynamic sampling: masks out every group whose valid rewards are all equal.

    Such a group (all 0, all 1, or a single valid sample) has zero advantage under every
    estimator, so its trajectories only add zero-gradient tokens to the normalisers and KL /
    entropy terms to the loss. DAPO drops them and samples more prompts until the batch is
    full (Yu et al. 2025, arXiv 2503.14476, "dynamic sampling": keep a group iff
    ``0 < |{correct}| < G``; for real-valued rewards, iff its reward std is > 0). This function
    does the drop only; a refill is the caller's (the kept groups are the non-empty rows of the
    returned mask, ``layout.group_keys`` names them). Equality is exact, as for the
    ``advantage/identical_groups`` metric. Groups that are zero for another reason (a tie for
    the best under ``best_minus_second``) are kept.

    Args:
        layout: the round's groups (:func:`to_group_layout`).

    Returns:
        The layout with the dropped groups' mask set to 0 (their rows stay, so
        :func:`from_group_layout` still reads every trajectory back), and the number of
        non-empty groups dropped.

    Example:
        >>> lay = to_group_layout(["a", "a", "b", "b"], [1.0, 1.0, 0.0, 1.0])
        >>> kept, dropped = drop_identical_groups(lay)
        >>> kept.mask.tolist(), dropped
        ([[0.0, 0.0], [1.0, 1.0]], 1)
    """
    valid = layout.mask > 0
    hi = np.where(valid, layout.rewards, -np.inf).max(-1, initial=-np.inf)
    lo = np.where(valid, layout.rewards, np.inf).min(-1, initial=np.inf)
    drop = valid.any(-1) & (hi == lo)
    mask = np.where(drop[:, None], 0.0, layout.mask).astype(np.float32)
    return layout._replace(mask=mask), int(drop.sum())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (plain Python, no JAX).

    ``pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)``: the probability that
    a uniform k-subset of the samples holds at least one correct one (Chen et al. 2021,
    "Evaluating Large Language Models Trained on Code", arXiv 2107.03374). The product form
    never builds the huge binomials. Shared by training metrics and the eval job.

    Example:
        >>> pass_at_k(4, 1, 2)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        0.5
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
