"""Placing the learner on a device mesh: FSDP, tensor parallelism and data parallelism.

The mesh has three axes, ``("data", "fsdp", "tensor")``:

- ``data``: pure data parallelism. Batch rows are split over it; parameters are replicated.
- ``fsdp``: fully sharded data parallelism (ZeRO-3). Batch rows are split over it too, and the
  parameters, gradients and optimizer moments are sharded along their ``embed`` dimension; XLA
  all-gathers each weight where it is used and reduce-scatters its gradient.
- ``tensor``: Megatron-style tensor parallelism over heads, MLP width and vocabulary.

Every model parameter carries *logical* axis names (``vocab``, ``embed``, ``mlp``, ``heads``,
``kv_heads``, ``head_dim``, ``layers``) as flax ``out_sharding`` metadata (see
``mtrl_jax.models.layers``). A rules table maps each logical name to a mesh axis or ``None``
(replicated); :data:`DEFAULT_RULES` is the FSDP x TP layout above. A dimension whose size is not
divisible by its mesh axis's size is replicated instead (e.g. 2 KV heads on ``tensor=4``): the
layout stays valid for any model, at the cost of memory on that one dimension. A mesh axis is
used at most once per parameter; a later dimension asking for an axis already taken is
replicated.

The train step itself is layout-agnostic (``mtrl_jax.train_step``): :func:`make_sharded_train_step`
jits the *same* python step function with explicit in/out shardings, and XLA's sharding
propagation inserts the collectives; :func:`make_sharded_logprob_fn` does the same for the
log-prob forward that recomputes old log-probs.

:func:`shard_sampler` places a ``SamplingEngine``'s weights (by the same rules) and its KV cache
(slots over ``("data", "fsdp")``, KV heads by the ``kv_heads`` rule) on a mesh; the sampler's
compiled programs then run SPMD and draw the same tokens as on one device.

:func:`estimate_memory` gives a per-device budget before anything is allocated.

A run's devices (:func:`make_run_meshes`): the sampler either shares the training mesh
(*colocated*, time-shared) or gets its own devices after the training ones (*disjoint*), so
generation and training can run at the same time; trained weights then reach the sampler by
``jax.device_put`` onto the sampler mesh's shardings (a copy across device sets).

Multi-process meshes (``mtrl_jax.distributed``): after ``jax.distributed.initialize`` a mesh over
``jax.devices()`` spans every process. :func:`shard_train_state` and :func:`shard_batch` then
expect every process to pass the *same* host values (``jax.device_put`` keeps each process's
addressable shards of them), and the step runs unchanged. The sampler is single-process only.

Non-goals (later): per-process batches (each host feeding only its own rows), multi-process
sampling, sequence/context parallelism, pipeline stages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtrl_jax.models import DecoderConfig
from mtrl_jax.models.attention import KVCache
from mtrl_jax.train_step import (
    Metrics,
    TrainConfig,
    TrainState,
    make_logprob_fn,
    make_train_step,
)
from mtrl_jax.types import Array, TrainBatch

if TYPE_CHECKING:
    from mtrl_jax.sampler import SamplingEngine

MESH_AXES = ("data", "fsdp", "tensor")
# Mesh axes that split batch rows (both data-parallel flavours).
BATCH_AXES = ("data", "fsdp")

Rules = Mapping[str, str | None]

DEFAULT_RULES: Rules = {
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "layers": None,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardingConfig:
    """Sizes of the mesh axes; their product is the number of devices used.

    Attributes:
        data: data-parallel replicas (parameters replicated).
        fsdp: fully-sharded data-parallel ways (parameters sharded on ``embed``).
        tensor: tensor-parallel ways (heads, MLP width and vocabulary sharded).
    """

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        for name in MESH_AXES:
            size = getattr(self, name)
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"mesh axis {name!r} must be a positive int, got {size!r}")

    @property
    def num_devices(self) -> int:
        """The product of the axis sizes."""
        return self.data * self.fsdp * self.tensor

    @property
    def shape(self) -> dict[str, int]:
        """``{"data": ..., "fsdp": ..., "tensor": ...}``."""
        return {name: getattr(self, name) for name in MESH_AXES}


def make_mesh(cfg: ShardingConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh over ``devices`` (default: all of ``jax.devices()``).

    ``tensor`` is the fastest-varying axis, so tensor-parallel groups are neighbouring devices
    (the same host / NVLink island in the usual device order).

    Raises:
        ValueError: the axis sizes' product differs from the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if cfg.num_devices != len(devices):
        raise ValueError(
            f"mesh {cfg.shape} needs data*fsdp*tensor = {cfg.num_devices} devices, "
            f"got {len(devices)}"
        )
    grid = np.asarray(devices, dtype=object).reshape(cfg.data, cfg.fsdp, cfg.tensor)
    return Mesh(grid, MESH_AXES)


def make_run_meshes(
    train: ShardingConfig,
    sampler: ShardingConfig | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[Mesh, Mesh]:
    """The training mesh and the sampler's mesh of one run.

    The training mesh takes the first ``train.num_devices`` devices; a disjoint sampler mesh
    (``sampler`` given) takes the rest. Together they must use every device: a device left
    out is almost always a typo in the mesh shape, and costs as much as a used one.

    Args:
        train: the training mesh's axis sizes.
        sampler: the sampler mesh's axis sizes, or None to sample on the training mesh.
        devices: the devices to split (default: ``jax.devices()``, every process's).

    Returns:
        ``(train_mesh, sampler_mesh)``; the same mesh twice when ``sampler`` is None.

    Raises:
        ValueError: the device counts do not add up to ``len(devices)`` (a one-line message).
    """
    devices = list(jax.devices() if devices is None else devices)
    wanted = train.num_devices + (0 if sampler is None else sampler.num_devices)
    if wanted != len(devices):
        parts = f"train {train.shape} = {train.num_devices}"
        if sampler is not None:
            parts += f" + sampler {sampler.shape} = {sampler.num_devices}"
        raise ValueError(f"mesh needs {parts} devices in all, but there are {len(devices)}")
    train_mesh = make_mesh(train, devices[: train.num_devices])
    if sampler is None:
        return train_mesh, train_mesh
    return train_mesh, make_mesh(sampler, devices[train.num_devices :])


def validate_rules(rules: Rules, mesh: Mesh) -> None:
    """Checks that every rule maps to one of ``mesh``'s axes or to ``None``.

    Raises:
        ValueError: a rule names an axis the mesh does not have.
    """
    for logical, axis in rules.items():
        if axis is not None and axis not in mesh.axis_names:
            raise ValueError(
                f"rule {logical!r} -> {axis!r}: mesh axes are {tuple(mesh.axis_names)} (or None)"
            )


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """The mesh ``PartitionSpec`` of one array from its logical axis names.

    A dimension is replicated (``None``) when its mesh axis has size 1, does not divide its
    size, or is already used by an earlier dimension.

    Raises:
        ValueError: a logical name has no rule, or names and shape differ in length.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical axes {tuple(names)} do not match shape {tuple(shape)}")
    spec: list[str | None] = []
    for name, size in zip(names, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(
                f"logical axis {name!r} has no sharding rule; rules cover {sorted(rules)}"
            )
        axis = rules[name]
        if axis is None or axis in spec or mesh.shape[axis] == 1 or size % mesh.shape[axis]:
            spec.append(None)
        else:
            spec.append(axis)
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def param_shardings(tree: Any, mesh: Mesh, rules: Rules | None = None) -> Any:
    """``NamedSharding`` for every array leaf of ``tree``, with the same structure.

    ``tree`` is a ``TrainState``, an ``nnx.State`` of params, or any pytree holding them (the
    optax state mirrors the params, so its moments carry the same metadata). An ``nnx.Variable``
    with ``out_sharding`` metadata is sharded by the rules; every other leaf (step counters,
    scalars, variables without names) is replicated.
    """
    rules = DEFAULT_RULES if rules is None else rules
    validate_rules(rules, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(leaf: Any) -> Any:
        if not _is_variable(leaf):
            return replicated
        names = leaf.get_metadata().get("out_sharding")
        if names is None:
            return leaf.replace(replicated)
        spec = logical_to_spec(names, np.shape(leaf.get_value()), mesh, rules)
        return leaf.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, tree, is_leaf=_is_variable)


def shard_train_state(state: TrainState, mesh: Mesh, rules: Rules | None = None) -> TrainState:
    """Places ``state`` on ``mesh``: params and optimizer moments by the rules, rest replicated."""
    return jax.device_put(state, param_shardings(state, mesh, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (the leading dimension) split over ``("data", "fsdp")``; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def shard_batch(batch: TrainBatch, mesh: Mesh) -> TrainBatch:
    """Places a ``[B, T]`` batch with :func:`batch_sharding` (``B`` divisible by data*fsdp)."""
    rows, ways = batch.tokens.shape[0], mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % ways:
        raise ValueError(f"batch rows {rows} are not divisible by data*fsdp = {ways}")
    return jax.device_put(batch, batch_sharding(mesh))


def make_sharded_train_step(
    graphdef: nnx.GraphDef, cfg: TrainConfig, mesh: Mesh, rules: Rules | None = None
) -> Callable[[TrainState, TrainBatch], tuple[TrainState, Metrics]]:
    """The train step of ``make_train_step``, jitted with explicit in/out shardings.

    The python step function is taken from the jitted one (``__wrapped__``, which ``jax.jit``
    sets; failing that the jitted function itself is nested, which the outer shardings govern
    all the same) and re-jitted with ``in_shardings=(state, batch)``, ``out_shardings=(state,
    replicated metrics)`` and the state donated: the loss code is shared, not copied, and the
    state keeps its layout across steps.

    The state shardings come from the first state passed in (its structure and metadata), so
    the returned function compiles on its first call, and again only for a new batch shape.
    Place inputs first with :func:`shard_train_state` and :func:`shard_batch` to avoid a copy.

    Args:
        graphdef: the model's graphdef from ``init_train_state``.
        cfg: the train config.
        mesh: the device mesh.
        rules: logical-axis rules (default :data:`DEFAULT_RULES`).
    """
    jitted = make_train_step(graphdef, cfg)
    step_fn = getattr(jitted, "__wrapped__", jitted)
    validate_rules(DEFAULT_RULES if rules is None else rules, mesh)
    compiled: dict[Any, Callable[[TrainState, TrainBatch], tuple[TrainState, Metrics]]] = {}

    def sharded_step(state: TrainState, batch: TrainBatch) -> tuple[TrainState, Metrics]:
        key = jax.tree.structure(state)
        if key not in compiled:
            state_shardings = param_shardings(state, mesh, rules)
            compiled[key] = jax.jit(
                step_fn,
                in_shardings=(state_shardings, batch_sharding(mesh)),
                out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
                donate_argnums=0,
            )
        return compiled[key](state, batch)

    return sharded_step


def make_sharded_logprob_fn(
    graphdef: nnx.GraphDef,
    chunk_size: int,
    state: TrainState,
    mesh: Mesh,
    rules: Rules | None = None,
) -> Callable[[nnx.State, nnx.State, TrainBatch], Array]:
    """``make_logprob_fn``'s ``(params, rest, batch) -> logp [B, T]``, with explicit shardings.

    Inputs take the train state's layout and :func:`batch_sharding`; the log-probs come out
    with the batch's row sharding, so they drop into a sharded batch (``old_logp``) that the
    sharded train step accepts without a copy.

    Args:
        graphdef: the model's graphdef from ``init_train_state``.
        chunk_size: vocabulary-chunked log-prob chunk (``TrainConfig.chunk_size``).
        state: a train state of the run (its structure and metadata give the shardings).
        mesh: the device mesh.
        rules: logical-axis rules (default :data:`DEFAULT_RULES`).
    """
    jitted = make_logprob_fn(graphdef, chunk_size)
    fn = getattr(jitted, "__wrapped__", jitted)
    rows = batch_sharding(mesh)
    return jax.jit(
        fn,
        in_shardings=(
            param_shardings(state.params, mesh, rules),
            param_shardings(state.rest, mesh, rules),
            rows,
        ),
        out_shardings=rows,
    )


# ----------------------------------------------------------------------------- sampler

# Logical names of the KV cache's ``k``/``v`` dims ``[L, B, S, K, H]``; the slot dim ``B`` is
# handled apart (it takes the batch axes, like a train batch's rows) and ``S`` is never split:
# every decode step writes one position of every row, which a split ``S`` would serialise.
_CACHE_KV_NAMES = ("layers", None, None, "kv_heads", "head_dim")


def kv_cache_sharding(cache: KVCache, mesh: Mesh, rules: Rules | None = None) -> KVCache:
    """``NamedSharding`` of every array of a :class:`KVCache` (a ``KVCache`` of shardings).

    Layout: KV heads (and layers, head_dim) follow the rules, as the ``k_proj``/``v_proj``
    weights do, so attention over cached heads needs no communication under tensor
    parallelism. The slot dimension ``B`` (one row per sequence) is split over the mesh axes
    of ``("data", "fsdp")`` that the rules leave free on ``k``/``v`` and whose product divides
    ``B`` -- both if possible, else the larger single one that divides, else none (replicated).
    ``segment_ids`` ``[B, S]`` and ``index`` ``[B]`` split ``B`` the same way.

    Args:
        cache: the cache (only shapes are read).
        mesh: the device mesh.
        rules: logical-axis rules (default :data:`DEFAULT_RULES`).
    """
    rules = DEFAULT_RULES if rules is None else rules
    validate_rules(rules, mesh)
    kv = list(logical_to_spec(_CACHE_KV_NAMES, cache.k.shape, mesh, rules))
    slots = cache.k.shape[1]
    free = [a for a in BATCH_AXES if a not in kv and mesh.shape[a] > 1]
    candidates = [tuple(free)] + sorted(([a] for a in free), key=lambda a: -mesh.shape[a[0]])
    batch: str | tuple[str, ...] | None = None
    for axes in candidates:
        if axes and slots % math.prod(mesh.shape[a] for a in axes) == 0:
            batch = axes[0] if len(axes) == 1 else tuple(axes)
            break
    kv[1] = batch
    return KVCache(
        k=NamedSharding(mesh, PartitionSpec(*kv)),
        v=NamedSharding(mesh, PartitionSpec(*kv)),
        segment_ids=NamedSharding(mesh, PartitionSpec(batch, None)),
        index=NamedSharding(mesh, PartitionSpec(batch)),
    )


def shard_sampler(engine: SamplingEngine, mesh: Mesh, rules: Rules | None = None) -> None:
    """Places a sampling engine's weights and KV cache on ``mesh``, in place.

    Weights take :func:`param_shardings` (the trainer's layout, so trained params handed to
    ``engine.set_params`` are already in place), the cache :func:`kv_cache_sharding`. The
    engine's jitted ``prefill_chunk``/``decode_steps`` then compile for these input layouts and
    XLA partitions them; tokens and log-probs equal the single-device engine's (the sampling
    noise is keyed per request and token, not per device).

    Call it between device calls (before ``generate``/``generate_batch``, or between rounds);
    later ``engine.set_params`` calls move new weights to the same layout
    (:meth:`SamplingEngine.place`).

    Args:
        engine: the engine to re-place.
        mesh: a mesh whose devices this process all owns.
        rules: logical-axis rules (default :data:`DEFAULT_RULES`).

    Raises:
        ValueError: the mesh spans devices of other processes.
    """
    if not NamedSharding(mesh, PartitionSpec()).is_fully_addressable:
        raise ValueError("shard_sampler needs a mesh of this process's devices only")
    state, cache = engine._state, engine._cache  # shapes only: the engine moves them itself
    engine.place(param_shardings(state, mesh, rules), kv_cache_sharding(cache, mesh, rules))


# ----------------------------------------------------------------------------- memory estimate

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Remat policy name -> what the backward pass keeps per layer (see `estimate_memory`).
_REMAT_KIND = {
    "none": "none",
    "everything_saveable": "none",
    "full": "full",
    "nothing_saveable": "full",
    "dots_with_no_batch_dims_saveable": "dots",
}
_OPTIMIZER_BYTES_PER_PARAM = {"adamw": 8, "sgd": 0}


def count_params(cfg: DecoderConfig) -> int:
    """Number of parameters of a decoder with this config."""
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * h, cfg.num_kv_heads * h
    attn = d * (q + 2 * kv) + q * d
    attn += (q + 2 * kv) * cfg.qkv_bias + d * cfg.out_bias + 2 * h * cfg.qk_norm
    per_layer = attn + 3 * d * f + 2 * d
    embeddings = cfg.vocab_size * d * (1 if cfg.tie_word_embeddings else 2)
    return cfg.num_layers * per_layer + embeddings + d


def estimate_memory(
    model_config: DecoderConfig,
    mesh_shape: Mapping[str, int],
    *,
    batch_tokens: int,
    optimizer: str = "adamw",
    remat: str = "full",
    kv_cache_tokens: int = 0,
) -> dict[str, int]:
    """Per-device bytes of one training step (an estimate; XLA buffers and fragmentation excluded).

    Terms (``P`` parameters, ``p`` bytes per parameter from ``param_dtype``, ``a`` bytes per
    activation from ``dtype``, ``S = fsdp * tensor``, ``R = data * fsdp``; ``L, D, F, N, K, H`` as
    in ``DecoderConfig``; ``t = batch_tokens / R`` tokens per device):

    - ``params = P * p / S``; ``grads`` the same (the step casts gradients to the param dtype).
    - ``optimizer = P * 8 / S`` for AdamW (two float32 moments), 0 for ``"sgd"``.
    - ``activations``: what the backward pass keeps, per token and layer. One layer's working set
      is ``w = 6D + ((2N + 2K)H + 3F) / tensor``: ``6D`` (residual input, two norm outputs,
      attention and MLP outputs, block output) replicated over ``tensor``, and q, k, v, the
      attention output, gate, up and their product split over it. Attention scores are not
      counted (chunked/fused attention keeps them ``O(T)``), nor the logits (bounded by
      ``TrainConfig.chunk_size``).

      - ``remat="none"`` (or ``everything_saveable``): ``L * t * w * a``.
      - ``remat="full"`` (or ``nothing_saveable``): the block inputs ``L * t * D * a`` plus one
        layer's working set ``t * w * a``, recomputed during its backward pass.
      - ``remat="dots_with_no_batch_dims_saveable"``: the projection outputs,
        ``L * t * (2D + ((N + 2K)H + 2F) / tensor) * a``, plus one layer's working set.

    - ``kv_cache = kv_cache_tokens * L * 2KH * a / (R * tensor)`` (sequences over ``R``, KV heads
      over ``tensor``); 0 when training only.

    Example: Llama-3-8B (``V=128256, D=4096, F=14336, L=32, N=32, K=8, H=128``, untied,
    ``P = 8,030,261,248``) trained in float32 with bfloat16 activations, 8192 tokens, full
    remat, on one device: params 32.1 GB + grads 32.1 GB + AdamW 64.2 GB + activations 3.4 GB
    = 131.9 GB, beyond one 80 GB GPU. With ``fsdp=8`` the first three terms divide by 8 and the
    activations by 8 (tokens split over devices) to 16.5 GB per device::

        >>> cfg = DecoderConfig(architecture="LlamaForCausalLM", vocab_size=128256,
        ...     hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
        ...     num_kv_heads=8, head_dim=128, dtype="bfloat16", param_dtype="float32")
        >>> round(estimate_memory(cfg, {}, batch_tokens=8192)["total"] / 1e9, 1)
        131.9
        >>> round(estimate_memory(cfg, {"fsdp": 8}, batch_tokens=8192)["total"] / 1e9, 1)
        16.5

    Args:
        model_config: the decoder.
        mesh_shape: sizes of ``data``, ``fsdp``, ``tensor`` (missing axes are 1).
        batch_tokens: tokens (``B * T``) in one micro-batch, all devices together.
        optimizer: ``"adamw"`` or ``"sgd"`` (no state).
        remat: a ``DecoderConfig.remat_policy`` name, except ``dots_saveable`` (its attention
            scores depend on the sequence length, which this estimate does not take).
        kv_cache_tokens: tokens of KV cache held for sampling (all devices together).

    Returns:
        Bytes per device: ``params``, ``grads``, ``optimizer``, ``activations``, ``kv_cache``
        and their sum ``total``.

    Raises:
        ValueError: unknown mesh axis, optimizer or remat policy; negative token counts.
    """
    unknown = set(mesh_shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
    sizes = ShardingConfig(**dict(mesh_shape))
    if optimizer not in _OPTIMIZER_BYTES_PER_PARAM:
        raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZER_BYTES_PER_PARAM)}")
    if remat not in _REMAT_KIND:
        raise ValueError(f"remat must be one of {sorted(_REMAT_KIND)}, got {remat!r}")
    if batch_tokens < 0 or kv_cache_tokens < 0:
        raise ValueError("batch_tokens and kv_cache_tokens must be >= 0")

    c = model_config
    p, a = _DTYPE_BYTES[c.param_dtype], _DTYPE_BYTES[c.dtype]
    shards, replicas, tp = sizes.fsdp * sizes.tensor, sizes.data * sizes.fsdp, sizes.tensor
    n_params = count_params(c)
    d, f, hq, hkv = c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads
    t = batch_tokens / replicas
    per_token_layer = 6 * d + ((2 * hq + 2 * hkv) * c.head_dim + 3 * f) / tp
    kind = _REMAT_KIND[remat]
    if kind == "none":
        saved = c.num_layers * per_token_layer
    elif kind == "full":
        saved = c.num_layers * d + per_token_layer
    else:
        dots = 2 * d + ((hq + 2 * hkv) * c.head_dim + 2 * f) / tp
        saved = c.num_layers * dots + per_token_layer
    out = {
        "params": math.ceil(n_params * p / shards),
        "grads": math.ceil(n_params * p / shards),
        "optimizer": math.ceil(n_params * _OPTIMIZER_BYTES_PER_PARAM[optimizer] / shards),
        "activations": math.ceil(t * saved * a),
        "kv_cache": math.ceil(
            kv_cache_tokens * c.num_layers * 2 * hkv * c.head_dim * a / (replicas * tp)
        ),
    }
    out["total"] = sum(out.values())
    return out
