"""Typed configuration machinery: frozen dataclasses from plain data, YAML, ``key=value`` overrides.

:func:`from_dict` builds a tree of frozen ``kw_only`` dataclasses from plain data, strictly: an
unknown key names its dotted path and the closest valid key, a value of the wrong type names the
path, the expected type and what it got, and each dataclass's ``__post_init__`` check is reported
with its section's path. :func:`to_dict` and :func:`flatten` go back (``flatten`` gives dotted
string params, e.g. for MLflow); :func:`apply_overrides` applies ``a.b.c=value`` strings.

YAML is read with PyYAML's safe loader, adjusted towards YAML 1.2 where 1.1 surprises: ``1e-4``
is a float (1.1 reads it as a string) and only ``true``/``false`` are booleans (1.1 also turns
``yes``/``no``/``on``/``off`` into booleans). Float fields also accept a string spelling a
decimal number, for data loaded elsewhere with plain ``yaml.safe_load``.

The run's schema, its shipped files and ``load_config`` are in :mod:`mtrl_jax.config`.

Non-goals: a general schema library (only the field types the configs use are supported),
environment-variable interpolation, writing configs back with their comments.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import yaml

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


def describe_value(value: Any) -> str:
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
                raise ConfigError(f"{path}: keys must be strings, got {describe_value(k)}")
            out[k] = _plain(v, _join(path, k))
        return out
    raise ConfigError(f"{path}: expected plain YAML data, got {describe_value(value)}")


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
        message = f"{path}: expected {_type_name(tp)}, got {describe_value(value)}{hint}"
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

    >>> from mtrl_jax.sampler.config import SamplerConfig
    >>> from_dict(SamplerConfig, {"temperature": 0, "prefill_buckets": [8, 32]}).prefill_buckets
    (8, 32)
    """
    where = path or cls.__name__
    if not isinstance(data, Mapping):
        got = describe_value(data)
        raise ConfigError(f"{where}: expected a mapping ({cls.__name__}), got {got}")
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

    >>> from mtrl_jax.sampler.config import SamplerConfig
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

    >>> @dataclasses.dataclass(frozen=True)
    ... class Example:
    ...     buckets: tuple[int, ...] = (16, 64)
    ...     name: str = "a"
    >>> flatten(Example())
    {'buckets': '[16, 64]', 'name': 'a'}
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
                    f"bad override {override!r}: {parent} is {describe_value(child)}, not a section"
                )
            node = child
        node[parts[-1]] = value
    return out


def dump_yaml(cfg: Any) -> str:
    """The config as YAML that :func:`load_config` reads back to an equal config."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
