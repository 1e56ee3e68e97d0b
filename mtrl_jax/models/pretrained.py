"""Hugging Face checkpoint I/O: ``load_pretrained`` and ``save_pretrained`` for local folders.

A folder holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Parameter names and layouts are transformers' own
(``model.layers.{i}.self_attn.q_proj.weight`` as ``[out, in]`` matrices), so folders we write
load in ``AutoModelForCausalLM`` and published checkpoints load here. The mapping between our
stacked, head-shaped parameters and HF's per-layer matrices is one table, :func:`tensor_specs`.

Loading builds the model abstractly (``nnx.eval_shape``: no random init, no wasted memory), then
fills each parameter from the files, checking every shape. Missing tensors, unexpected tensors
and shape mismatches are errors naming the HF tensor.

Non-goals: downloading from the Hub (pass a local folder; ``huggingface_hub.snapshot_download``
fetches one), PyTorch ``.bin`` checkpoints, quantised weights, sharded (multi-host) loading.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from mtrl_jax.models.config import DecoderConfig
from mtrl_jax.models.decoder import Decoder

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Tensors some checkpoints carry that the model recomputes (older Llama exports).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class TensorSpec:
    """How one of our parameters maps to HF tensors.

    Attributes:
        path: our parameter path in ``nnx.state(model)``.
        hf_name: HF tensor name; contains ``{i}`` for per-layer tensors (our ``layers`` axis).
        kind: ``"linear"`` (HF stores ``[prod(out), prod(in)]``, we store ``in + out`` axes),
            ``"vector"`` (flat in HF: norm scales, biases) or ``"embedding"`` (same layout).
        in_ndim: for ``"linear"``: how many leading axes of ours are inputs.
    """

    path: tuple[str, ...]
    hf_name: str
    kind: Literal["linear", "vector", "embedding"] = "vector"
    in_ndim: int = 1

    @property
    def per_layer(self) -> bool:
        """Whether the parameter is stacked over layers."""
        return "{i}" in self.hf_name

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """HF shape of one layer's tensor whose shape is ``shape`` in our layout."""
        if self.kind == "linear":
            return (math.prod(shape[self.in_ndim :]), math.prod(shape[: self.in_ndim]))
        return shape if self.kind == "embedding" else (math.prod(shape),)

    def to_hf(self, value: np.ndarray) -> np.ndarray:
        """Our layout (one layer) -> HF layout."""
        if self.kind == "linear":
            return np.ascontiguousarray(value.reshape(self.hf_shape(value.shape)[::-1]).T)
        return value.reshape(self.hf_shape(value.shape))

    def from_hf(self, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """HF layout -> our layout of ``shape`` (one layer; shapes already checked)."""
        return value.T.reshape(shape) if self.kind == "linear" else value.reshape(shape)


def tensor_specs(config: DecoderConfig) -> list[TensorSpec]:
    """Every parameter of a :class:`Decoder` with ``config`` and its HF counterpart."""
    specs = [
        TensorSpec(("embed_tokens", "embedding"), "model.embed_tokens.weight", "embedding"),
        TensorSpec(("norm", "scale"), "model.norm.weight"),
    ]
    if not config.tie_word_embeddings:
        specs.append(TensorSpec(("lm_head", "kernel"), "lm_head.weight", "linear"))
    layer = "model.layers.{i}"
    for norm in ("input_layernorm", "post_attention_layernorm"):
        specs.append(TensorSpec(("layers", norm, "scale"), f"{layer}.{norm}.weight"))
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        path, name = ("layers", "self_attn", proj), f"{layer}.self_attn.{proj}"
        in_ndim = 2 if proj == "o_proj" else 1  # o_proj reads [N, H]; the others read [D]
        specs.append(TensorSpec((*path, "kernel"), f"{name}.weight", "linear", in_ndim))
        if config.out_bias if proj == "o_proj" else config.qkv_bias:
            specs.append(TensorSpec((*path, "bias"), f"{name}.bias"))
    if config.qk_norm:
        for norm in ("q_norm", "k_norm"):
            path = ("layers", "self_attn", norm, "scale")
            specs.append(TensorSpec(path, f"{layer}.self_attn.{norm}.weight"))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        path = ("layers", "mlp", proj, "kernel")
        specs.append(TensorSpec(path, f"{layer}.mlp.{proj}.weight", "linear"))
    return specs


class _TensorSource:
    """Lazy access to the tensors of one checkpoint folder, single-file or sharded.

    A context manager: the safetensors files stay open (memory-mapped) only while loading.
    """

    def __init__(self, path: Path) -> None:
        if (path / SAFETENSORS).exists():
            files = [path / SAFETENSORS]
        elif (path / SAFETENSORS_INDEX).exists():
            weight_map = json.loads((path / SAFETENSORS_INDEX).read_text())["weight_map"]
            files = [path / name for name in sorted(set(weight_map.values()))]
        else:
            raise FileNotFoundError(f"no {SAFETENSORS} or {SAFETENSORS_INDEX} in {path}")
        self._stack = contextlib.ExitStack()
        handles = [self._stack.enter_context(safe_open(str(f), "numpy")) for f in files]
        self.where = {name: h for h in handles for name in h.keys()}  # noqa: SIM118

    def __enter__(self) -> _TensorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.where[name].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        return self.where[name].get_tensor(name)


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = None,
    **overrides: Any,
) -> Decoder:
    """Loads a Llama 3 / Qwen2 / Qwen3 checkpoint from a local HF folder.

    Args:
        path: folder with ``config.json`` and ``model.safetensors`` (or a sharded index).
        dtype: compute dtype (``jnp.float32``, ``jnp.bfloat16`` or their names).
        param_dtype: storage dtype of the parameters; defaults to ``dtype``.
        **overrides: other :class:`DecoderConfig` fields, e.g. ``remat_policy="full"``.

    Returns:
        The :class:`Decoder` with the checkpoint's weights.

    Raises:
        FileNotFoundError: no config or weights in ``path``.
        ValueError: unsupported architecture, or a missing / unexpected / misshapen tensor
            (the message names it).
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"no config.json in {path}")
    dtype_name = jnp.dtype(dtype).name
    config = DecoderConfig.from_hf(
        json.loads(config_file.read_text()),
        dtype=dtype_name,
        param_dtype=jnp.dtype(param_dtype).name if param_dtype is not None else dtype_name,
        **overrides,
    )
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(state))
    specs = tensor_specs(config)
    if set(flat) != {s.path for s in specs}:  # a bug in tensor_specs, not in the checkpoint
        raise AssertionError(f"tensor_specs out of sync: {set(flat) ^ {s.path for s in specs}}")

    def hf_names(spec: TensorSpec) -> list[str]:
        if spec.per_layer:
            return [spec.hf_name.format(i=i) for i in range(config.num_layers)]
        return [spec.hf_name]

    def layer_shape(spec: TensorSpec) -> tuple[int, ...]:
        shape = tuple(flat[spec.path].shape)
        return shape[1:] if spec.per_layer else shape

    with _TensorSource(path) as source:
        # Check every name and shape before reading any data: fail in seconds, not after
        # reading gigabytes.
        expected: set[str] = set()
        for spec in specs:
            want = spec.hf_shape(layer_shape(spec))
            for name in hf_names(spec):
                expected.add(name)
                if name not in source.where:
                    raise ValueError(f"checkpoint {path} is missing tensor {name!r}")
                if source.shape(name) != want:
                    raise ValueError(
                        f"tensor {name!r} has shape {source.shape(name)} in {path}, but the "
                        f"config implies {want}"
                    )
        unexpected = set(source.where) - expected
        if config.tie_word_embeddings:
            unexpected.discard("lm_head.weight")  # some tied exports still write a copy
        unexpected = {n for n in unexpected if not n.endswith(_IGNORED_SUFFIXES)}
        if unexpected:
            raise ValueError(f"checkpoint {path} has unexpected tensors: {sorted(unexpected)[:10]}")

        leaves = []
        for spec in specs:
            var = flat[spec.path]
            arrays = [spec.from_hf(source.get(n), layer_shape(spec)) for n in hf_names(spec)]
            value = np.stack(arrays) if spec.per_layer else arrays[0]
            leaves.append((spec.path, var.replace(jnp.asarray(value, dtype=var.dtype))))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def save_pretrained(
    model: Decoder,
    path: str | os.PathLike[str],
    *,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Writes ``model`` as an HF folder (``config.json`` + safetensors) that transformers loads.

    Tensors are written in the model's ``param_dtype``. Above ``max_shard_bytes`` the weights
    are split into ``model-0000k-of-0000n.safetensors`` files with an index, as transformers
    does.

    Args:
        model: the decoder to save.
        path: target folder (created if missing; existing files of the same names are replaced).
        max_shard_bytes: largest single weights file.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    tensors: dict[str, np.ndarray] = {}
    for spec in tensor_specs(config):
        value = np.asarray(flat[spec.path][...])
        if spec.per_layer:
            for i in range(config.num_layers):
                tensors[spec.hf_name.format(i=i)] = spec.to_hf(value[i])
        else:
            tensors[spec.hf_name] = spec.to_hf(value)

    (path / "config.json").write_text(json.dumps(config.to_hf(), indent=2) + "\n")
    # safetensors (0.8) creates its files with mode 0600 whatever the umask; give the weights
    # the mode open() gave config.json (0666 less the umask), as the folder's other files
    # have. (Reading the umask itself means setting it, which races with other threads.)
    mode = (path / "config.json").stat().st_mode & 0o777
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    metadata = {"format": "pt"}  # transformers checks this key before loading
    for stale in (SAFETENSORS, SAFETENSORS_INDEX):
        (path / stale).unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(path / SAFETENSORS), metadata=metadata)
        os.chmod(path / SAFETENSORS, mode)
        return
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        file_name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file_name), metadata=metadata)
        os.chmod(path / file_name, mode)
        weight_map.update(dict.fromkeys(shard, file_name))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}}
    index["weight_map"] = weight_map
    (path / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
