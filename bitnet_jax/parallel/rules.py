"""The one sharding vocabulary of bitnet-jax: the table that maps every parameter (by its path) to the
mesh axes ``data``, ``fsdp`` and ``tensor`` (:class:`bitnet_jax.config.MeshConfig`), and the functions
that place parameters and batches on a mesh.

Why ternary linears split by *input columns* (axis 1 of the ``rows4`` codes ``uint8 [N/4, K]``) and not
by output rows: byte row ``r`` stores output rows ``r, R+r, 2R+r, 3R+r`` (``R = N/4``). Splitting axis 0
over ``T`` devices gives device ``d`` four disjoint quarter-chunks of output rows, which no tiled
sharding of the unpacked ``[N, K]`` matrix can describe; XLA then reshards the *unpacked int32 codes*
with all-to-alls on every step (16x the packed bytes; measured, see ``docs/scaling.md``). Splitting axis
1 keeps every weight byte where it lives: each device multiplies its slice of the int8 activations with
its slice of the codes, and the exact integer partial sums are all-reduced (activations only; the
mesh-aware kernel of :mod:`bitnet_jax.parallel.kernel`). Attention then runs per KV-head group and the
KV cache is split by KV heads (XLA's propagation picks that from the o_proj split; tests check it).
Embedding and head are split by vocabulary; norms and scalar scales are replicated. A scanned model's
stacked parameters (under ``layers/``) get the same spec behind an unsplit layer axis.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bitnet_jax.config import AXES, BATCH_AXES, MeshConfig
from bitnet_jax.errors import ConfigError
from bitnet_jax.model.scan import LAYERS

# Parameter role -> PartitionSpec entries, first matching pattern wins. Paths are "/"-joined Flax names,
# e.g. "layers_0/self_attn/q_proj/weight_packed/codes". An entry is a mesh axis name or None per array axis.
Rules = tuple[tuple[str, tuple[str | None, ...]], ...]

PARAM_RULES: Rules = (
    # packed ternary codes uint8 [N/4, K]: input columns across `tensor` (see the module docstring);
    # rows across `fsdp` for storage only -- gathered (as uint8) before use by the mesh-aware kernel
    (r"_proj/weight_packed/codes$", ("fsdp", "tensor")),
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
    if name.startswith(LAYERS + "/"):  # a scanned model's stack: the rule's spec behind the layer axis
        return PartitionSpec(None, *spec_for(name[len(LAYERS) + 1 :], shape[1:], mesh, rules))
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


def shard(model: Any, mesh: Mesh, rules: Rules = PARAM_RULES) -> Any:
    """``model`` (a :class:`~bitnet_jax.BitNetModel`) placed on ``mesh``: parameters by the rules, and its
    kernel made mesh-aware (:func:`bitnet_jax.parallel.kernel.on_mesh`) so ``forward`` and ``generate``
    run split over the mesh unchanged. A model whose kernel's layout a mesh cannot split (``tile16``) is
    repacked for the ``xla`` kernel first. Every process of a multi-process run calls it with the same
    model and the same (global) mesh.
    """
    from bitnet_jax.parallel.kernel import on_mesh
    from pallas_kernels import get_kernel, repack_tree

    params, form = model.params, model.form
    if form.kernel is not None:
        kernel = getattr(form.kernel, "inner", None) or form.kernel
        if mesh.size > 1 and not kernel.layout.splits_input_columns:
            kernel = get_kernel("xla")
            params = repack_tree(jax.device_get(params), kernel.layout)
        form = dataclasses.replace(form, kernel=on_mesh(kernel, mesh))
    params = place(params, param_shardings(params, mesh, rules))
    return dataclasses.replace(model, params=params, form=form)
