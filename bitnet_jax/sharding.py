"""The one sharding vocabulary of bitnet-jax: a device mesh with axes ``data``, ``fsdp``, ``tensor``,
and the table that maps every parameter (by its path) to those axes.

Axes:

* ``data``   -- batch split (replicated parameters);
* ``fsdp``   -- parameter storage split (gathered at use; packed codes are gathered as uint8 by
  :func:`ternary_matmul`, the mesh-aware kernel call, inside a ``jax.set_mesh`` context);
* ``tensor`` -- tensor parallelism: each device holds a slice of every ternary weight, the embedding and
  head, and of the KV cache.

Why ternary linears split by *input columns* (axis 1 of ``weight_packed uint8 [N/4, K]``) and not by
output rows: the packed ``rows4`` layout stores output rows ``r, R+r, 2R+r, 3R+r`` (``R = N/4``) in
byte row ``r``. Splitting axis 0 over ``T`` devices gives device ``d`` four disjoint quarter-chunks of
output rows, which no tiled sharding of the unpacked ``[N, K]`` matrix can describe; XLA then reshards
the *unpacked int32 codes* with all-to-alls on every step (16x the packed bytes; measured, see
``docs/scaling.md``). Splitting axis 1 keeps every weight byte where it lives: each device multiplies
its slice of the int8 activations with its slice of the codes, and the exact integer partial sums are
all-reduced (activations only). Attention then runs per KV-head group and the KV cache is split by KV
heads (XLA's propagation picks that from the o_proj split; tests check it). Embedding and head are split
by vocabulary; norms and scalar scales are replicated.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bitnet_jax.config_io import dataclass_from_mapping, read_yaml
from bitnet_jax.errors import ConfigError

AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")  # both split the batch; fsdp also splits parameter storage

# Parameter role -> PartitionSpec entries, first matching pattern wins. Paths are "/"-joined Flax names,
# e.g. "layers_0/self_attn/q_proj/weight_packed". An entry is a mesh axis name or None per array axis.
Rules = tuple[tuple[str, tuple[str | None, ...]], ...]

PARAM_RULES: Rules = (
    # packed ternary codes uint8 [N/4, K]: input columns across `tensor` (see the module docstring);
    # rows across `fsdp` for storage only -- gathered (as uint8) before use by `ternary_matmul`
    (r"_proj/weight_packed$", ("fsdp", "tensor")),
    # per-tensor dequantization scales (scalars)
    (r"_proj/weight_scale$", ()),
    # latent float weights [out, in] (training form): same column split, rows across `fsdp`
    (r"_proj/weight$", ("fsdp", "tensor")),
    # embedding / untied head [vocab, hidden]: vocabulary across `tensor`
    (r"^(embed_tokens|lm_head)$", ("tensor", "fsdp")),
    # RMSNorm weights: replicated
    (r"norm/weight$", (None,)),
)

# The KV cache [batch, slots, kv_heads, head_dim]: batch across `data`, KV heads across `tensor`.
KV_CACHE_SPEC = PartitionSpec("data", None, "tensor", None)
# Token batches [batch, time].
TOKENS_SPEC = PartitionSpec("data", None)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; one axis may be ``-1`` ("all remaining devices")."""

    data: int = 1
    fsdp: int = 1
    tensor: int = -1

    def __post_init__(self) -> None:
        for name in AXES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
                raise ConfigError(f"MeshConfig.{name} must be a positive integer or -1, got {value!r}")
        if sum(getattr(self, n) == -1 for n in AXES) > 1:
            raise ConfigError(f"MeshConfig: at most one axis may be -1, got {self.to_dict()}")

    def to_dict(self) -> dict[str, int]:
        """Plain-dict form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "mesh config") -> "MeshConfig":
        """Build from a mapping (optionally nested under ``mesh:``); unknown keys are named in the error."""
        if isinstance(data, Mapping) and set(data) == {"mesh"}:
            data = data["mesh"]
        return dataclass_from_mapping(cls, data, source)

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


def make_mesh(config: MeshConfig | Mapping[str, Any] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A :class:`jax.sharding.Mesh` with axes ``(data, fsdp, tensor)`` over ``devices`` (default: all)."""
    if config is None:
        config = MeshConfig()
    elif not isinstance(config, MeshConfig):
        config = MeshConfig.from_dict(config)
    devices = list(jax.devices() if devices is None else devices)
    shape = config.shape(len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)


def path_name(path: Sequence[Any]) -> str:
    """The "/"-joined parameter name of a pytree key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def spec_for(name: str, shape: Sequence[int], mesh: Mesh, rules: Rules = PARAM_RULES) -> PartitionSpec:
    """The PartitionSpec of one parameter, from the first rule whose pattern matches ``name``."""
    for pattern, axes in rules:
        if re.search(pattern, name):
            break
    else:
        raise ConfigError(f"no sharding rule matches parameter {name!r} (shape {tuple(shape)})")
    if len(axes) != len(shape):
        raise ConfigError(f"sharding rule {pattern!r} gives {len(axes)} axes for parameter {name!r} of shape {tuple(shape)}")
    for dim, axis in zip(shape, axes):
        if axis is not None and dim % mesh.shape[axis]:
            raise ConfigError(
                f"parameter {name!r} dimension {dim} (shape {tuple(shape)}) is not divisible by mesh axis "
                f"{axis!r} of size {mesh.shape[axis]}"
            )
    return PartitionSpec(*axes)


def param_specs(params: Any, mesh: Mesh, rules: Rules = PARAM_RULES) -> Any:
    """A pytree of PartitionSpecs mirroring ``params`` (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: spec_for(path_name(p), np.shape(x), mesh, rules), params)


