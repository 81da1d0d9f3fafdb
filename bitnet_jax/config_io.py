"""Reading frozen config dataclasses from YAML and mappings, with errors naming the file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from bitnet_jax.errors import ConfigError

T = TypeVar("T")


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file (an empty file is ``{}``); errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what} ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    return {} if data is None else data


def dataclass_from_mapping(cls: type[T], data: Any, source: str) -> T:
    """``cls(**data)`` after rejecting non-mappings and unknown keys; errors are prefixed by ``source``."""
    name = cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of {name} fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown {name} field(s) {unknown}; known fields: {sorted(known)}")
    try:
        return cls(**data)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
