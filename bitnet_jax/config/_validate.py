"""The one config validator: frozen dataclasses built from mappings, with errors naming the key.

Every config class (:class:`~bitnet_jax.config.ModelConfig`, :class:`~bitnet_jax.config.MeshConfig`, the
run config sections, :class:`~bitnet_jax.parallel.distributed.DistributedConfig`) derives from
:class:`Validated`: construction checks each field against its type hint (:func:`check_types`) and then
its range (``validate``), raising :meth:`ConfigError.field` errors. :func:`build` makes one from a
mapping: unknown keys, wrong types and bad values come back as ``SOURCE: PREFIX.KEY: reason``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from bitnet_jax.errors import ConfigError

T = TypeVar("T")


_YAML12_RESOLVERS: list[tuple[str, str, str]] = [  # (tag, regexp, first characters): YAML 1.2's core schema
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     "-+.0123456789"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
]
_AMBIGUOUS = "tag:bitnet-jax:yaml11-bool"
_AMBIGUOUS_RE = r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$"


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 scalars: ``1e-3`` is a number, ``0o17`` octal, ``010`` ten, no
    timestamps; ``yes``/``no``/``on``/``off``/``y``/``n`` (booleans in YAML 1.1, strings in 1.2) are refused
    as mapping values, naming the key, since either reading could be meant."""

    def construct_mapping(self, node, deep=False):  # noqa: D102  (PyYAML's hook)
        for key_node, value_node in node.value:
            if value_node.tag == _AMBIGUOUS:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                raise ConfigError(
                    f"{key}: {value_node.value!r} is ambiguous in YAML (a boolean in YAML 1.1, a string in 1.2); "
                    f"write true or false, or quote it for a string (line {value_node.start_mark.line + 1})",
                    key=str(key), reason="ambiguous boolean")
        return super().construct_mapping(node, deep=deep)


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag in ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _rx, _first in [*_YAML12_RESOLVERS, (_AMBIGUOUS, _AMBIGUOUS_RE, "yYnNoO")]:
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(_rx), list(_first))
_Yaml12Loader.add_constructor(_AMBIGUOUS, lambda loader, node: loader.construct_scalar(node))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text)  # 010 is ten in YAML 1.2


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text with YAML 1.2 scalars (:class:`_Yaml12Loader`); errors name ``source``."""
    try:
        root = yaml.compose(text, Loader=_Yaml12Loader)
        if isinstance(root, yaml.ScalarNode) and root.tag == _AMBIGUOUS:
            raise ConfigError(f"{root.value!r} is ambiguous in YAML (a boolean in YAML 1.1, a string in 1.2); "
                              "write true or false, or quote it for a string", reason="ambiguous boolean")
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506  (a SafeLoader subclass)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}", key=e.key, reason=e.reason) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML ({' '.join(str(e).split())})") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file with YAML 1.2 scalars (an empty file is ``{}``); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read {what} ({e})") from None
    data = load_yaml_text(text, str(path))
    return {} if data is None else data


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the (simple) type ``hint`` of a config field (bools are not numbers)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is Any:
        return True
    return isinstance(value, hint)


def _hints(cls: type) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in fields}


def check_types(obj: Any) -> None:
    """Raise a field :class:`ConfigError` for the first field of ``obj`` whose value misses its type hint."""
    owner = type(obj).__name__
    for name, hint in _hints(type(obj)).items():
        value = getattr(obj, name)
        if not type_ok(value, hint):
            raise ConfigError.field(owner, name, f"expected {_type_name(hint)}, got {value!r:.80} ({type(value).__name__})")


def coerce(value: Any, hint: Any) -> Any:
    """Lists to tuples for tuple fields, ints to floats for float fields; anything else unchanged."""
    if isinstance(value, list) and any(typing.get_origin(h) is tuple for h in (hint, *typing.get_args(hint))):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class Validated:
    """Mixin of frozen config dataclasses: types then ranges are checked when an instance is made."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for name, hint in hints.items():
            object.__setattr__(self, name, coerce(getattr(self, name), hint))
        check_types(self)
        self.validate()

    def validate(self) -> None:
        """Range and consistency checks (raise :meth:`ConfigError.field`); none by default."""

    def fail(self, key: str, reason: str) -> ConfigError:
        """The error for field ``key`` of this config."""
        return ConfigError.field(type(self).__name__, key, reason)

    def need(self, ok: bool, key: str, reason: str) -> None:
        """Raise the error for ``key`` (``reason, got VALUE``) unless ``ok``."""
        if not ok:
            raise self.fail(key, f"{reason}, got {getattr(self, key)!r:.80}")

    def positive_int(self, *keys: str) -> None:
        """Each field must be an integer > 0."""
        for key in keys:
            self.need(getattr(self, key) > 0, key, "must be a positive integer")

    def finite_positive(self, *keys: str) -> None:
        """Each field must be a finite number > 0."""
        for key in keys:
            value = getattr(self, key)
            self.need(math.isfinite(value) and value > 0, key, "must be a finite number > 0")

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON/YAML friendly: tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def build(cls: type[T], data: Any, prefix: str, source: str | None = None) -> T:
    """``cls(**data)`` with errors naming ``SOURCE: PREFIX.KEY``: not a mapping, unknown key, type or range."""
    where = f"{source}: " if source else ""

    def name(key: Any) -> str:
        return f"{prefix}.{key}" if prefix else str(key)

    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}{prefix or cls.__name__}: expected a mapping of {cls.__name__} fields, "
                          f"got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}{name(key)}: unknown key; known keys: {sorted(known)}", key=str(key))
    try:
        return cls(**data)
    except ConfigError as e:
        if e.key is None:
            raise ConfigError(f"{where}{prefix + ': ' if prefix else ''}{e}") from None
        raise ConfigError(f"{where}{name(e.key)}: {e.reason}", key=e.key, reason=e.reason) from None
