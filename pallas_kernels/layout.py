"""The 2-bit ternary packing shared by the kernels and the Hugging Face checkpoint format.

This docstring is the one place packed layouts are documented. The ``xla``, ``tpu``, ``mosaic_gpu``
and ``triton`` backends use ``rows4``, so Hugging Face codes load into them without repacking; the
``cpu`` backend uses ``tile16`` (``checkpoint_to_params`` repacks through ``repack_rows4``, writers go
back through ``pallas_kernels.unpack``). Weights must be packed for the backend that multiplies them.

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

Layout ``tile16`` (the ``cpu`` backend, :mod:`pallas_kernels.cpu`): made for the u8 x s8 dot-product
instructions of x86 CPUs, it gives each group of 16 output rows one sequential stream of bytes. ``K`` is
padded with zeros to ``Kp = ceil(K / 16) * 16``; rows are taken 16 at a time (row group ``g`` = rows
``16g .. 16g+15``). A full group is ``Kp / 16`` blocks of 64 bytes, block ``b`` covering
``k = 16b .. 16b+15``: byte ``4r + s`` of block ``b`` holds the code ``w + 1`` of the group's row ``r`` at
``k = 16b + 4i + s`` in bits ``2i+1:2i`` (``i = 0..3``). So 16-bit-lane shifts by 0, 2, 4, 6 and a
mask by 3 unpack a block into four 64-byte vectors whose 32-bit lane ``r`` holds four consecutive k of
row ``r``. If ``N`` is not a multiple of 16, the last group has ``R = N % 16`` rows and blocks of
``4R`` bytes. Groups follow each other; the byte stream is stored as ``uint8 [N, Kp / 4]`` (same byte
count as ``rows4``; the shape's rows are not the matrix rows). ``K`` itself is not stored.

The ``rows4`` functions and ``pack_tile16`` work on NumPy arrays and on JAX arrays (inside ``jit`` too); the arithmetic is done in
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


TILE_ROWS = 16
TILE_K = 16


def tile16_bytes_per_row(k: int) -> int:
    """Bytes per matrix row in the ``tile16`` layout: ``ceil(K / 16) * 4``."""
    return -(-k // TILE_K) * TILE_K // VALUES_PER_BYTE


def _tile16_combine(codes: Any, xp: Any) -> Any:
    """``[..., 4 (i), 4 (s)]`` int32 codes -> ``[..., 4 (s)]`` bytes with plane ``i`` in bits ``2i+1:2i``."""
    return codes[..., 0, :] | (codes[..., 1, :] << 2) | (codes[..., 2, :] << 4) | (codes[..., 3, :] << 6)


def pack_tile16(w: Any) -> Any:
    """Pack a ternary ``[N, K]`` matrix into the ``tile16`` byte stream ``uint8 [N, ceil(K/16)*4]``."""
    xp = _xp(w)
    if w.ndim != 2:
        raise ValueError(f"pack_tile16 expects a 2-D [N, K] matrix, got shape {tuple(w.shape)}")
    n, k = w.shape
    kp = tile16_bytes_per_row(k) * VALUES_PER_BYTE
    nb = kp // TILE_K
    codes = xp.pad(w.astype(xp.int32), ((0, 0), (0, kp - k))) + 1
    full = (n // TILE_ROWS) * TILE_ROWS
    head = _tile16_combine(codes[:full].reshape(-1, TILE_ROWS, nb, 4, 4), xp)  # [g, r, b, s]
    tail = _tile16_combine(codes[full:].reshape(n - full, nb, 4, 4), xp)  # [r, b, s]
    parts = [xp.transpose(head, (0, 2, 1, 3)).reshape(-1), xp.transpose(tail, (1, 0, 2)).reshape(-1)]
    return xp.concatenate(parts).astype(xp.uint8).reshape(n, kp // VALUES_PER_BYTE)


def unpack_tile16(packed: Any, k: int, dtype: Any = np.int8) -> Any:
    """Unpack a ``tile16`` stream ``uint8 [N, ceil(K/16)*4]`` into the ternary ``[N, K]`` matrix."""
    xp = _xp(packed)
    if packed.ndim != 2 or packed.shape[1] != tile16_bytes_per_row(k):
        raise ValueError(
            f"unpack_tile16 expects shape [N, {tile16_bytes_per_row(k)}] for K={k}, got {tuple(packed.shape)}"
        )
    n, row_bytes = packed.shape
    kp = row_bytes * VALUES_PER_BYTE
    nb = kp // TILE_K
    full = (n // TILE_ROWS) * TILE_ROWS
    flat = packed.reshape(-1).astype(xp.int32)
    split = full * row_bytes

    def planes(b: Any) -> Any:  # [..., 4 (s)] bytes -> [..., 4 (i), 4 (s)] ternary values
        return xp.stack([((b >> (2 * i)) & 3) - 1 for i in range(4)], axis=-2)

    head = planes(flat[:split].reshape(-1, nb, TILE_ROWS, 4))  # [g, b, r, i, s]
    tail = planes(flat[split:].reshape(nb, n - full, 4))  # [b, r, i, s]
    head = xp.transpose(head, (0, 2, 1, 3, 4)).reshape(full, kp)
    tail = xp.transpose(tail, (1, 0, 2, 3)).reshape(n - full, kp)
    return xp.concatenate([head, tail], axis=0)[:, :k].astype(dtype)
