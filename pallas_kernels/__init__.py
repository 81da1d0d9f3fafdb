"""Packed ternary (2-bit) x int8 matrix multiplication, with one dispatcher over the backends.

Public API:

* :func:`pack` -- ternary int8 ``[N, K]`` weights to the packed layout a backend wants.
* :func:`ternary_matmul` -- int8 activations ``[M, K]`` times packed weights, exact int32 ``[M, N]``.
* :data:`BACKENDS` -- the backend names the dispatcher knows.

The backend is chosen, in order, by the ``backend=`` argument, the ``BITNET_JAX_KERNEL`` environment
variable, and otherwise automatically from the platform: ``tpu`` on TPU, ``mosaic_gpu`` on CUDA GPUs
of compute capability >= 9.0 (Hopper ``wgmma``), ``triton`` on older CUDA GPUs, ``cpu`` (the C++
kernel of :mod:`pallas_kernels.cpu`) on a single CPU device when its extension is built, ``xla``
elsewhere (including multi-device CPU meshes: ``bitnet_jax.sharding`` splits packed codes by input
columns, which the ``tile16`` layout does not allow).
Within a backend the kernel may further depend on the shape (``mosaic_gpu``: decode vs prefill tiles
by M). The GPU/TPU/XLA backends share the packed layout ``rows4``; ``cpu`` uses ``tile16``
(:mod:`pallas_kernels.layout`), so weights must be packed for the backend that multiplies them (the
same argument / environment / platform resolve the same backend at load and at call time). The
Pallas backends run on CPU only in interpret mode, which is switched on automatically there.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from pallas_kernels import cpu, gpu_mosaic, gpu_triton, tpu, xla
from pallas_kernels.layout import pack_rows4, unpack_rows4
from pallas_kernels.reference import ternary_matmul_reference

ENV_VAR = "BITNET_JAX_KERNEL"

# ``cpu`` imports even when its C++ extension is not built (it warns, and sets cpu.AVAILABLE = False).
_IMPLS = {"xla": xla, "tpu": tpu, "mosaic_gpu": gpu_mosaic, "triton": gpu_triton, "cpu": cpu}
BACKENDS: tuple[str, ...] = tuple(_IMPLS)
_PALLAS = frozenset({"tpu", "mosaic_gpu", "triton"})
HOPPER = 9.0


def _platform_default(platform: str) -> str:
    """The default backend for a JAX platform name (``cpu``, ``gpu``/``cuda``, ``tpu``)."""
    if platform == "tpu":
        return "tpu"
    if platform in ("gpu", "cuda"):
        try:
            capability = float(getattr(jax.devices()[0], "compute_capability", "0"))
        except (RuntimeError, ValueError):
            capability = 0.0
        return "mosaic_gpu" if capability >= HOPPER else "triton"
    if platform == "cpu" and cpu.AVAILABLE and jax.device_count() == 1:
        return "cpu"  # tile16 cannot be split by input columns: multi-device (sharded) CPU keeps xla
    return "xla"


def resolve_backend(backend: str | None = None, platform: str | None = None) -> str:
    """The backend to use: the argument, else ``$BITNET_JAX_KERNEL``, else the platform's default."""
    chosen = backend or os.environ.get(ENV_VAR) or None
    if chosen is None:
        chosen = _platform_default(platform or jax.default_backend())
    if chosen not in _IMPLS:
        raise ValueError(
            f"unknown ternary-matmul backend {chosen!r} (from "
            f"{'the backend argument' if backend else ENV_VAR}); known: {', '.join(BACKENDS)}"
        )
    return chosen


def pack(w: jax.Array, backend: str | None = None) -> jax.Array:
    """Pack ternary int8 ``[N, K]`` weights in the layout ``backend`` multiplies."""
    return _IMPLS[resolve_backend(backend)].pack(w)


def repack_rows4(codes: np.ndarray, backend: str | None = None) -> np.ndarray:
    """Convert ``rows4``-packed codes (the HF checkpoint layout) to ``backend``'s layout (NumPy)."""
    impl = _IMPLS[resolve_backend(backend)]
    if impl.LAYOUT == "rows4":
        return codes
    return np.asarray(impl.pack(unpack_rows4(codes)))


def unpack(packed: np.ndarray, k: int, backend: str | None = None) -> np.ndarray:
    """Inverse of :func:`pack`: ternary int8 ``[N, K]`` from ``backend``'s packed layout (NumPy)."""
    impl = _IMPLS[resolve_backend(backend)]
    packed = np.asarray(packed)
    if impl.LAYOUT != "rows4":
        return np.asarray(impl.unpack(packed, k))
    if packed.ndim != 2 or packed.shape[1] != k:
        raise ValueError(f"rows4-packed weights for K={k} must have shape [N/4, {k}], got {packed.shape}")
    return unpack_rows4(packed)


def ternary_matmul(
    x: jax.Array, packed: jax.Array, *, backend: str | None = None, interpret: bool = False
) -> jax.Array:
    """Exact int32 ``[M, N]`` product of int8 ``x [M, K]`` and packed ternary weights ``[N, K]``."""
    if x.dtype != jax.numpy.int8:
        raise TypeError(f"ternary_matmul expects int8 activations, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"ternary_matmul expects x of shape [M, K], got {x.shape}")
    chosen = resolve_backend(backend)
    if chosen not in _PALLAS:
        return _IMPLS[chosen].ternary_matmul(x, packed)
    interpret = interpret or jax.default_backend() == "cpu"  # Pallas runs on CPU only interpreted
    return _IMPLS[chosen].ternary_matmul(x, packed, interpret=interpret)


def ternary_matmul_stacked(
    x: jax.Array, stack: jax.Array, layer: jax.Array, *, backend: str | None = None
) -> jax.Array:
    """:func:`ternary_matmul` with layer ``layer`` (a traced int32 scalar) of a stack ``[L, ...]`` of packed
    weights. The ``cpu`` kernel reads that layer in place; other backends take a slice (a copy)."""
    chosen = resolve_backend(backend)
    if chosen == "cpu":
        if x.dtype != jax.numpy.int8 or x.ndim != 2:
            raise TypeError(f"ternary_matmul_stacked expects int8 x [M, K], got {x.dtype} {x.shape}")
        return _IMPLS["cpu"].ternary_matmul_stacked(x, stack, layer)
    return ternary_matmul(x, jax.lax.dynamic_index_in_dim(stack, layer, keepdims=False), backend=chosen)


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "pack",
    "pack_rows4",
    "repack_rows4",
    "resolve_backend",
    "ternary_matmul",
    "ternary_matmul_reference",
    "ternary_matmul_stacked",
    "unpack",
    "unpack_rows4",
]
