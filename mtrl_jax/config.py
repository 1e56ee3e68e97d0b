"""The typed run configuration: frozen dataclasses, YAML files, ``key=value`` overrides.

A run is described by one :class:`RunConfig`, a tree of frozen ``kw_only`` dataclasses: the
sections defined here plus the learner's own configs (:class:`SamplerConfig`,
:class:`RolloutConfig`, :class:`TrainConfig`, :class:`PackingConfig`). It is built from
plain data by :func:`from_dict`, which is strict: an unknown key names its dotted path and the
closest valid key, a value of the wrong type names the path, the expected type and what it got,
and each section's ``__post_init__`` check is reported with the section's path.
:func:`load_config` reads a YAML file or a shipped config by name (``mtrl_jax/configs/*.yaml``),
follows its optional ``base:`` chain (deep merge, child wins), applies command-line overrides
(``train.optimizer.learning_rate=1e-4``) and validates. :func:`flatten` gives the resolved config
as dotted string params for MLflow.

YAML is read with PyYAML's safe loader, adjusted towards YAML 1.2 where 1.1 surprises: ``1e-4``
is a float (1.1 reads it as a string) and only ``true``/``false`` are booleans (1.1 also turns
``yes``/``no``/``on``/``off`` into booleans). Float fields also accept a string spelling a
decimal number, for data loaded elsewhere with plain ``yaml.safe_load``.

Non-goals: a general schema library (only the field types the configs use are supported),
environment-variable interpolation, writing configs back with their comments.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mtrl_jax.packing import PackingConfig
from mtrl_jax.rollout.engine import RolloutConfig
from mtrl_jax.sampler.config import SamplerConfig
from mtrl_jax.train_step import TrainConfig

CONFIG_DIR = Path(__file__).parent / "configs"
"""Folder of the shipped YAML configs (package data)."""

T = TypeVar("T")

BASE_KEY = "base"
"""Top-level YAML key naming the config a file extends (a shipped name or a relative path)."""


class ConfigError(ValueError):
    """A config that cannot be read or is invalid; the message names the offending key path."""


# --- YAML dialect --------------------------------------------------------------------------

_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# Floats with an exponent but no dot (1e-4, 2E+3), and the 1.2 exponent without a sign
# (1.0e4), which YAML 1.1 reads as strings. Integers never match: they have neither.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
# A string a float field accepts: decimal notation only (no "nan", "inf" or "1_000").
_DECIMAL_RE = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")


class _Loader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 booleans, exponent floats and an error on duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, _BOOL_RE, list("tTfF"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """Safe dumper that also quotes strings our loader would read as floats (``"1e-4"``).

    It keeps YAML 1.1's booleans too, so strings such as ``"yes"`` stay quoted and the output
    reads back the same under plain ``yaml.safe_load``.
    """


_Dumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


def parse_yaml(text: str, *, source: str = "<string>") -> Any:
    """Parses YAML text with this module's dialect; syntax errors become :class:`ConfigError`.

    >>> parse_yaml("{lr: 1e-4, flag: yes}")
    {'lr': 0.0001, 'flag': 'yes'}
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {e}") from None


# --- generic dataclass <-> data ----------------------------------------------------------


class _Mismatch(Exception):
    """Internal: a value is not of the requested kind (the caller words the error)."""


def _yaml_key(field: dataclasses.Field[Any]) -> str:
    """The key of a field in YAML: ``metadata["yaml"]`` (for Python keywords) or its name."""
    return field.metadata.get("yaml", field.name)


