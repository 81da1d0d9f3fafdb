"""TPU (Mosaic) kernels: int8 MXU matmul with the 2-bit unpack done in VMEM in 32-bit arithmetic.

Grid ``(M / bm, R / bn, K / bk)``, K innermost and sequential. Each step loads an int8 ``x`` tile
``[bm, bk]`` and a ``rows4`` tile ``[bn, bk]`` (uint8) and, chunk by chunk along K (``ck`` columns, so
the 32-bit temporaries stay small), widens the bytes to int32 (Mosaic rejects 8-bit elementwise
arithmetic), extracts the four 2-bit codes ``c = w + 1`` (0, 1, 2; ``finish`` subtracts ``sum_k x``
once, which saves a VPU op per weight), narrows each plane to int8 and runs four int8 x int8 -> int32
MXU dots (``x @ plane.T``), accumulating into the resident int32 output block ``[4, bm, bn]``.

Two block configurations, chosen from ``M`` at call time:

* **decode** (``M <= DECODE_MAX_M``): ``x`` is one ``[Mp, K]`` block (``Mp`` = M rounded up to 8, a full
  array dimension) fetched once; the weights stream in large ``[bn, K]`` blocks (about
  :data:`DECODE_BLOCK_BYTES`) so the per-step overhead is amortised and every byte is read once. The
  row axis is ``parallel`` (split over the TensorCores of a megacore chip).
* **prefill**: 256-row ``x`` tiles (int8 tiles are 32 rows), ``[bn, bk]`` weight tiles up to 512 x 512
  (a ragged last row block where none divides ``R``: a full-``R`` block of 2B4T's gate/up overflows
  the 16 MiB of scoped VMEM on v5e).

Blocks follow the TPU tiling rules (8-bit (32, 128), 32-bit (8, 128), or a full array dimension) and
divide the 2B4T shapes exactly, so the weights are never padded (copied) there.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels._tiling import check_operands, entry_points, finish, pad_operands, pick_block, round_up

BM_MAX = 256
DECODE_MAX_M = 16
DECODE_BLOCK_BYTES = 1 << 20
CHUNKS = (512, 384, 256, 128)
ROW_BLOCKS = (512, 384, 256, 128)


@dataclasses.dataclass(frozen=True)
class Config:
    """Blocks ``(bm, bn, bk)`` over padded dims ``(mp, rp, kp)``; ``ck`` the in-kernel K chunk."""

    bm: int
    bn: int
    bk: int
    mp: int
    rp: int
    kp: int
    ck: int = 512


def _chunk(bk: int) -> int:
    return next(c for c in CHUNKS if bk % c == 0)


def blocks(m: int, r: int, k: int) -> tuple[int, int, int, int, int, int]:
    """Prefill ``(bm, bn, bk, Mp, Rp, Kp)`` satisfying the TPU tiling rules for x [M, K] and packed [R, K]."""
    bm = min(BM_MAX, round_up(m, 32))  # int8 x tile: 32 rows
    mp = round_up(m, bm)
    bn = next((c for c in ROW_BLOCKS if r % c == 0), r if r <= ROW_BLOCKS[0] else ROW_BLOCKS[0])  # else ragged
    bk, kp = pick_block(k, (512, 256, 128))
    return bm, bn, bk, mp, r, kp


def prefill_config(m: int, r: int, k: int) -> Config:
    """The prefill blocks as a :class:`Config`."""
    bm, bn, bk, mp, rp, kp = blocks(m, r, k)
    return Config(bm, bn, bk, mp, rp, kp, _chunk(bk))


def decode_config(m: int, r: int, k: int) -> Config:
    """Decode blocks: all of ``x`` in one block, ``[bn, K]`` weight blocks of about DECODE_BLOCK_BYTES."""
    mp = round_up(m, 8)
    kp = round_up(k, 128)
    target = max(128, DECODE_BLOCK_BYTES // kp)
    if r <= target:
        bn = r  # one full-dimension block
    else:  # a divisor if one fits, else a ragged last block (its extra rows are never written back)
        fits = [c for c in range(128, target + 1, 128) if r % c == 0]
        bn = max(fits) if fits else max(128, target // 128 * 128)
    return Config(mp, bn, kp, mp, r, kp, _chunk(kp))


def config_for(m: int, r: int, k: int) -> Config:
    """Decode blocks for ``m <= DECODE_MAX_M``, else prefill blocks."""
    return decode_config(m, r, k) if m <= DECODE_MAX_M else prefill_config(m, r, k)


def _make_kernel(ck: int):
    def kernel(x_ref, w_ref, o_ref):
        @pl.when(pl.program_id(2) == 0)
        def _init():
            o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)

        bk = w_ref.shape[1]

        def chunk(c, carry):
            cs = pl.ds(pl.multiple_of(c * ck, ck), ck)
            x = x_ref[:, cs]
            p = w_ref[:, cs].astype(jnp.int32)
            for q in range(4):
                plane = ((p >> (2 * q)) & 3).astype(jnp.int8)
                o_ref[q] += jax.lax.dot_general(x, plane, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
            return carry

        jax.lax.fori_loop(0, bk // ck, chunk, 0)

    return kernel


def build_call(mp: int, rp: int, kp: int, bm: int, bn: int, bk: int, *, kernel=None, ck: int | None = None,
               interpret=False):
    """The raw ``pallas_call``: (x [Mp, Kp] int8, packed [Rp, Kp] uint8) -> int32 ``[4, Mp, Rp]`` of ``x @ codes.T``."""
    if interpret:
        interpret = pltpu.InterpretParams(uninitialized_memory="nan")  # int outputs start at INT_MAX
    return pl.pallas_call(
        kernel or _make_kernel(ck or _chunk(bk)),
        out_shape=jax.ShapeDtypeStruct((4, mp, rp), jnp.int32),
        grid=(mp // bm, -(-rp // bn), kp // bk),
        in_specs=[
            pl.BlockSpec((bm, bk), lambda i, j, k: (i, k)),
            pl.BlockSpec((bn, bk), lambda i, j, k: (j, k)),
        ],
        out_specs=pl.BlockSpec((4, bm, bn), lambda i, j, k: (0, i, j)),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
    )


def _matmul(x: jax.Array, packed: jax.Array, cfg: Config | None, interpret: bool) -> jax.Array:
    check_operands(x, packed)
    (m, k), r = x.shape, packed.shape[0]
    cfg = cfg or config_for(m, r, k)
    xp, wp = pad_operands(x, packed, cfg.mp, cfg.rp, cfg.kp)
    out = build_call(cfg.mp, cfg.rp, cfg.kp, cfg.bm, cfg.bn, cfg.bk, ck=cfg.ck, interpret=interpret)(xp, wp)
    return finish(out, x, r)


# ternary_matmul(x, packed, interpret=False, cfg=None), decode(...), prefill(...): exact int32 x @ w.T
ternary_matmul, decode, prefill = entry_points(_matmul, decode_config, prefill_config)
