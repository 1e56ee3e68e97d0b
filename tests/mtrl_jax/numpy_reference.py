"""Plain numpy / Python reference implementations for the learner's math, written as loops.

Deliberately independent of ``mtrl_jax``: no vectorisation tricks, no shared helpers, formulas
taken straight from their definitions (subset enumeration for pass@k, per-segment loops for
aggregation), so that agreement with the jitted code means something.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

# --- advantages: each takes the list of *valid* rewards of one group -------------------------


def std(values, ddof):
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / max(n - ddof, 1))


def grpo(rewards, scale_by_std, ddof=0, eps=1e-6):
    n = len(rewards)
    if n == 0 or max(rewards) == min(rewards):
        return [0.0] * n
    mean = sum(rewards) / n
    sd = std(rewards, ddof)
    return [(r - mean) / (sd + eps) if scale_by_std else r - mean for r in rewards]


def rloo(rewards):
    n = len(rewards)
    if n < 2 or max(rewards) == min(rewards):
        return [0.0] * n
    out = []
    for i in range(n):
        others = [rewards[j] for j in range(n) if j != i]
        out.append(rewards[i] - sum(others) / len(others))
    return out


def pass_at_k_by_enumeration(rewards, k, scale_by_std, eps=1e-6):
    """Enumerates every k-subset: subset reward = max; advantage = E[subset containing i] - E."""
    n = len(rewards)
    if n == 0:
        return []
    k = min(k, n)
    subsets = list(itertools.combinations(range(n), k))
    value = {s: max(rewards[i] for i in s) for s in subsets}
    mean = sum(value.values()) / len(subsets)
    var = sum((v - mean) ** 2 for v in value.values()) / len(subsets)
    if all(v == mean for v in value.values()):
        return [0.0] * n
    out = []
    for i in range(n):
        containing = [value[s] for s in subsets if i in s]
        adv = sum(containing) / len(containing) - mean
        out.append(adv / (math.sqrt(var) + eps) if scale_by_std else adv)
    return out


def pass_at_k_paper_binary(rewards, k, eps=1e-6):
    """Chen et al. 2025 closed form for 0/1 rewards (with std normalisation)."""
    n = len(rewards)
    n_neg = sum(1 for r in rewards if r == 0)
    mean = 1 - math.comb(n_neg, k) / math.comb(n, k)
    sigma = math.sqrt(mean * (1 - mean))
    if sigma == 0:
        return [0.0] * n
    a_pos = (1 - mean) / (sigma + eps)
    a_neg = (1 - mean - math.comb(n_neg - 1, k - 1) / math.comb(n - 1, k - 1)) / (sigma + eps)
    return [a_pos if r == 1 else a_neg for r in rewards]


def best_minus_second_by_enumeration(rewards, scale_by_std, ddof=0, eps=1e-6):
    """Group reward max(all); leave-one-out baseline: the max of the other n-1 (every subset)."""
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    out = []
    for i in range(n):
        (rest,) = [s for s in itertools.combinations(range(n), n - 1) if i not in s]
        adv = max(rewards) - max(rewards[j] for j in rest)
        out.append(adv / (std(rewards, ddof) + eps) if scale_by_std and adv else adv)
    return out


def is_identical_group(rewards):
    """DAPO's dynamic-sampling test on one group's valid rewards: no spread, no signal."""
    return len(rewards) > 0 and all(r == rewards[0] for r in rewards)


# --- overlong shaping: one episode at a time -------------------------------------------------


def overlong_penalty(length, max_tokens, buffer):
    """DAPO eq. 13, branch by branch."""
    if length <= max_tokens - buffer:
        return 0.0
    if length <= max_tokens:
        return (max_tokens - buffer - length) / buffer
    return -1.0


def overlong_truncated(length, status, max_tokens):
    if status == "truncated":
        return True
    return max_tokens is not None and length >= max_tokens


def unbiased_pass_at_k_by_enumeration(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(max(samples[i] for i in s) for s in subsets) / len(subsets)


# --- per-token losses (scalars) ----------------------------------------------------------------


def ppo_token(logp, old, adv, clip_low, clip_high, dual_c=None):
    ratio = math.exp(logp - old)
    clipped_ratio = min(max(ratio, 1 - clip_low), 1 + clip_high)
    loss = max(-adv * ratio, -adv * clipped_ratio)
    if dual_c is not None and adv < 0:
        loss = min(loss, -dual_c * adv)
    return loss


def cispo_token(logp, old, adv, clip_low, clip_high):
    ratio = math.exp(logp - old)
    low = 0.0 if clip_low is None else 1 - clip_low
    weight = min(max(ratio, low), 1 + clip_high)
    return -weight * adv * logp


def is_token(logp, old, adv):
    return -math.exp(logp - old) * adv


def kl_token(logp, ref, estimator):
    log_ratio = ref - logp  # log(pi_ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return math.exp(log_ratio) - 1 - log_ratio


# --- [B, T] arrays: loops over rows and segments -----------------------------------------------


def segments(segment_ids, mask):
    """Yields (row, [slots]) for every segment that has a loss token."""
    b, t = segment_ids.shape
    for r in range(b):
        for s in sorted(set(segment_ids[r].tolist()) - {0}):
            slots = [j for j in range(t) if segment_ids[r, j] == s]
            if any(mask[r, j] > 0 for j in slots):
                yield r, slots


def tis_weights(old, behaviour, mask, segment_ids, level, cap):
    b, t = old.shape
    w = np.ones((b, t))
    if level == "token":
        for r in range(b):
            for j in range(t):
                if mask[r, j] > 0:
                    ratio = math.exp(old[r, j] - behaviour[r, j])
                    w[r, j] = ratio if cap is None else min(ratio, cap)
    elif level == "sequence":
        for r, slots in segments(segment_ids, mask):
            log_w = sum(old[r, j] - behaviour[r, j] for j in slots if mask[r, j] > 0)
            for j in slots:
                w[r, j] = min(math.exp(log_w), cap)
    return w


def aggregate(values, mask, segment_ids, mode, norm_tokens=None):
    segs = list(segments(segment_ids, mask))
    if mode == "token-mean":
        total = sum(values[r, j] for r, slots in segs for j in slots if mask[r, j] > 0)
        return total / max(sum(1 for r, slots in segs for j in slots if mask[r, j] > 0), 1)
    per_seq = []
    for r, slots in segs:
        tokens = [values[r, j] for j in slots if mask[r, j] > 0]
        if mode == "seq-mean-token-mean":
            per_seq.append(sum(tokens) / len(tokens))
        elif mode == "seq-mean-token-sum-norm":  # Dr. GRPO: a constant instead of len(tokens)
            per_seq.append(sum(tokens) / norm_tokens)
        else:
            per_seq.append(sum(tokens))
    return sum(per_seq) / max(len(per_seq), 1)


def total_loss(batch, logp, entropy, cfg):
    """The full objective, token by token: sum_t w_t (c_t l_t + beta k_t - alpha H_t)."""
    b, t = logp.shape
    mask = batch["loss_mask"]
    policy = np.zeros((b, t))
    for r in range(b):
        for j in range(t):
            if mask[r, j] == 0:
                continue
            args = (logp[r, j], batch["old_logp"][r, j], batch["advantages"][r, j])
            if cfg["policy_loss"] == "ppo":
                policy[r, j] = ppo_token(*args, cfg["clip_low"], cfg["clip_high"], cfg["dual_c"])
            elif cfg["policy_loss"] == "cispo":
                policy[r, j] = cispo_token(*args, cfg["cispo_low"], cfg["cispo_high"])
            elif cfg["policy_loss"] == "nll":
                policy[r, j] = -logp[r, j]  # behaviour cloning: advantages ignored
            else:
                policy[r, j] = is_token(*args)
    level = cfg["is_correction"]
    weights = tis_weights(
        batch["old_logp"], batch["behaviour_logp"], mask, batch["segment_ids"], level, cfg["cap"]
    )
    mode, segs, c = cfg["aggregation"], batch["segment_ids"], cfg.get("norm_tokens")
    loss = aggregate(policy * weights, mask, segs, mode, c)
    if cfg["kl_coef"]:
        kl = np.zeros((b, t))
        for r in range(b):
            for j in range(t):
                kl[r, j] = kl_token(logp[r, j], batch["ref_logp"][r, j], cfg["kl_estimator"])
        loss += cfg["kl_coef"] * aggregate(kl, mask, segs, mode, c)
    if cfg["entropy_coef"]:
        loss -= cfg["entropy_coef"] * aggregate(entropy, mask, segs, mode, c)
    return loss
