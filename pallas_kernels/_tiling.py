"""Block-size choice, padding and output assembly shared by the Pallas backends (all ``rows4``).

A kernel tile covers ``bn`` packed rows, i.e. the four output strips ``n, R + n, 2R + n, 3R + n``, so
every kernel writes a ``[4, ., R]``-shaped result that :func:`assemble` turns into ``[M, N]``.
Dimensions that no allowed block divides are padded: ``x`` with zero rows/columns and the packed
weights with :data:`ZERO_BYTE` (four ternary zeros), so padding never changes the product. (Padding
the weights copies them, so the block choices divide the 2B4T shapes exactly: no copy there.)

Kernels multiply by the 2-bit *codes* ``c = w + 1`` (0, 1, 2) rather than by ``w`` -- one op fewer
per weight in the unpack -- and :func:`finish` subtracts ``sum_k x[m, k]`` once per output; split-K
kernels write ``[S, 4, ., .]`` int32 partials that :func:`finish` adds (XLA fuses both into one pass).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

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


def divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap`` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


DEFAULT_CORES = 132  # an H100/H200 SXM: used when the device does not report its SM count (CPU hosts)


def num_cores() -> int:
    """Streaming multiprocessors (GPU) of the default device, else :data:`DEFAULT_CORES`."""
    try:
        count = getattr(jax.devices()[0], "core_count", None)
    except RuntimeError:
        count = None
    return int(count) if isinstance(count, int) and count > 0 and jax.default_backend() == "gpu" else DEFAULT_CORES


def finish(out: jax.Array, x: jax.Array, r: int, *, transposed: bool = False) -> jax.Array:
    """``x @ w.T`` as int32 ``[M, 4R]`` from a kernel's ``codes`` products ``[(S,) 4, Mp, Rp]`` (or
    ``[.., Rp, Mp]`` when ``transposed``): the ``S`` split-K partials added, ``sum_k x`` subtracted."""
    if out.ndim == 4:
        out = out.sum(axis=0, dtype=jnp.int32)
    m = x.shape[0]
    acc = assemble(out, m, r, transposed=transposed)
    return acc - x.astype(jnp.int32).sum(axis=1, keepdims=True)


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


Matmul = Callable[[jax.Array, jax.Array, Any, bool], jax.Array]  # (x, packed, cfg, interpret) -> int32


def entry_points(matmul: Matmul, decode_config: Callable[[int, int, int], Any],
                 prefill_config: Callable[[int, int, int], Any]):
    """A backend's jitted ``(ternary_matmul, decode, prefill)`` from its ``matmul(x, packed, cfg, interpret)``
    and its tile choices ``(m, r, k) -> cfg``.

    * ``ternary_matmul(x, packed, interpret=False, cfg=None)``: exact int32 ``x @ w.T`` of int8 ``x [M, K]``
      and ``rows4``-packed ``w``; ``cfg`` defaults to the decode tiles for ``M <= DECODE_MAX_M``, else prefill;
    * ``decode`` / ``prefill``: the same with the decode / prefill tiles (the kernel object picks by ``M``).
    """

    @functools.partial(jax.jit, static_argnames=("interpret", "cfg"))
    def ternary_matmul(x: jax.Array, packed: jax.Array, interpret: bool = False, cfg: Any = None) -> jax.Array:
        return matmul(x, packed, cfg, interpret)

    def with_tiles(choose):
        @functools.partial(jax.jit, static_argnames=("interpret",))
        def call(x: jax.Array, packed: jax.Array, interpret: bool = False) -> jax.Array:
            return matmul(x, packed, choose(x.shape[0], packed.shape[0], x.shape[1]), interpret)

        return call

    return ternary_matmul, with_tiles(decode_config), with_tiles(prefill_config)
