import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtrl_jax.advantages import AdvantageConfig, compute_group_advantages, to_group_layout
from mtrl_jax.losses import LossConfig
from mtrl_jax.packing import PackingConfig, pack_trajectories, pad_trajectories, unpack
from mtrl_jax.train_step import (
    OptimizerConfig,
    TrainConfig,
    init_train_state,
    make_grad_fn,
    make_logprob_fn,
    make_schedule,
    make_train_step,
)
from mtrl_jax.types import Trajectory

VOCAB = 16


class TinyLM(nnx.Module):
    """Embedding + one causal, segment-masked attention layer + output head.

    Implements the ``token_logprobs`` interface of ``mtrl_jax.models``. A token attends only to
    earlier tokens of its own segment, and positions restart per segment, so a trajectory's
    log-probs are the same whether it is packed with others or alone in a row.
    """

    traces = 0  # incremented at trace time: counts how often a jitted caller was traced

    def __init__(self, *, rngs: nnx.Rngs, dim: int = 16, max_len: int = 64):
        self.embed = nnx.Embed(VOCAB, dim, rngs=rngs)
        self.pos = nnx.Embed(max_len, dim, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.mix = nnx.Linear(dim, dim, rngs=rngs)
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, VOCAB, rngs=rngs)

    def hidden(self, tokens, positions, segment_ids):
        x = self.embed(tokens) + self.pos(positions)
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        scores = jnp.einsum("btd,bsd->bts", q, k) / jnp.sqrt(q.shape[-1])
        t = tokens.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        allowed = causal & (segment_ids[:, :, None] == segment_ids[:, None, :])
        attn = jax.nn.softmax(jnp.where(allowed, scores, -1e9), axis=-1)
        return self.norm(x + self.mix(jnp.einsum("bts,bsd->btd", attn, v)))

    def logits(self, tokens, positions=None, segment_ids=None):
        positions, segment_ids = self._defaults(tokens, positions, segment_ids)
        return self.head(self.hidden(tokens, positions, segment_ids))

    def token_logprobs(
        self,
        tokens,
        targets,
        *,
        positions=None,
        segment_ids=None,
        chunk_size=512,
        return_entropy=False,
    ):
        TinyLM.traces += 1
        positions, segment_ids = self._defaults(tokens, positions, segment_ids)
        h = self.hidden(tokens, positions, segment_ids)
        logps, entropies = [], []
        for start in range(0, tokens.shape[1], chunk_size):  # never the full [T, V] at once
            logits = self.head(h[:, start : start + chunk_size]).astype(jnp.float32)
            logz = jax.nn.log_softmax(logits, axis=-1)
            chunk_targets = targets[:, start : start + chunk_size, None]
            logps.append(jnp.take_along_axis(logz, chunk_targets, axis=-1)[..., 0])
            entropies.append(-(jnp.exp(logz) * logz).sum(-1))
        logp = jnp.concatenate(logps, axis=1)
        return (logp, jnp.concatenate(entropies, axis=1)) if return_entropy else logp

    @staticmethod
    def _defaults(tokens, positions, segment_ids):
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        return positions, segment_ids


def new_model(seed=0):
    return TinyLM(rngs=nnx.Rngs(seed))


GRAPHDEF = nnx.split(new_model(), nnx.Param, ...)[0]


@functools.cache
def train_step_for(cfg: TrainConfig):
    """One jitted step per config, shared by every test that uses it."""
    return make_train_step(GRAPHDEF, cfg)


@functools.cache
def grad_fn_for(cfg: TrainConfig):
    return make_grad_fn(GRAPHDEF, cfg)


LOGPROB_FN = make_logprob_fn(GRAPHDEF, chunk_size=8)


def random_trajectories(seed, count=10, max_len=14):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n = int(rng.integers(3, max_len + 1))
        mask = (rng.random(n) < 0.7).astype(np.float32)
        mask[0] = 0.0
        out.append(
            Trajectory(
                tokens=rng.integers(0, VOCAB, n),
                loss_mask=mask,
                behaviour_logp=-rng.gamma(2.0, 1.0, n).astype(np.float32),
                advantages=float(rng.normal()) if i % 3 else rng.normal(size=n).astype(np.float32),
                policy_version=i,
            )
        )
    return out


def with_old_logp(batch, info, trajectories, seed):
    """Sets old_logp = behaviour + per-token noise, identically in any layout (via ``info``)."""
    rng = np.random.default_rng(seed)
    old = np.array(batch.old_logp)
    for i in range(len(trajectories)):
        sl = (info.row[i], slice(info.start[i], info.start[i] + info.length[i]))
        noise = rng.normal(0, 0.3, info.length[i]).astype(np.float32)
        old[sl] = (batch.behaviour_logp[sl] + noise) * batch.loss_mask[sl]
    return jax.tree.map(jnp.asarray, batch.replace(old_logp=old))


