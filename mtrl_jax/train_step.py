# ruff: noqa: F722
# (F722: jaxtyping shape strings such as "B T" are not Python expressions.)
"""The train step: one pure jitted update ``(state, batch) -> (state, metrics)``.

The model is any NNX module with the log-prob interface of ``mtrl_jax.models``::

    token_logprobs(tokens, targets, *, positions=None, segment_ids=None, chunk_size=512,
                   return_entropy=False) -> logp [B, T] | (logp [B, T], entropy [B, T])

It is split once (``nnx.split``) into a static graphdef, closed over by the jitted function,
and a state pytree that travels in ``TrainState``; inside the step ``nnx.merge`` rebuilds it.

One step: split the batch into micro-batches, ``lax.scan`` over them accumulating gradients of
``losses.compute_loss`` (normalised by full-batch token and sequence counts, so the sum is
exactly the full-batch gradient), then AdamW after global-norm clipping, with a learning-rate
schedule. A non-finite loss or gradient norm skips the update (params and optimizer state stay
as they were) and counts it. The state's buffers are donated.

There is no PRNG key: the update has no randomness (no dropout). Rollout and sampling own keys.

Non-goals: sharding (the sharding module places state and batch; the step is layout-agnostic),
checkpointing, logging (metrics are returned as scalars for the trainer to log).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from mtrl_jax.losses import LossConfig, LossDenominators, compute_loss, loss_denominators
from mtrl_jax.types import Array, Float, Int, TrainBatch

Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """AdamW with global-norm clipping and a learning-rate schedule.

    Attributes:
        learning_rate: peak learning rate.
        schedule: ``constant``, ``linear`` or ``cosine`` decay after warmup.
        warmup_steps: linear warmup from 0 to the peak over this many updates.
        decay_steps: updates over which ``linear``/``cosine`` decay to
            ``end_lr_ratio * learning_rate`` (after warmup); then it stays there.
        end_lr_ratio: final learning rate as a fraction of the peak.
        b1: Adam first-moment decay.
        b2: Adam second-moment decay.
        eps: Adam epsilon.
        weight_decay: decoupled weight decay (Loshchilov & Hutter 2019).
        decay_1d: also decay 1-D params (norm scales, biases); usually they are exempt.
        max_grad_norm: clip the global gradient norm to this; None disables clipping.
    """

    learning_rate: float = 1e-6
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    end_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_1d: bool = False
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if not self.learning_rate > 0.0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError("warmup_steps and decay_steps must be >= 0")
        if self.schedule != "constant" and self.decay_steps == 0:
            raise ValueError(f"schedule {self.schedule!r} needs decay_steps > 0")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            raise ValueError("end_lr_ratio must be in [0, 1]")
        if self.weight_decay < 0.0:
            raise ValueError("weight_decay must be >= 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0.0:
            raise ValueError("max_grad_norm must be > 0 or None")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything the train step needs besides the model.

    Attributes:
        loss: the objective.
        optimizer: the update rule.
        num_micro_batches: gradient accumulation steps; must divide the batch rows ``B``.
        chunk_size: tokens per chunk when the model computes log-probs (bounds ``[T, V]``).
        epochs: passes the trainer makes over each rollout round's batch (PPO epochs). Read by
            the trainer's loop, not by the step.
        minibatches: optimizer updates per pass, each on an equal share of the batch rows
            (reshuffled every pass). After the first update the policy differs from the one
            that sampled, which the loss's ratio and clipping account for.
    """

    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    num_micro_batches: int = 1
    chunk_size: int = 512
    epochs: int = 1
    minibatches: int = 1

    def __post_init__(self) -> None:
        if self.num_micro_batches < 1 or self.chunk_size < 1:
            raise ValueError("num_micro_batches and chunk_size must be >= 1")
        if self.epochs < 1 or self.minibatches < 1:
            raise ValueError("epochs and minibatches must be >= 1")


