"""The 2-bit ternary packing shared by the kernels and the Hugging Face checkpoint format.

This docstring is the one place packed layouts are documented. Every backend (``xla``, ``tpu``,
``mosaic_gpu``, ``triton``) uses ``rows4``, so weights packed at load time suit whichever kernel the
dispatcher picks at call time, and Hugging Face codes load without repacking.

Layout ``rows4`` (the one transformers' packed BitNet checkpoints store): a ternary matrix ``w`` of shape ``[N, K]`` (values -1, 0, +1) becomes ``uint8 [N // 4, K]``.
Each weight is stored as the code ``w + 1`` (0, 1 or 2). With ``R = N // 4``, byte ``[r, c]`` holds
``w[r, c]`` in bits 1:0, ``w[R + r, c]`` in bits 3:2, ``w[2R + r, c]`` in bits 5:4 and ``w[3R + r, c]``
in bits 7:6. Code 3 never occurs in a valid file.

Why it suits the kernels: a packed tile ``[bn, bk]`` (rows ``r0 .. r0 + bn``) holds the weights of
four output strips ``r0 + n``, ``R + r0 + n``, ``2R + r0 + n``, ``3R + r0 + n``; a kernel unpacks the
four 2-bit planes on chip and writes a ``[4, M, R]`` (or ``[4, R, M]``) result that reshapes to
``[M, N]``. Projections fuse by concatenating packed arrays along rows (each keeps its own scale and
its own ``[4, ., R_i]`` slice of the output). Kernels pad ``R`` and ``K`` with byte ``0x55`` (four
zero weights) where no tile size divides them.

Both functions work on NumPy arrays and on JAX arrays (inside ``jit`` too); the arithmetic is done in
int32 because Mosaic rejects 8-bit elementwise arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

VALUES_PER_BYTE = 4


def _xp(a: Any):
    """The array namespace (numpy or jax.numpy) that owns ``a``."""
    if isinstance(a, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


def pack_rows4(w: Any) -> Any:
    """Pack a ternary ``[N, K]`` matrix (N divisible by 4) into ``uint8 [N // 4, K]``."""
    xp = _xp(w)
    if w.ndim != 2:
        raise ValueError(f"pack_rows4 expects a 2-D [N, K] matrix, got shape {tuple(w.shape)}")
    n = w.shape[0]
    if n % VALUES_PER_BYTE:
        raise ValueError(f"pack_rows4 needs N divisible by {VALUES_PER_BYTE}, got N={n}")
    codes = (w.astype(xp.int32) + 1).reshape(VALUES_PER_BYTE, n // VALUES_PER_BYTE, w.shape[1])
    packed = codes[0] | (codes[1] << 2) | (codes[2] << 4) | (codes[3] << 6)
    return packed.astype(xp.uint8)


def unpack_rows4(packed: Any, dtype: Any = np.int8) -> Any:
    """Unpack ``uint8 [N // 4, K]`` into the ternary ``[N, K]`` matrix, as ``dtype``."""
    xp = _xp(packed)
    if packed.ndim != 2:
        raise ValueError(f"unpack_rows4 expects a 2-D packed matrix, got shape {tuple(packed.shape)}")
    p = packed.astype(xp.int32)
    planes = [((p >> (2 * i)) & 3) - 1 for i in range(VALUES_PER_BYTE)]
    return xp.concatenate(planes, axis=0).astype(dtype)


def invalid_code_count(packed: np.ndarray) -> int:
    """Number of 2-bit fields holding code 3 (which no ternary weight maps to)."""
    p = np.asarray(packed, dtype=np.uint8)
    return int(sum(np.count_nonzero(((p >> (2 * i)) & 3) == 3) for i in range(VALUES_PER_BYTE)))
