"""GPU (Triton backend) kernel for GPUs without Hopper ``wgmma`` (Ampere/Ada, int8 ``mma``).

Grid ``(M / bm, R / bn)``; each program loops over K in ``bk`` steps, widens the ``rows4`` tile
``[bn, bk]`` to int32, extracts the four 2-bit planes, narrows them to int8 and accumulates four
int8 dots ``x @ plane.T`` into int32 registers, then writes the ``[4, bm, bn]`` output block.
Tile sizes are powers of two (a Triton rule) and >= 16 (its dot minimum); other shapes are padded.
Pallas's Triton backend is deprecated from jax 0.11; this module is the pre-Hopper fallback.
In interpret mode the output buffer is pre-filled with INT32_MAX (aliased in) to expose unwritten tiles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._tiling import assemble, check_operands, pad_operands, round_up

POISON = jnp.iinfo(jnp.int32).max


def blocks(m: int) -> tuple[int, int, int]:
    """``(bm, bn, bk)`` for ``m`` activation rows."""
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    return bm, 64, 128


def build_call(mp, rp, kp, bm, bn, bk, *, num_warps=4, num_stages=3, interpret=False):
    """The raw kernel: (x [Mp, Kp] int8, packed [Rp, Kp] uint8[, poison]) -> int32 [4, Mp, Rp]."""
    nk = kp // bk

    def kernel(x_ref, w_ref, *refs):
        o_ref = refs[-1]

        def body(kk, accs):
            ks = pl.ds(pl.multiple_of(kk * bk, bk), bk)
            x = x_ref[:, ks]
            p = w_ref[:, ks].astype(jnp.int32)
            return tuple(
                acc + pltriton.dot(x, (((p >> (2 * q)) & 3) - 1).astype(jnp.int8), trans_b=True).astype(jnp.int32)
                for q, acc in enumerate(accs)
            )

        zeros = tuple(jnp.zeros((bm, bn), jnp.int32) for _ in range(4))
        accs = jax.lax.fori_loop(0, nk, body, zeros)
        for q in range(4):
            o_ref[q] = accs[q]

    in_specs = [pl.BlockSpec((bm, kp), lambda i, j: (i, 0)), pl.BlockSpec((bn, kp), lambda i, j: (j, 0))]
    if interpret:
        in_specs.append(pl.BlockSpec((4, bm, bn), lambda i, j: (0, i, j)))
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((4, mp, rp), jnp.int32),
        grid=(mp // bm, rp // bn),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((4, bm, bn), lambda i, j: (0, i, j)),
        input_output_aliases={2: 0} if interpret else {},
        compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
    )


def _matmul(x, packed, bm, bn, bk, interpret):
    check_operands(x, packed)
    (m, k), r = x.shape, packed.shape[0]
    mp, rp, kp = round_up(m, bm), round_up(r, bn), round_up(k, bk)
    xp, wp = pad_operands(x, packed, mp, rp, kp)
    args = (xp, wp)
    if interpret:
        args += (jnp.full((4, mp, rp), POISON, jnp.int32),)
    out = build_call(mp, rp, kp, bm, bn, bk, interpret=interpret)(*args)
    return assemble(out, m, r)


@functools.partial(jax.jit, static_argnames=("interpret",))
def ternary_matmul(x: jax.Array, packed: jax.Array, interpret: bool = False) -> jax.Array:
    """Exact int32 ``x @ w.T`` from int8 ``x [M, K]`` and ``rows4``-packed ``w`` (Triton)."""
    return _matmul(x, packed, *blocks(x.shape[0]), interpret)


def illegal_variant(name: str):
    """A deliberately broken configuration the cuda lowering must reject (for the compile tests)."""
    bm, bn, bk = {"non_pow2_tile": (16, 48, 128)}[name]  # Triton tiles must be powers of 2
    return jax.jit(lambda x, packed: _matmul(x, packed, bm, bn, bk, False))