@struct.dataclass
class TrainState:
    """The learner's state: a pytree, replaced (never mutated) by each step.

    Attributes:
        params: the model's ``nnx.Param`` state (trained).
        rest: the model's other state (passed through untouched).
        opt_state: optax state.
        step: updates applied so far (skipped ones excluded); the schedule's clock.
        skipped: updates skipped by the non-finite guard so far.
    """

    params: nnx.State
    rest: nnx.State
    opt_state: optax.OptState
    step: Int[Array, ""]
    skipped: Int[Array, ""]


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """The learning rate as a function of the number of applied updates."""
    peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_lr_ratio
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, end, cfg.decay_steps)
    else:
        decay = optax.cosine_decay_schedule(peak, cfg.decay_steps, alpha=cfg.end_lr_ratio)
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with the schedule (1-D params exempt from decay)."""

    def decay_mask(params: Any) -> Any:
        return jax.tree.map(lambda p: cfg.decay_1d or p.ndim >= 2, params)

    adamw = optax.adamw(
        make_schedule(cfg), cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
    )
    if cfg.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)


def init_train_state(model: nnx.Module, cfg: TrainConfig) -> tuple[nnx.GraphDef, TrainState]:
    """Splits ``model`` into its static graphdef and a fresh ``TrainState``."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = make_optimizer(cfg.optimizer).init(params)
    # Two distinct zeros: the state is donated, and one buffer cannot be donated twice.
    step, skipped = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)
    state = TrainState(params=params, rest=rest, opt_state=opt_state, step=step, skipped=skipped)
    return graphdef, state


def _token_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    batch: TrainBatch,
    chunk_size: int,
    return_entropy: bool,
) -> Any:
    """Runs the merged model's ``token_logprobs`` on a batch."""
    model = nnx.merge(graphdef, params, rest)
    # Shared prefixes only where the batch has them: any model with the segment contract serves
    # batches without, and one without ``parent_ids`` support fails loudly on batches with.
    tree = {} if batch.parent_ids is None else {"parent_ids": batch.parent_ids}
    return model.token_logprobs(
        batch.tokens,
        batch.targets,
        positions=batch.positions,
        segment_ids=batch.segment_ids,
        chunk_size=chunk_size,
        return_entropy=return_entropy,
        **tree,
    )


def _grads_and_metrics(
    graphdef: nnx.GraphDef, cfg: TrainConfig, params: nnx.State, rest: nnx.State, batch: TrainBatch
) -> tuple[nnx.State, Metrics, LossDenominators]:
    """Full-batch gradient and metrics, accumulated over micro-batches with ``lax.scan``."""
    rows, m = batch.tokens.shape[0], cfg.num_micro_batches
    if rows % m:
        raise ValueError(f"batch rows {rows} are not divisible by num_micro_batches {m}")
    denominators = loss_denominators(batch.loss_mask, batch.segment_ids)

    def loss_fn(p: nnx.State, mb: TrainBatch) -> tuple[Array, tuple[Metrics, Metrics]]:
        logp, entropy = _token_logprobs(graphdef, p, rest, mb, cfg.chunk_size, True)
        if cfg.loss.entropy_coef == 0.0:  # a metric only: skip its backward pass
            entropy = jax.lax.stop_gradient(entropy)
        loss, sums, maxes = compute_loss(logp, entropy, mb, cfg.loss, denominators)
        return loss, (sums, maxes)

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if m == 1:
        grads, (sums, maxes) = grad_fn(params, batch)
        return grads, {**sums, **maxes}, denominators

    micro = jax.tree.map(lambda x: x.reshape(m, rows // m, *x.shape[1:]), batch)

    def body(carry: Any, mb: TrainBatch) -> tuple[Any, None]:
        acc, acc_sums, acc_maxes = carry
        g, (sums, maxes) = grad_fn(params, mb)
        acc = jax.tree.map(lambda a, x: a + x.astype(jnp.float32), acc, g)
        acc_sums = jax.tree.map(jnp.add, acc_sums, sums)
        return (acc, acc_sums, jax.tree.map(jnp.maximum, acc_maxes, maxes)), None

    first = jax.tree.map(lambda x: x[0], micro)
    g_shape, (sums_shape, maxes_shape) = jax.eval_shape(grad_fn, params, first)
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, jnp.float32), (g_shape, sums_shape, maxes_shape)
    )
    (grads, sums, maxes), _ = jax.lax.scan(body, zeros, micro)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    return grads, {**sums, **maxes}, denominators