def fresh_state(cfg, seed=0):
    graphdef, state = init_train_state(new_model(seed), cfg)
    return state


def assert_trees_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


SEGMENT_HEAVY = TrainConfig(
    loss=LossConfig(
        policy_loss="ppo",
        clip_low=0.2,
        clip_high=0.28,
        is_correction="sequence",
        aggregation="seq-mean-token-mean",
        entropy_coef=0.01,
    ),
    chunk_size=8,
)


def test_packed_and_unpacked__identical_logprobs_loss_and_gradients():
    trajs = random_trajectories(0)
    pcfg = PackingConfig(seq_len=16)
    packed, packed_info = pack_trajectories(trajs, pcfg)
    padded, padded_info = pad_trajectories(trajs, pcfg)
    assert packed.tokens.shape[0] < padded.tokens.shape[0]
    packed = with_old_logp(packed, packed_info, trajs, seed=1)
    padded = with_old_logp(padded, padded_info, trajs, seed=1)
    state = fresh_state(SEGMENT_HEAVY)
    lp_packed = unpack(LOGPROB_FN(state.params, state.rest, packed), packed_info)
    lp_padded = unpack(LOGPROB_FN(state.params, state.rest, padded), padded_info)
    for a, b in zip(lp_packed, lp_padded, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    grad_fn = grad_fn_for(SEGMENT_HEAVY)
    g_packed, m_packed = grad_fn(state, packed)
    g_padded, m_padded = grad_fn(state, padded)
    for name in ("loss/total", "loss/policy", "loss/entropy", "policy/clipfrac", "is/weight_mean"):
        np.testing.assert_allclose(m_packed[name], m_padded[name], rtol=1e-5, atol=1e-7)
    assert float(m_packed["policy/clipfrac"]) > 0  # the clip is really exercised
    assert_trees_close(g_packed, g_padded, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("micro", [2, 4])
def test_grad_accumulation__equals_the_full_batch(micro):
    trajs = random_trajectories(2, count=16)
    batch, info = pack_trajectories(trajs, PackingConfig(seq_len=16, rows_multiple=4))
    batch = with_old_logp(batch, info, trajs, seed=3)
    state = fresh_state(SEGMENT_HEAVY)
    g_full, m_full = grad_fn_for(SEGMENT_HEAVY)(state, batch)
    cfg = dataclasses.replace(SEGMENT_HEAVY, num_micro_batches=micro)
    g_micro, m_micro = grad_fn_for(cfg)(state, batch)
    assert_trees_close(g_micro, g_full, rtol=1e-5, atol=1e-7)
    assert set(m_micro) == set(m_full)
    for name in m_full:
        np.testing.assert_allclose(m_micro[name], m_full[name], rtol=1e-5, atol=1e-7, err_msg=name)


STEP_CFG = TrainConfig(
    loss=LossConfig(policy_loss="cispo", is_correction="token"),
    optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=2, schedule="cosine", decay_steps=8),
    chunk_size=8,
)


def packed_batch(seed, count=10, pcfg=None):
    pcfg = pcfg or PackingConfig(seq_len=16, rows_multiple=2)
    trajs = random_trajectories(seed, count=count)
    batch, info = pack_trajectories(trajs, pcfg)
    return with_old_logp(batch, info, trajs, seed=seed)


def test_train_step__compiles_once_per_bucket():
    step = make_train_step(GRAPHDEF, STEP_CFG)  # a fresh jit cache
    state = fresh_state(STEP_CFG)
    pcfg = PackingConfig(seq_len=16, row_buckets=(8, 32))
    before = TinyLM.traces
    for seed in range(4):  # different lengths and row counts, all in the 8-row bucket
        batch = packed_batch(seed, pcfg=pcfg)
        assert batch.tokens.shape == (8, 16)
        state, metrics = step(state, batch)
    assert TinyLM.traces - before == 1
    state, _ = step(state, packed_batch(9, count=40, pcfg=pcfg))  # the next bucket: one more
    assert TinyLM.traces - before == 2
    assert int(state.step) == 5


def test_train_step__updates_params_reports_metrics_and_donates_state():
    step = train_step_for(STEP_CFG)
    state = fresh_state(STEP_CFG)
    initial = jax.tree.map(np.array, state.params)
    old_leaf = jax.tree.leaves(state.params)[0]
    batch = packed_batch(0)
    state, metrics = step(state, batch)
    assert old_leaf.is_deleted()  # donated
    assert float(metrics["optim/lr"]) == 0.0  # the first warmup step moves nothing...
    assert_trees_close(state.params, initial, rtol=0, atol=0)
    state, metrics = step(state, batch)
    assert float(metrics["optim/lr"]) == pytest.approx(5e-3)  # ... the second does
    leaves = zip(jax.tree.leaves(initial), jax.tree.leaves(state.params), strict=True)
    assert all(not np.allclose(a, b) for a, b in leaves)
    expected = {
        "loss/total", "loss/policy", "loss/kl", "loss/entropy", "policy/clipfrac",
        "policy/approx_kl", "policy/ratio_mean", "policy/ratio_max", "policy/entropy",
        "is/ratio_mean", "is/ratio_max", "is/weight_mean", "is/weight_max", "optim/grad_norm",
        "optim/lr", "optim/skipped", "tokens/loss", "tokens/sequences", "tokens/real",
    }  # fmt: skip
    assert expected <= set(metrics)
    assert all(np.ndim(v) == 0 and np.isfinite(v) for v in metrics.values())
    assert float(metrics["tokens/loss"]) == float(batch.loss_mask.sum())
    assert float(metrics["tokens/sequences"]) == 10
    assert float(metrics["tokens/real"]) == float((batch.segment_ids > 0).sum())
    assert int(state.step) == 2 and int(state.skipped) == 0


def test_train_step__non_finite_guard_skips_the_update_and_counts_it():
    step = train_step_for(STEP_CFG)
    state = fresh_state(STEP_CFG)
    state, _ = step(state, packed_batch(0))  # one good step
    params = jax.tree.map(np.array, state.params)
    opt_state = jax.tree.map(np.array, state.opt_state)
    bad = packed_batch(1)
    r, t = np.argwhere(np.asarray(bad.loss_mask) > 0)[0]
    bad = bad.replace(advantages=bad.advantages.at[r, t].set(jnp.nan))
    state, metrics = step(state, bad)
    assert float(metrics["optim/skipped"]) == 1 and float(metrics["optim/skipped_total"]) == 1
    assert not np.isfinite(float(metrics["loss/total"]))
    assert_trees_close(state.params, params, rtol=0, atol=0)
    assert_trees_close(state.opt_state, opt_state, rtol=0, atol=0)
    assert int(state.step) == 1 and int(state.skipped) == 1
    inf = packed_batch(2)
    inf = inf.replace(advantages=inf.advantages.at[r, t].set(jnp.inf))
    state, metrics = step(state, inf)
    assert int(state.skipped) == 2
    state, metrics = step(state, packed_batch(3))  # and training resumes
    assert float(metrics["optim/skipped"]) == 0 and int(state.step) == 2
    assert float(metrics["optim/lr"]) == pytest.approx(float(make_schedule(STEP_CFG.optimizer)(1)))


def test_schedule__warmup_then_decay():
    cfg = OptimizerConfig(
        learning_rate=1.0, warmup_steps=4, schedule="linear", decay_steps=10, end_lr_ratio=0.1
    )
    schedule = make_schedule(cfg)
    values = [float(schedule(i)) for i in (0, 2, 4, 9, 14, 100)]
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6)
    with pytest.raises(ValueError, match="decay_steps"):
        OptimizerConfig(schedule="cosine")
    with pytest.raises(ValueError):
        TrainConfig(num_micro_batches=0)


