"""The mesh-aware kernel: a :class:`~pallas_kernels.Kernel` wrapped so its matmul runs split over a mesh.

:func:`on_mesh` wraps the model's kernel once (by :func:`bitnet_jax.parallel.shard`); the packed linear
layers call it exactly as they call a plain kernel. Per device (``jax.shard_map``), the int8 activations
``x [M, K]`` and the codes ``[N/4, K]`` are split by input columns over ``tensor`` (rows of ``x`` over
the batch axes), the wrapped kernel multiplies the local slices, and the exact int32 partial products
are summed with ``psum``. Codes stored split over ``fsdp`` are all-gathered at the boundary *as uint8*
(2 bits a weight). This works for every backend, including Pallas kernels, which XLA's partitioner
cannot split by itself. A kernel made of plain XLA ops (``xla``) on a mesh without an ``fsdp`` split is
left to XLA's partitioner instead, which keeps the attention split by heads (see docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bitnet_jax.config import AXES, BATCH_AXES
from bitnet_jax.errors import KernelError
from pallas_kernels import Kernel, PackedWeight
from pallas_kernels.kernel import xla_head_float, xla_head_int8


def batch_axes(mesh: Mesh, rows: int) -> tuple[str, ...] | None:
    """The mesh axes (``data``, ``fsdp``; those of size > 1) that split ``rows`` batch rows, or None
    when there are none or they do not divide ``rows``."""
    axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
    return axes if axes and rows % math.prod(mesh.shape[a] for a in axes) == 0 else None


@dataclasses.dataclass(frozen=True)
class MeshKernel(Kernel):
    """``inner`` run per device over ``mesh``: input columns over ``tensor``, partial sums ``psum``-ed."""

    inner: Kernel | None = None
    mesh: Mesh | None = None

    def matmul(self, x: jax.Array, w: PackedWeight) -> jax.Array:
        """Exact int32 ``x @ w.T`` with ``x`` and the codes split by input columns over ``tensor``."""
        inner, mesh = self.inner, self.mesh
        inner.check_weight(w)
        if inner.transparent and mesh.shape["fsdp"] == 1:
            return inner.matmul(x, w)  # plain XLA ops: the partitioner splits them by itself
        tensor = mesh.shape["tensor"]
        n, k = w.shape
        if k % tensor:
            raise KernelError(f"a [{n}, {k}] ternary weight cannot be split by input columns over tensor={tensor}")
        rows = batch_axes(mesh, x.shape[0])
        stacked = w.layer is not None
        codes_spec = PartitionSpec(*([None] * (1 + stacked)), "tensor")
        layer = w.layer if stacked else jax.numpy.int32(0)

        def local(x_shard, codes_shard, layer_index):
            part = PackedWeight(codes_shard, layer_index if stacked else None, w.layout, (n, k // tensor))
            return jax.lax.psum(inner.matmul(x_shard, part), "tensor")

        specs = (PartitionSpec(rows, "tensor"), codes_spec, PartitionSpec())
        # check_vma=False: a pallas_call's out_shape carries no varying-manual-axes type, which the
        # check would demand; the psum makes the result replicated over `tensor` either way
        return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(rows, None), check_vma=False)(
            x, w.codes, layer
        )


def on_mesh(kernel: Kernel, mesh: Mesh) -> Kernel:
    """``kernel`` made mesh-aware for ``mesh`` (a one-device mesh gets the kernel itself)."""
    kernel = getattr(kernel, "inner", None) or kernel
    if math.prod(mesh.shape[a] for a in AXES) == 1:
        return kernel
    if not kernel.layout.splits_input_columns:
        raise KernelError(
            f"kernel {kernel.name!r} stores weights in layout {kernel.layout.name!r}, which a mesh cannot split "
            "by input columns; use a kernel with layout 'rows4' (e.g. 'xla')"
        )
    fields = {f.name: getattr(kernel, f.name) for f in dataclasses.fields(Kernel)}
    # the model's (einsum) attention, which XLA's partitioner splits by heads; a fused Pallas attention
    # would be an opaque custom call that the partitioner replicates
    fields.update(name=f"{kernel.name}@mesh", head_float_fn=xla_head_float, head_int8_fn=xla_head_int8,
                  attention_fn=None)
    return MeshKernel(**fields, inner=kernel, mesh=mesh)


def batch_constraint(mesh: Mesh) -> Callable[[jax.Array], jax.Array]:
    """A function keeping ``x [batch, ...]`` split by rows over the batch axes of ``mesh``, the other axes
    whole (so activations stay split by batch, not by the hidden axis an FSDP-stored embedding hands them)."""

    def constrain(x: jax.Array) -> jax.Array:
        spec = PartitionSpec(batch_axes(mesh, x.shape[0]), *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return constrain


def is_mesh_kernel(kernel: Any) -> bool:
    """Whether ``kernel`` was made mesh-aware by :func:`on_mesh`."""
    return isinstance(kernel, MeshKernel)
