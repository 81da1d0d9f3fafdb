"""Block-size choice, padding and output assembly shared by the Pallas backends (all ``rows4``).

A kernel tile covers ``bn`` packed rows, i.e. the four output strips ``n, R + n, 2R + n, 3R + n``, so
every kernel writes a ``[4, ., R]``-shaped result that :func:`assemble` turns into ``[M, N]``.
Dimensions that no allowed block divides are padded: ``x`` with zero rows/columns and the packed
weights with :data:`ZERO_BYTE` (four ternary zeros), so padding never changes the product.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from bitnet_jax.errors import KernelError

ZERO_BYTE = 0x55  # codes 1,1,1,1 = four ternary zeros


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def pick_block(dim: int, candidates: Sequence[int], full_max: int = 0) -> tuple[int, int]:
    """``(block, padded_dim)``: the largest candidate dividing ``dim``, else ``dim`` itself when
    ``dim <= full_max`` (a full-dimension block), else the smallest candidate with padding."""
    for c in sorted(candidates, reverse=True):
        if dim % c == 0:
            return c, dim
    if dim <= full_max:
        return dim, dim
    c = min(candidates)
    return c, round_up(dim, c)


def pad_operands(x: jax.Array, packed: jax.Array, mp: int, rp: int, kp: int) -> tuple[jax.Array, jax.Array]:
    """Pad ``x [M, K]`` to ``[mp, kp]`` with zeros and ``packed [R, K]`` to ``[rp, kp]`` with zero codes."""
    m, k = x.shape
    r = packed.shape[0]
    if (mp, kp) != (m, k):
        x = jnp.pad(x, ((0, mp - m), (0, kp - k)))
    if (rp, kp) != (r, k):
        packed = jnp.pad(packed, ((0, rp - r), (0, kp - k)), constant_values=ZERO_BYTE)
    return x, packed


def assemble(out: jax.Array, m: int, r: int, *, transposed: bool = False) -> jax.Array:
    """``[M, 4R]`` from a kernel result ``[4, Mp, Rp]`` (or ``[4, Rp, Mp]`` when ``transposed``)."""
    if transposed:
        out = out.transpose(0, 2, 1)
    return out[:, :m, :r].transpose(1, 0, 2).reshape(m, 4 * r)


def check_operands(x: jax.Array, packed: jax.Array) -> None:
    """Raise a clear error unless ``x`` is int8 ``[M, K]`` and ``packed`` uint8 ``[R, K]``."""
    if x.dtype != jnp.int8 or x.ndim != 2:
        raise KernelError(f"x must be int8 [M, K], got {x.dtype} {tuple(x.shape)}")
    if packed.dtype != jnp.uint8 or packed.ndim != 2 or packed.shape[1] != x.shape[1]:
        raise KernelError(
            f"packed weights must be uint8 [N/4, K={x.shape[1]}] (rows4), got {packed.dtype} {tuple(packed.shape)}"
        )