def test_train_step__micro_batches_must_divide_rows():
    cfg = dataclasses.replace(STEP_CFG, num_micro_batches=3)
    with pytest.raises(ValueError, match="divisible"):
        make_grad_fn(GRAPHDEF, cfg)(fresh_state(cfg), packed_batch(0))


# --- a toy bandit task: every loss and every estimator must raise the reward -----------------
#
# Prompt token p in 1..4; the policy answers a1, the env replies e (15 if a1 was good, else 14,
# mask 0), the policy answers a2. A token is good for p when (token + p) % 4 == 0, a quarter of
# the vocabulary; reward = mean of the two answers' goodness. Eight prompts x G = 4 samples.

GROUPS, G = 8, 4
TOY_PACKING = PackingConfig(seq_len=16, rows_multiple=2)
PROMPTS = np.repeat(np.arange(GROUPS) % 4 + 1, G)


def good(token, prompt):
    return (token + prompt) % 4 == 0


@jax.jit
def sample(params, rest, prompts, key):
    model = nnx.merge(GRAPHDEF, params, rest)
    k1, k2 = jax.random.split(key)
    seq = jnp.stack([prompts, jnp.zeros_like(prompts), jnp.zeros_like(prompts)], axis=1)
    logz = jax.nn.log_softmax(model.logits(seq)[:, 0])
    a1 = jax.random.categorical(k1, logz)
    env = jnp.where(good(a1, prompts), 15, 14)
    seq = jnp.stack([prompts, a1, env], axis=1)
    logz2 = jax.nn.log_softmax(model.logits(seq)[:, 2])
    a2 = jax.random.categorical(k2, logz2)
    tokens = jnp.stack([prompts, a1, env, a2], axis=1)
    lp1 = jnp.take_along_axis(logz, a1[:, None], 1)[:, 0]
    lp2 = jnp.take_along_axis(logz2, a2[:, None], 1)[:, 0]
    zero = jnp.zeros_like(lp1)
    return tokens, jnp.stack([zero, lp1, zero, lp2], axis=1)


