"""TPU (Mosaic) kernel: int8 MXU matmul with the 2-bit unpack done in VMEM in 32-bit arithmetic.

Grid ``(M / bm, R / bn, K / bk)``, K innermost and sequential. Each step loads an int8 ``x`` tile
``[bm, bk]`` and a ``rows4`` tile ``[bn, bk]`` (uint8), widens the bytes to int32 (Mosaic rejects
8-bit elementwise arithmetic), extracts the four 2-bit planes, narrows each plane to int8 and runs
four int8 x int8 -> int32 MXU dots (``x @ plane.T``), accumulating into the resident int32 output
block ``[4, bm, bn]`` (plane q = output columns ``q R + n``). Blocks follow the TPU tiling rules:
8-bit tiles (32, 128), 32-bit tiles (8, 128), or a full array dimension.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._tiling import assemble, check_operands, pad_operands, pick_block, round_up
BM_MAX = 256


def blocks(m: int, r: int, k: int) -> tuple[int, int, int, int, int, int]:
    """``(bm, bn, bk, Mp, Rp, Kp)`` satisfying the TPU tiling rules for x [M, K] and packed [R, K]."""
    bm = min(BM_MAX, round_up(m, 32))  # int8 x tile: 32 rows
    mp = round_up(m, bm)
    bn, rp = pick_block(r, (512, 384, 256, 128), full_max=2048)
    bk, kp = pick_block(k, (512, 256, 128))
    return bm, bn, bk, mp, rp, kp


def _kernel(x_ref, w_ref, o_ref):
    @pl.when(pl.program_id(2) == 0)
    def _init():
        o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)

    x = x_ref[...]
    p = w_ref[...].astype(jnp.int32)
    for q in range(4):
        plane = (((p >> (2 * q)) & 3) - 1).astype(jnp.int8)
        o_ref[q] += jax.lax.dot_general(
            x, plane, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32
        )


def build_call(mp: int, rp: int, kp: int, bm: int, bn: int, bk: int, *, kernel=_kernel, interpret=False):
    """The raw ``pallas_call``: (x [Mp, Kp] int8, packed [Rp, Kp] uint8) -> int32 [4, Mp, Rp]."""
    if interpret:
        interpret = pltpu.InterpretParams(uninitialized_memory="nan")  # int outputs start at INT_MAX
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((4, mp, rp), jnp.int32),
        grid=(mp // bm, rp // bn, kp // bk),
        in_specs=[
            pl.BlockSpec((bm, bk), lambda i, j, k: (i, k)),
            pl.BlockSpec((bn, bk), lambda i, j, k: (j, k)),
        ],
        out_specs=pl.BlockSpec((4, bm, bn), lambda i, j, k: (0, i, j)),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
    )


@functools.partial(jax.jit, static_argnames=("interpret",))
def ternary_matmul(x: jax.Array, packed: jax.Array, interpret: bool = False) -> jax.Array:
    """Exact int32 ``x @ w.T`` from int8 ``x [M, K]`` and ``rows4``-packed ``w`` on the TPU MXU."""
    check_operands(x, packed)
    (m, k), r = x.shape, packed.shape[0]
    bm, bn, bk, mp, rp, kp = blocks(m, r, k)
    xp, wp = pad_operands(x, packed, mp, rp, kp)
    out = build_call(mp, rp, kp, bm, bn, bk, interpret=interpret)(xp, wp)
    return assemble(out, m, r)
