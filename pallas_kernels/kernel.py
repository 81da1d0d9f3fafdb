"""The one kernel object a model multiplies its packed ternary weights with, chosen once per model.

A :class:`Kernel` bundles everything that depends on the backend: its name, the packed layout its
weights must be in, ``pack`` / ``unpack``, the exact int8 x ternary ``matmul`` (which reads one layer of
a stacked weight in place where the backend can), and the output-head projections (float and int8).
:func:`select_kernel` picks it once -- from the argument, else ``$BITNET_JAX_KERNEL``, else the
platform -- and the model's packed linear layers receive it. Shape-dependent choices (decode vs prefill
tiles) are made inside each backend's ``matmul`` from ``M``.

The mesh-aware version (column split + ``psum``, packed FSDP gathers) wraps a kernel in
:mod:`bitnet_jax.parallel`; the model code never sees the difference.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from bitnet_jax.errors import KernelError
from pallas_kernels import layouts
from pallas_kernels.layouts import Layout, PackedWeight

ENV_VAR = "BITNET_JAX_KERNEL"
BACKENDS: tuple[str, ...] = ("xla", "tpu", "mosaic_gpu", "triton", "cpu")
HOPPER = (9, 10)  # wgmma exists on compute capability 9.x only

MatmulFn = Callable[[jax.Array, jax.Array], jax.Array]


def xla_head_float(x: jax.Array, table: jax.Array) -> jax.Array:
    """Float32 logits ``x @ table.T`` as an XLA dot (float32 accumulate)."""
    return jnp.dot(x, table.astype(x.dtype).T, preferred_element_type=jnp.float32)


def xla_head_int8(xq: jax.Array, table: jax.Array) -> jax.Array:
    """Exact int32 ``xq @ table.T`` of int8 operands as an XLA dot."""
    return jnp.dot(xq, table.T, preferred_element_type=jnp.int32)


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A ternary-matmul backend: layout, pack/unpack, exact matmul, and its head projections."""

    name: str
    layout: Layout
    matmul_fn: MatmulFn  # (int8 x [M, K], codes) -> int32 [M, N]
    stacked_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None  # reads layer in place
    head_float_fn: Callable[[jax.Array, jax.Array], jax.Array] = xla_head_float
    head_int8_fn: Callable[[jax.Array, jax.Array], jax.Array] = xla_head_int8
    interpret: bool = False  # Pallas kernels run interpreted on CPU
    transparent: bool = False  # plain XLA ops: XLA's partitioner can split it without shard_map

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}, layout={self.layout.name!r}{', interpret=True' if self.interpret else ''})"

    def pack(self, w: Any) -> PackedWeight:
        """Pack ternary int8 ``[N, K]`` weights (NumPy or JAX) in this kernel's layout."""
        return layouts.pack(w, self.layout)

    def unpack(self, w: PackedWeight) -> Any:
        """The ternary int8 ``[N, K]`` matrix of a weight packed for this kernel."""
        self.check_weight(w)
        return layouts.unpack(w)

    def check_weight(self, w: Any) -> None:
        """Raise :class:`KernelError` unless ``w`` is a :class:`PackedWeight` in this kernel's layout."""
        if not isinstance(w, PackedWeight):
            raise KernelError(f"kernel {self.name!r} multiplies PackedWeight values, got {type(w).__name__}")
        if w.layout != self.layout.name:
            raise KernelError(
                f"a weight packed in layout {w.layout!r} cannot be multiplied by kernel {self.name!r} "
                f"(layout {self.layout.name!r}); repack it (pallas_kernels.repack) or load the model for this kernel"
            )

    def matmul(self, x: jax.Array, w: PackedWeight) -> jax.Array:
        """Exact int32 ``[M, N]`` product of int8 ``x [M, K]`` and the packed ternary ``w [N, K]``."""
        self.check_weight(w)
        if x.dtype != jnp.int8 or x.ndim != 2:
            raise KernelError(f"kernel {self.name!r} expects int8 activations [M, K], got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] != w.shape[1]:
            raise KernelError(f"activations have K={x.shape[1]} but the weight is [{w.shape[0]}, {w.shape[1]}]")
        if w.layer is None:
            return self.matmul_fn(x, w.codes)
        if self.stacked_fn is not None:
            return self.stacked_fn(x, w.codes, w.layer)
        return self.matmul_fn(x, jax.lax.dynamic_index_in_dim(w.codes, w.layer, keepdims=False))

    def head_float(self, x: jax.Array, table: jax.Array) -> jax.Array:
        """Float32 logits ``x @ table.T`` for float ``x [M, D]`` and a float ``table [V, D]``."""
        return self.head_float_fn(x, table)

    def head_int8(self, xq: jax.Array, table: jax.Array) -> jax.Array:
        """Exact int32 ``xq @ table.T`` for int8 ``xq [M, D]`` and an int8 ``table [V, D]``."""
        return self.head_int8_fn(xq, table)


def _cuda_capability() -> tuple[int, int] | None:
    try:
        text = str(getattr(jax.devices()[0], "compute_capability", ""))
        major, _, minor = text.partition(".")
        return int(major), int(minor or 0)
    except (RuntimeError, ValueError):
        return None


def default_backend(platform: str | None = None) -> str:
    """The backend a platform gets by default: ``tpu``; ``mosaic_gpu`` on Hopper (9.x), ``triton`` on other
    CUDA GPUs; ``cpu`` (the C++ kernel) on CPUs when its extension is built; ``xla`` elsewhere."""
    from pallas_kernels import cpu

    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "tpu"
    if platform in ("gpu", "cuda"):
        cap = _cuda_capability()
        return "mosaic_gpu" if cap is not None and HOPPER[0] <= cap[0] < HOPPER[1] else "triton"
    if platform == "cpu" and cpu.AVAILABLE:
        return "cpu"
    return "xla"


def get_kernel(name: str, *, interpret: bool | None = None) -> Kernel:
    """The kernel called ``name`` (one of :data:`BACKENDS`); Pallas kernels run interpreted on a CPU host."""
    if name not in BACKENDS:
        raise KernelError(f"unknown ternary-matmul kernel {name!r}; known: {', '.join(BACKENDS)}")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    return _make_kernel(name, bool(interpret))


@functools.lru_cache(maxsize=None)
def _make_kernel(name: str, interpret: bool) -> Kernel:
    """One Kernel object per (name, interpret), so equal choices hit the same compiled programs."""
    if name == "xla":
        from pallas_kernels import xla

        return Kernel("xla", layouts.ROWS4, xla.ternary_matmul, transparent=True)
    if name == "cpu":
        from pallas_kernels import cpu

        cpu.require()
        return Kernel("cpu", layouts.TILE16, cpu.ternary_matmul, cpu.ternary_matmul_stacked, cpu.head_float, cpu.head_int8)
    if name == "tpu":
        from pallas_kernels import tpu as module
    elif name == "mosaic_gpu":
        from pallas_kernels.gpu import mosaic as module
    else:
        from pallas_kernels.gpu import triton as module
    return Kernel(name, layouts.ROWS4, functools.partial(module.ternary_matmul, interpret=interpret), interpret=interpret)


def select_kernel(name: str | None = None, *, platform: str | None = None) -> Kernel:
    """The kernel for a model: ``name``, else ``$BITNET_JAX_KERNEL``, else the platform's default."""
    chosen = name or os.environ.get(ENV_VAR) or None
    if chosen is not None and chosen not in BACKENDS:
        source = "the kernel argument" if name else f"${ENV_VAR}"
        raise KernelError(f"unknown ternary-matmul kernel {chosen!r} (from {source}); known: {', '.join(BACKENDS)}")
    return get_kernel(chosen or default_backend(platform))
