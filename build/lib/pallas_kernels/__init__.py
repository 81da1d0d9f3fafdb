"""Packed ternary (2-bit) x int8 matrix multiplication, with one dispatcher over the backends.

Public API:

* :func:`pack` -- ternary int8 ``[N, K]`` weights to the packed layout a backend wants.
* :func:`ternary_matmul` -- int8 activations ``[M, K]`` times packed weights, exact int32 ``[M, N]``.
* :data:`BACKENDS` -- the backend names the dispatcher knows.

The backend is chosen, in order, by the ``backend=`` argument, the ``BITNET_JAX_KERNEL`` environment
variable, and otherwise automatically from the platform: ``tpu`` on TPU, ``mosaic_gpu`` on CUDA GPUs
of compute capability >= 9.0 (Hopper ``wgmma``), ``triton`` on older CUDA GPUs, ``xla`` elsewhere.
Within a backend the kernel may further depend on the shape (``mosaic_gpu``: decode vs prefill tiles
by M); every backend uses the same packed layout (``rows4``, :mod:`pallas_kernels.layout`), so any
choice made at call time is compatible with weights packed at load time. The Pallas backends run on
CPU only in interpret mode, which is switched on automatically there.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from pallas_kernels import gpu_mosaic, gpu_triton, tpu, xla
from pallas_kernels.layout import pack_rows4, unpack_rows4
from pallas_kernels.reference import ternary_matmul_reference

BACKENDS: tuple[str, ...] = ("xla", "tpu", "mosaic_gpu", "triton")
ENV_VAR = "BITNET_JAX_KERNEL"

_IMPLS = {"xla": xla, "tpu": tpu, "mosaic_gpu": gpu_mosaic, "triton": gpu_triton}
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


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "pack",
    "pack_rows4",
    "repack_rows4",
    "resolve_backend",
    "ternary_matmul",
    "ternary_matmul_reference",
    "unpack_rows4",
]
