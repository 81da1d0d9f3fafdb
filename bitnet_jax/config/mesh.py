"""The device-mesh configuration: sizes of the three axes ``data``, ``fsdp`` and ``tensor``.

* ``data``   -- batch split (replicated parameters);
* ``fsdp``   -- parameter storage split (gathered at use; packed codes travel as uint8);
* ``tensor`` -- tensor parallelism: each device holds a slice of every ternary weight, the embedding
  and head, and of the KV cache.

The same :class:`MeshConfig` describes inference meshes (:func:`bitnet_jax.make_mesh`) and the
``mesh:`` section of a training run. How parameters map onto the axes is :mod:`bitnet_jax.parallel.rules`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

from bitnet_jax.config._validate import Validated, build, read_yaml
from bitnet_jax.errors import ConfigError

AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")  # both split the batch; fsdp also splits parameter storage


@dataclasses.dataclass(frozen=True)
class MeshConfig(Validated):
    """Sizes of the mesh axes; one axis may be ``-1`` ("all remaining devices")."""

    data: int = 1
    fsdp: int = 1
    tensor: int = -1

    def validate(self) -> None:
        """Each axis is a positive size or -1; at most one is -1."""
        for name in AXES:
            self.need(getattr(self, name) >= 1 or getattr(self, name) == -1, name, "must be a positive integer or -1")
        if sum(getattr(self, n) == -1 for n in AXES) > 1:
            raise ConfigError(f"MeshConfig: at most one axis may be -1, got {self.to_dict()}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None, prefix: str = "mesh") -> "MeshConfig":
        """Build from a mapping (optionally nested under ``mesh:``); unknown keys are named in the error."""
        if isinstance(data, Mapping) and set(data) == {"mesh"}:
            data = data["mesh"]
        return build(cls, data, prefix, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MeshConfig":
        """Load a YAML file holding ``data``/``fsdp``/``tensor`` (optionally under ``mesh:``)."""
        return cls.from_dict(read_yaml(path, "mesh config"), source=str(path))

    def shape(self, num_devices: int) -> tuple[int, ...]:
        """Concrete axis sizes (in :data:`AXES` order) for ``num_devices`` devices."""
        sizes = [getattr(self, n) for n in AXES]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(
                    f"MeshConfig {self.to_dict()}: {num_devices} devices are not divisible by the fixed axes "
                    f"(product {known})"
                )
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ConfigError(
                f"MeshConfig {self.to_dict()}: axis sizes multiply to {math.prod(sizes)}, but there are "
                f"{num_devices} devices (set one axis to -1 to absorb the rest)"
            )
        return tuple(sizes)