@functools.cache
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """YAML key -> (field, resolved type) for the init fields of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {_yaml_key(f): (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _describe(value: Any) -> str:
    """``"str 'abc'"``: a value's YAML-ish type and a short repr, for error messages."""
    if value is None:
        return "null"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(tp: Any) -> str:
    """A readable name of a supported field type, e.g. ``tuple[int, ...] | None``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple:
        inner = (
            f"{_type_name(args[0])}, ..."
            if args[-1:] == (...,)
            else ", ".join(map(_type_name, args))
        )
        return f"tuple[{inner}]"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _plain(value: Any, path: str) -> Any:
    """Checks that an untyped value is plain YAML data and returns a fresh copy of it.

    Tuples become lists, so a value survives ``to_dict`` -> YAML -> ``from_dict`` unchanged.
    """
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path}: keys must be strings, got {_describe(k)}")
            out[k] = _plain(v, _join(path, k))
        return out
    raise ConfigError(f"{path}: expected plain YAML data, got {_describe(value)}")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Converts ``value`` to field type ``tp``; raises ``_Mismatch`` if it is the wrong kind.

    Errors *inside* the value (an element of a tuple, a key of a section) are raised as
    :class:`ConfigError` with their own path, so they are never masked by a union's fallback.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _plain(value, path)
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if type(value) is bool:  # 0/1 and "true" are not booleans: say what you mean
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # Data read with plain yaml.safe_load has "1e-4" as a string (YAML 1.1).
        if isinstance(value, str) and _DECIMAL_RE.match(value.strip()):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is Literal:
        # Compare types too: True == 1 and 1 == 1.0 must not pass as one another.
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for alt in args:
            try:
                return _coerce(alt, value, path)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch
        if args[-1:] == (...,):
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(
            _convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        key_tp, value_tp = args or (str, Any)
        return {
            _convert(key_tp, k, path): _convert(value_tp, v, _join(path, str(k)))
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and type(value) is tp:
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return from_dict(tp, value, path=path)
    raise TypeError(f"{path}: field type {tp!r} is not supported by mtrl_jax.config")


def _convert(tp: Any, value: Any, path: str) -> Any:
    """:func:`_coerce` with the wrong-kind case worded as a :class:`ConfigError`."""
    try:
        return _coerce(tp, value, path)
    except _Mismatch:
        hint = ""
        if isinstance(value, int | float) and str in (tp, *typing.get_args(tp)):
            hint = " (quote it to keep it a string)"  # YAML read `2024` or `1e-4` as a number
        message = f"{path}: expected {_type_name(tp)}, got {_describe(value)}{hint}"
        raise ConfigError(message) from None


def from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Builds dataclass ``cls`` (and its nested sections) from plain data, strictly.

    Args:
        cls: a dataclass whose fields use the supported types: ``int``, ``float`` (ints
            accepted), ``bool``, ``str``, ``None``, ``Literal``, ``tuple`` (lists accepted),
            ``dict[str, Any]``, nested dataclasses, and unions of these.
        data: YAML keys -> values; missing optional keys take the field defaults.
        path: dotted path of ``data`` in the whole config, used in error messages.

    Returns:
        The validated instance.

    Raises:
        ConfigError: on an unknown or missing key, a value of the wrong type, or a failed
            ``__post_init__`` check; the message starts with the dotted key path.

    >>> from_dict(SamplerConfig, {"temperature": 0, "prefill_buckets": [8, 32]}).prefill_buckets
    (8, 32)
    """
    where = path or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping ({cls.__name__}), got {_describe(data)}")
    fields = _fields(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(fields)}"
            raise ConfigError(f"{_join(path, str(key))}: unknown key in {cls.__name__}; {hint}")
        field, tp = fields[key]
        kwargs[field.name] = _convert(tp, value, _join(path, key))
    for key, (field, _) in fields.items():
        no_default = field.default is dataclasses.MISSING
        if no_default and field.default_factory is dataclasses.MISSING and field.name not in kwargs:
            raise ConfigError(f"{_join(path, key)}: missing required key of {cls.__name__}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, ConfigError):  # cross-field checks already name their paths
            raise
        raise ConfigError(f"{where}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML data, keyed like the YAML (``from_dict`` inverts it).

    >>> to_dict(SamplerConfig())["prefill_buckets"]
    [16, 64, 256]
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return {_yaml_key(f): _to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def flatten(cfg: Any) -> dict[str, str]:
    """Dotted key -> string value of every leaf, for MLflow params.

    Strings are kept as they are; other values are written as JSON (``null``, ``true``,
    ``[1, 2]``, ``{}``), which is also valid override syntax.

    >>> flatten(SamplerConfig())["prefill_buckets"]
    '[16, 64, 256]'
    """
    out: dict[str, str] = {}

    def visit(section: Any, prefix: str) -> None:
        for field in dataclasses.fields(section):
            name, value = _join(prefix, _yaml_key(field)), getattr(section, field.name)
            if dataclasses.is_dataclass(value):
                visit(value, name)
            else:  # a dict[str, Any] field (env.kwargs) is one param, written as JSON
                plain = _to_plain(value)
                out[name] = plain if isinstance(plain, str) else json.dumps(plain, sort_keys=True)

    visit(cfg, "")
    return out


# --- overrides, files and bases --------------------------------------------------------------


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Returns a copy of ``data`` with each ``a.b.c=value`` override set.

    The value is parsed as YAML (``3``, ``1e-4``, ``true``, ``null``, ``[1, 2]``, ``cispo``);
    a mapping value replaces the whole section. Sections missing from ``data`` are created, so
    a misspelt key reaches :func:`from_dict`, which names it and suggests the right one.

    Raises:
        ConfigError: for an override without ``=`` or with an empty key segment, or one whose
            parent key holds a value that is not a section.

    >>> apply_overrides({"train": {"chunk_size": 8}}, ["train.optimizer.learning_rate=1e-4"])
    {'train': {'chunk_size': 8, 'optimizer': {'learning_rate': 0.0001}}}
    """
    out = copy.deepcopy(dict(data))
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(f"bad override {override!r}: expected key.path=value")
        parts = [p.strip() for p in parts]
        value = parse_yaml(text, source=f"override {override!r}")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                parent = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"bad override {override!r}: {parent} is {_describe(child)}, not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def list_configs() -> list[str]:
    """Names of the shipped configs (``load_config(name)`` loads one).

    >>> "quickstart" in list_configs()
    True
    """
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve(source: str | os.PathLike[str], relative_to: Path | None) -> Path:
    """A shipped name (no separator, no ``.yaml`` suffix) or a path, as a file path."""
    text = os.fspath(source)
    is_name = isinstance(source, str) and not re.search(r"[/\\]|\.ya?ml$", text)
    if is_name:
        path = CONFIG_DIR / f"{text}.yaml"
        if not path.is_file():
            close = difflib.get_close_matches(text, list_configs(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            shipped = ", ".join(list_configs())
            raise ConfigError(f"unknown config {text!r}; {hint}shipped configs: {shipped}")
        return path
    path = Path(text).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return path


def _deep_merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``child``; sections merge recursively, anything else is replaced."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping merged over its ``base`` chain (without the ``base`` key)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"cycle in '{BASE_KEY}': {cycle}")
    data = parse_yaml(path.read_text(encoding="utf-8"), source=str(path))
    if data is None:  # an empty file is an empty mapping: all defaults
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {_describe(data)}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a config name or path, got {base!r}")
    parent = _read_with_bases(_resolve(base, path.parent), (*chain, path))
    return _deep_merge(parent, data)


def load_config_data(source: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The plain data of a config file or shipped name with its ``base`` chain merged in.

    Args:
        source: a YAML path, or the name of a shipped config; None gives ``{}``.
    """
    return {} if source is None else _read_with_bases(_resolve(source, None))


def load_config(
    source: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> RunConfig:
    """Reads, overrides and validates a run config.

    Args:
        source: a YAML file path, or the name of a shipped config (``"quickstart"`` is
            ``mtrl_jax/configs/quickstart.yaml``); None starts from the defaults.
        overrides: ``key.path=value`` strings applied after the file (see
            :func:`apply_overrides`).

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: for a missing file or unknown name, invalid YAML, a ``base`` cycle, a
            malformed override, or an invalid config; the message names the file or key path.

    >>> load_config(None, ["steps=3", "async.mode=async"]).async_.mode
    'async'
    """
    return from_dict(RunConfig, apply_overrides(load_config_data(source), overrides))


def dump_yaml(cfg: Any) -> str:
    """The config as YAML that :func:`load_config` reads back to an equal config."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


# --- the schema ----------------------------------------------------------------------------


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Literal fields are checked again here for configs built in Python, not from YAML."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The policy model.

    Attributes:
        path: a Hugging Face folder (``mtrl_jax.models.pretrained``); None builds the default
            tiny model with ``mtrl_jax.models.make_default.build_default`` into the run dir.
        seed: seed of the default model's tokenizer episodes and weights (unused with ``path``).
        dtype: compute dtype of the model.
    """

    path: str | None = None
    seed: int = 0
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        if self.path is not None and not self.path:
            raise ValueError("path must be a folder or null, got ''")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        _check_choice("dtype", self.dtype, ("float32", "bfloat16"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """The environment and how many of its tasks one RL step plays.

    Attributes:
        id: registered environment id (``gym.make``).
        kwargs: extra ``gym.make`` keyword arguments (plain YAML data); not ``split``.
        train_split: ``split`` passed to ``gym.make`` for training; None passes none (the
            environment's default).
        eval_split: ``split`` of the held-out evaluation environment; None passes none.
        tasks_per_step: tasks per RL step, each played ``rollout.group_size`` times.
    """

    id: str = "mtrl/SopQuickstart-v0"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_split: str | None = "train"
    eval_split: str | None = "test"
    tasks_per_step: int = 8

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id must be a registered environment id, got ''")
        if "split" in self.kwargs:
            raise ValueError("kwargs must not set 'split'; use train_split / eval_split")
        if self.tasks_per_step < 1:
            raise ValueError(f"tasks_per_step must be >= 1, got {self.tasks_per_step}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Shape of the sampling engine (``mtrl_jax.sampler.SamplingEngine``).

    Attributes:
        num_slots: concurrent sequences in the KV cache.
        max_len: tokens one sequence (a whole episode's context) may hold.
        decode_steps_per_call: tokens decoded per compiled call (amortises dispatch).
    """

    num_slots: int = 64
    max_len: int = 1024
    decode_steps_per_call: int = 8

    def __post_init__(self) -> None:
        if self.num_slots < 1 or self.max_len < 2 or self.decode_steps_per_call < 1:
            raise ValueError("need num_slots >= 1, max_len >= 2 and decode_steps_per_call >= 1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AsyncConfig:
    """Overlap of rollout and training (YAML key ``async``).

    Attributes:
        mode: ``sync`` alternates rollout and update; ``async`` samples the next rounds while
            the learner trains on the current one.
        max_staleness: largest allowed gap, in policy versions, between the params that
            sampled a token and the params being updated (``async`` only).
        staleness_policy: what happens to a round past ``max_staleness``: ``drop`` discards
            it, ``pause`` stops sampling until the learner catches up.
        queue_size: rollout rounds buffered between sampler and learner.
    """

    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = 1
    staleness_policy: Literal["drop", "pause"] = "pause"
    queue_size: int = 2

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, ("sync", "async"))
        _check_choice("staleness_policy", self.staleness_policy, ("drop", "pause"))
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Held-out evaluation.

    Attributes:
        every: RL steps between evaluations; 0 evaluates only before and after training.
        split: split evaluated; None uses ``env.eval_split``.
        max_tasks: evaluate the first this many tasks of the split; None: all.
        samples_per_task: episodes per task (``n`` of pass@k).
        temperature: sampling temperature of evaluation episodes (0: greedy).
        pass_k: the ``k`` values of the reported pass@k (each ``<= samples_per_task``).
        hack_window: evaluations over which "train reward rises, eval reward does not"
            raises a reward-hacking warning.
    """

    every: int = 0
    split: str | None = "test"
    max_tasks: int | None = None
    samples_per_task: int = 1
    temperature: float = 0.0
    pass_k: tuple[int, ...] = (1,)
    hack_window: int = 3

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"every must be >= 0, got {self.every}")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError(f"max_tasks must be >= 1 or null, got {self.max_tasks}")
        if self.samples_per_task < 1:
            raise ValueError(f"samples_per_task must be >= 1, got {self.samples_per_task}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not self.pass_k or min(self.pass_k) < 1 or len(set(self.pass_k)) != len(self.pass_k):
            raise ValueError(f"pass_k must be distinct values >= 1, got {self.pass_k}")
        if max(self.pass_k) > self.samples_per_task:
            raise ValueError(
                f"pass_k values must be <= samples_per_task ({self.samples_per_task}), "
                f"got {self.pass_k}"
            )
        if self.hack_window < 2:  # a trend needs two evaluations
            raise ValueError(f"hack_window must be >= 2, got {self.hack_window}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Orbax checkpoints.

    Attributes:
        every: RL steps between checkpoints; 0 saves only at the end.
        keep: most recent checkpoints kept.
        dir: checkpoint folder; None: ``<run dir>/checkpoints``.
    """

    every: int = 0
    keep: int = 3
    dir: str | None = None

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"every must be >= 0, got {self.every}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """MLflow tracking.

    Attributes:
        enabled: log to MLflow at all.
        tracking_uri: MLflow tracking URI; None: a file store under the run dir.
        experiment: MLflow experiment name.
        run_name: MLflow run name; None: the config's ``name``.
        log_episodes: episode traces logged per step.
        log_trajectories: also log the step's trajectory records as an artifact.
    """

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "mtrl"
    run_name: str | None = None
    log_episodes: int = 4
    log_trajectories: bool = True

    def __post_init__(self) -> None:
        if not self.experiment:
            raise ValueError("experiment must be a non-empty name")
        if self.log_episodes < 0:
            raise ValueError(f"log_episodes must be >= 0, got {self.log_episodes}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """Supervised warm start on demonstrations before RL.

    Attributes:
        steps: SFT updates; 0 skips the warm start.
        batch_size: demonstrations per update.
        learning_rate: SFT learning rate.
        demo_tasks: the first this many train tasks give demonstrations; None: all.
        demo_source: ``oracle`` plays the environments' oracle; ``trajectories`` reads
            recorded episodes from ``trajectories``.
        trajectories: JSONL file of trajectory records (required with ``trajectories``,
            not allowed otherwise).
        seq_len: row length of the SFT batches (None: ``packing.seq_len``). Demonstrations
            have similar lengths; a row just longer than one of them wastes no slots.
    """

    steps: int = 0
    batch_size: int = 16
    learning_rate: float = 3e-3
    demo_tasks: int | None = None
    demo_source: Literal["oracle", "trajectories"] = "oracle"
    trajectories: str | None = None
    seq_len: int | None = None

    def __post_init__(self) -> None:
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 or null, got {self.seq_len}")
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError("need steps >= 0 and batch_size >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.demo_tasks is not None and self.demo_tasks < 1:
            raise ValueError(f"demo_tasks must be >= 1 or null, got {self.demo_tasks}")
        _check_choice("demo_source", self.demo_source, ("oracle", "trajectories"))
        if self.demo_source == "trajectories" and not self.trajectories:
            raise ValueError("demo_source 'trajectories' needs trajectories: <path to JSONL>")
        if self.demo_source == "oracle" and self.trajectories is not None:
            raise ValueError("trajectories is only read with demo_source: trajectories")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One training run. Every section has defaults; YAML files state what differs.

    Attributes:
        name: run name; the run's files go to ``run_dir = out_dir / name``.
        seed: base seed of the run (sampling keys, task order).
        out_dir: folder holding runs.
        steps: RL updates (0: SFT and evaluation only).
        model: the policy model.
        env: the environment.
        sampler: the sampling distribution and prefill buckets.
        engine: the sampling engine's shape.
        rollout: group size, turn limits and the advantage estimator.
        train: loss, optimizer and micro-batching.
        packing: how trajectories become ``[B, T]`` rows.
        async_: rollout/training overlap; YAML key ``async`` (a Python keyword).
        eval: held-out evaluation.
        checkpoint: checkpointing.
        tracking: MLflow tracking.
        sft: the supervised warm start.
    """

    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    steps: int = 10
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    packing: PackingConfig = dataclasses.field(default_factory=lambda: PackingConfig(seq_len=1024))
    async_: AsyncConfig = dataclasses.field(default_factory=AsyncConfig, metadata={"yaml": "async"})
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)

    def __post_init__(self) -> None:
        # Raised as ConfigError directly: each message already names its dotted key paths.
        def fail(message: str) -> None:
            raise ConfigError(message)

        if not self.name or self.name in (".", "..") or re.search(r"[/\\]", self.name):
            fail(f"name: must be one folder name (no '/'), got {self.name!r}")
        if not self.out_dir:
            fail("out_dir: must be a folder, got ''")
        if self.seed < 0 or self.steps < 0:
            fail(f"seed and steps must be >= 0, got seed={self.seed}, steps={self.steps}")
        if self.packing.seq_len < 2:
            fail(
                f"packing.seq_len: must be >= 2 (a sample is >= 2 tokens), "
                f"got {self.packing.seq_len}"
            )
        turn = max(self.sampler.max_new_tokens, self.rollout.max_new_tokens)
        if self.engine.max_len < turn + 1:
            fail(
                f"engine.max_len ({self.engine.max_len}) must be >= max(sampler.max_new_tokens, "
                f"rollout.max_new_tokens) + 1 = {turn + 1}: one turn plus a prompt token"
            )
        if self.packing.rows_multiple % self.train.num_micro_batches:
            fail(
                f"packing.rows_multiple ({self.packing.rows_multiple}) must be a multiple of "
                f"train.num_micro_batches ({self.train.num_micro_batches})"
            )
        advantage = self.rollout.advantage
        if advantage.estimator == "pass_at_k" and advantage.k > self.rollout.group_size:
            fail(
                f"rollout.advantage.k ({advantage.k}) must be <= rollout.group_size "
                f"({self.rollout.group_size})"
            )

    @property
    def run_dir(self) -> Path:
        """``out_dir / name``: where the run writes checkpoints, records and the MLflow store."""
        return Path(self.out_dir) / self.name