@jax.jit
def expected_reward(params, rest):
    """Exact expected reward over prompts 1..4, enumerating the first answer."""
    model = nnx.merge(GRAPHDEF, params, rest)
    p = jnp.repeat(jnp.arange(1, 5), VOCAB)
    a1 = jnp.tile(jnp.arange(VOCAB), 4)
    seq = jnp.stack([p, a1, jnp.where(good(a1, p), 15, 14)], axis=1)
    probs = jax.nn.softmax(model.logits(seq), axis=-1)  # [4 * V, 3, V]
    good_mask = good(jnp.arange(VOCAB)[None], p[:, None])
    first = probs[:, 0]  # the same for every a1 of a prompt (causal)
    p_a1 = first[jnp.arange(4 * VOCAB), a1]
    p_good2 = (probs[:, 2] * good_mask).sum(-1)
    per_prompt = (p_a1 * (good(a1, p) + p_good2)).reshape(4, VOCAB).sum(-1) / 2
    return per_prompt.mean()


def run_toy(loss_cfg, adv_cfg, iters=24, mismatch=0.0, seed=0, lr=1e-2):
    cfg = TrainConfig(loss=loss_cfg, optimizer=OptimizerConfig(learning_rate=lr, weight_decay=0.01))
    step = train_step_for(cfg)
    state = fresh_state(cfg, seed)
    start = float(expected_reward(state.params, state.rest))
    key = jax.random.key(seed)
    rng = np.random.default_rng(seed)
    mask = np.array([0, 1, 0, 1], np.float32)
    for it in range(iters):
        sample_key = jax.random.fold_in(key, it)  # a fresh stream per iteration
        tokens, blogp = map(np.asarray, sample(state.params, state.rest, PROMPTS, sample_key))
        blogp = blogp + mismatch * rng.normal(size=blogp.shape).astype(np.float32) * mask
        rewards = (good(tokens[:, 1], PROMPTS) + good(tokens[:, 3], PROMPTS)) / 2
        layout = to_group_layout(np.arange(len(PROMPTS)) // G, rewards, group_size=G)
        adv, _ = compute_group_advantages(layout.rewards, layout.mask, adv_cfg)
        flat = np.asarray(adv)[layout.group_index, layout.slot_index]
        trajs = [
            Trajectory(tokens=tokens[i], loss_mask=mask, behaviour_logp=blogp[i],
                       advantages=float(flat[i]), policy_version=it)
            for i in range(len(PROMPTS))
        ]  # fmt: skip
        batch, _ = pack_trajectories(trajs, TOY_PACKING)
        batch = jax.tree.map(jnp.asarray, batch)
        batch = batch.replace(old_logp=LOGPROB_FN(state.params, state.rest, batch))
        for _ in range(2):  # two updates per batch: the second sees ratios != 1
            state, metrics = step(state, batch)
        assert float(metrics["optim/skipped_total"]) == 0
    return start, float(expected_reward(state.params, state.rest))


LOSSES = {
    "ppo": LossConfig(policy_loss="ppo", clip_high=0.28),
    "cispo": LossConfig(policy_loss="cispo", aggregation="seq-mean-token-mean"),
    "is": LossConfig(policy_loss="is", aggregation="seq-mean-token-sum"),
    "ppo+token_tis": LossConfig(policy_loss="ppo", is_correction="token", dual_clip_c=3.0),
    "cispo+sequence_tis": LossConfig(policy_loss="cispo", is_correction="sequence"),
}
ESTIMATORS = {
    "grpo": AdvantageConfig(estimator="grpo"),
    "dr_grpo": AdvantageConfig(estimator="grpo", scale_by_std=False),
    "rloo": AdvantageConfig(estimator="rloo"),
    "pass_at_k": AdvantageConfig(estimator="pass_at_k", k=2),
    "best_minus_second": AdvantageConfig(estimator="best_minus_second"),
}
# After the one compile per loss config, a run takes ~0.1 s: the whole cross-product runs by
# default (best_minus_second learns slowest: it trains one sample per group).
COMBOS = [(loss, estimator) for loss in LOSSES for estimator in ESTIMATORS]


@pytest.mark.parametrize("loss,estimator", COMBOS)
def test_toy_bandit__reward_increases(loss, estimator):
    mismatch = 0.1 if "tis" in loss else 0.0
    start, end = run_toy(LOSSES[loss], ESTIMATORS[estimator], mismatch=mismatch)
    assert 0.2 < start < 0.3  # chance level: a quarter of the vocabulary is good
    assert end > start + 0.1, (start, end)  # the weakest combination ends near 0.44