def _global_norm(tree: Any) -> Float[Array, ""]:
    """The l2 norm of all leaves together, in float32."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def make_grad_fn(
    graphdef: nnx.GraphDef, cfg: TrainConfig
) -> Callable[[TrainState, TrainBatch], tuple[nnx.State, Metrics]]:
    """A jitted ``(state, batch) -> (grads, metrics)``: the step's gradient, without the update.

    For tests and diagnostics (e.g. checking that micro-batching leaves the gradient unchanged).
    """

    def grad_fn(state: TrainState, batch: TrainBatch) -> tuple[nnx.State, Metrics]:
        grads, metrics, _ = _grads_and_metrics(graphdef, cfg, state.params, state.rest, batch)
        return grads, metrics

    return jax.jit(grad_fn)


def make_train_step(
    graphdef: nnx.GraphDef, cfg: TrainConfig
) -> Callable[[TrainState, TrainBatch], tuple[TrainState, Metrics]]:
    """Builds the jitted train step ``(state, batch) -> (state, metrics)``; ``state`` is donated.

    Compile once per batch shape: ``graphdef`` and ``cfg`` are closed over (static), so a new
    program is compiled only for a new ``[B, T]`` (bounded by packing's buckets).

    Metrics (scalars): ``loss/*``, ``policy/*``, ``is/*`` from ``losses.compute_loss``;
    ``optim/grad_norm`` (before clipping), ``optim/lr`` (of this update), ``optim/skipped``
    (1 if the guard skipped it), ``optim/skipped_total``, ``optim/step`` (applied updates after
    it); ``tokens/loss``, ``tokens/sequences``, ``tokens/real`` (non-padding slots),
    ``tokens/slots`` (``B * T``).
    """
    optimizer = make_optimizer(cfg.optimizer)
    schedule = make_schedule(cfg.optimizer)

    def train_step(state: TrainState, batch: TrainBatch) -> tuple[TrainState, Metrics]:
        grads, metrics, denominators = _grads_and_metrics(
            graphdef, cfg, state.params, state.rest, batch
        )
        grad_norm = _global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics["loss/total"])
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        def keep_if_finite(new: Any, old: Any) -> Any:
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        skipped = state.skipped + (~finite).astype(jnp.int32)
        new_state = state.replace(
            params=keep_if_finite(params, state.params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            step=state.step + finite.astype(jnp.int32),
            skipped=skipped,
        )
        metrics |= {
            "optim/grad_norm": grad_norm,
            "optim/lr": jnp.asarray(schedule(state.step), jnp.float32),
            "optim/skipped": (~finite).astype(jnp.float32),
            "optim/skipped_total": skipped.astype(jnp.float32),
            "optim/step": new_state.step.astype(jnp.float32),
            "tokens/loss": denominators.num_tokens,
            "tokens/sequences": denominators.num_seqs,
            "tokens/real": (batch.segment_ids > 0).sum().astype(jnp.float32),
            "tokens/slots": jnp.asarray(batch.tokens.size, jnp.float32),
        }
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0)


def make_logprob_fn(
    graphdef: nnx.GraphDef, chunk_size: int = 512
) -> Callable[[nnx.State, nnx.State, TrainBatch], Float[Array, "B T"]]:
    """A jitted ``(params, rest, batch) -> logp [B, T]`` for ``old_logp`` and ``ref_logp``.

    Example (the old policy is the params before this round of updates):
        ``batch = batch.replace(old_logp=logprob_fn(state.params, state.rest, batch))``
    """

    def logprob_fn(params: nnx.State, rest: nnx.State, batch: TrainBatch) -> Array:
        logp = _token_logprobs(graphdef, params, rest, batch, chunk_size, False)
        return jnp.where(batch.loss_mask > 0, logp, 0.0)

    return jax.jit(logprob_fn)