def param_shardings(params: Any, mesh: Mesh, rules: Rules = PARAM_RULES) -> Any:
    """A pytree of NamedShardings mirroring ``params``."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), param_specs(params, mesh, rules))


def place(tree: Any, shardings: Any) -> Any:
    """Put host-identical arrays onto (possibly multi-process) shardings; each process supplies its shards."""

    def one(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(one, tree, shardings)


def shard(model: Any, mesh: Mesh, rules: Rules = PARAM_RULES) -> Any:
    """``model`` (a :class:`~bitnet_jax.BitNetModel`) with its parameters placed on ``mesh`` by the rules.

    ``forward`` and ``generate`` then run unchanged: ``jit`` propagates the parameter shardings.
    Every process of a multi-process run calls it with the same model and the same (global) mesh.
    """
    params = place(model.params, param_shardings(model.params, mesh, rules))
    return dataclasses.replace(model, params=params)


def active_mesh() -> Any:
    """The mesh of the enclosing ``jax.set_mesh`` context, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not set(AXES) <= set(mesh.axis_names):
        return None
    return mesh


def batch_axes(mesh: Any, rows: int) -> tuple[str, ...] | None:
    """The mesh axes (``data``, ``fsdp``; those of size > 1) that split ``rows`` batch rows, or None
    when there are none or they do not divide ``rows``."""
    axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
    return axes if axes and rows % math.prod(mesh.shape[a] for a in axes) == 0 else None


def constrain_batch(x: jax.Array) -> jax.Array:
    """Inside a ``jax.set_mesh`` context: ``x [batch, ...]`` split by rows over :func:`batch_axes`, the
    other axes whole (so activations stay split by batch, not by the hidden axis an FSDP-stored
    embedding would hand them); outside one, ``x`` unchanged."""
    mesh = active_mesh()
    if mesh is None:
        return x
    spec = PartitionSpec(batch_axes(mesh, x.shape[0]), *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)


def ternary_matmul(
    x: jax.Array, packed: jax.Array, *, backend: str | None = None, kernel: Callable[..., jax.Array] | None = None
) -> jax.Array:
    """The ternary linear's kernel call, made mesh-aware; a plain call outside a ``jax.set_mesh`` context.

    Inside a mesh context it runs ``kernel`` (default :func:`pallas_kernels.ternary_matmul`) per device
    with ``jax.shard_map``: int8 ``x [M, K]`` and the codes ``[N/4, K]`` split by input columns over
    ``tensor`` (rows of ``x`` over the batch axes), and the exact int32 partial products summed with
    ``psum``. Codes stored split over ``fsdp`` are all-gathered at the boundary *as uint8*. Works for
    every backend, including Pallas kernels, which XLA's partitioner cannot split by itself.
    """
    if kernel is None:
        import pallas_kernels

        kernel = pallas_kernels.ternary_matmul
    mesh = active_mesh()
    if mesh is None or math.prod(mesh.shape[a] for a in AXES) == 1:
        return kernel(x, packed, backend=backend)
    rows = batch_axes(mesh, x.shape[0])

    def local(x_shard, packed_shard):
        return jax.lax.psum(kernel(x_shard, packed_shard, backend=backend), "tensor")

    specs = (PartitionSpec(rows, "tensor"), PartitionSpec(None, "tensor"))
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(rows, None))(x, packed)


def place_batch(array: Any, params: Any) -> jax.Array:
    """An input batch ``[B, ...]`` placed next to ``params``: rows split over ``data`` when the params live
    on a mesh whose ``data`` axis divides ``B`` (each replica then works on its own rows), else as is."""
    leaves = jax.tree_util.tree_leaves(params)
    where = getattr(leaves[0], "sharding", None) if leaves else None
    if not isinstance(where, NamedSharding) or "data" not in where.mesh.axis_names:
        return jax.numpy.asarray(array)
    replicas = where.mesh.shape["data"]
    if replicas == 1 or np.shape(array)[0] % replicas:
        return jax.numpy.asarray(array)
    spec = PartitionSpec("data", *([None] * (np.ndim(array) - 1)))
    return place(np.asarray(array), NamedSharding(where.mesh, spec))


def device_bytes(tree: Any) -> dict[Any, int]:
    """Bytes of ``tree``'s arrays resident on each addressable device."""
    out: dict[Any, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for s in leaf.addressable_shards:
            out[s.device] = out.get(s.device, 0) + s.data.nbytes
    return out
