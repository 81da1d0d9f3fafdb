"""Packed ternary (2-bit) x int8 matrix multiplication, with one dispatcher over the backends.

Public API:

* :func:`pack` -- ternary int8 ``[N, K]`` weights to the packed layout a backend wants.
* :func:`ternary_matmul` -- int8 activations ``[M, K]`` times packed weights, exact int32 ``[M, N]``.
* :data:`BACKENDS` -- the backend names the dispatcher knows.

The backend is chosen, in order, by the ``backend=`` argument, the ``BITNET_JAX_KERNEL`` environment
variable, and otherwise automatically from the platform. Packed layouts are documented in
:mod:`pallas_kernels.layout`; weights must be packed for the backend that multiplies them.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from pallas_kernels import cpu, xla
from pallas_kernels.layout import pack_rows4, unpack_rows4
from pallas_kernels.reference import ternary_matmul_reference

ENV_VAR = "BITNET_JAX_KERNEL"

# ``cpu`` imports even when its C++ extension is not built (it warns, and sets cpu.AVAILABLE = False).
_IMPLS = {"xla": xla, "cpu": cpu}
BACKENDS: tuple[str, ...] = tuple(_IMPLS)


def resolve_backend(backend: str | None = None, platform: str | None = None) -> str:
    """The backend to use: the argument, else ``$BITNET_JAX_KERNEL``, else the platform's default."""
    chosen = backend or os.environ.get(ENV_VAR) or None
    if chosen is None:
        platform = platform or jax.default_backend()
        chosen = "cpu" if platform == "cpu" and cpu.AVAILABLE else "xla"
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
    return np.asarray(_IMPLS[resolve_backend(backend)].unpack(np.asarray(packed), k))


def ternary_matmul(
    x: jax.Array, packed: jax.Array, *, backend: str | None = None, interpret: bool = False
) -> jax.Array:
    """Exact int32 ``[M, N]`` product of int8 ``x [M, K]`` and packed ternary weights ``[N, K]``."""
    del interpret  # only the Pallas backends use it
    if x.dtype != jax.numpy.int8:
        raise TypeError(f"ternary_matmul expects int8 activations, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"ternary_matmul expects x of shape [M, K], got {x.shape}")
    return _IMPLS[resolve_backend(backend)].ternary_matmul(x, packed)


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "pack",
    "pack_rows4",
    "repack_rows4",
    "resolve_backend",
    "ternary_matmul",
    "ternary_matmul_reference",
    "unpack",
    "unpack_rows4",
]
