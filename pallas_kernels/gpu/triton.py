"""GPU (Pallas Triton backend) kernels: every CUDA GPU (Ampere, Ada, Hopper, Blackwell), no wgmma.

Three configurations of one module, chosen from ``M`` at call time (same ``rows4`` layout):

* **GEMV** (``M <= GEMV_MAX_M``, batch-1 decode): CUDA cores, no tensor cores. The packed codes and
  ``x`` are read as 32-bit words (4 consecutive ``k``; a free bitcast in XLA). For code plane ``q``,
  ``(word >> 2q) & 0x03030303`` holds four 2-bit codes ``c = w + 1`` in its four bytes, and one
  ``dp4a`` (4-way byte dot product with int32 accumulate, PTX ``dp4a.u32.s32``; sm_61 and newer)
  multiplies them with four int8 activations: about 3 integer instructions per 4 weights, so the
  unpack keeps up with HBM. Accumulators stay elementwise ``[bn, bk/4]`` and are reduced once.
* **decode** (``GEMV_MAX_M < M <= DECODE_MAX_M``): int8 ``dot`` (mma) on 16-row ``x`` tiles.
* **prefill** (``M > DECODE_MAX_M``): int8 ``dot`` on ``bm``-row tiles over a grid in ``M``.

GEMV and decode split K: the grid is ``(R / bn, S)``, program ``(j, s)`` covers the ``s``-th of ``S``
equal K chunks and writes int32 partials ``[S, 4, Mp, Rp]`` that XLA adds (fused with the epilogue,
:func:`pallas_kernels._tiling.finish`); ``S`` is chosen so that the grid fills the SMs. The products
are with the codes ``c = w + 1``; ``finish`` subtracts ``sum_k x``.

Interpret mode (CPU) runs the same kernels; only the ``dp4a`` instruction is replaced by its
definition in integer ``jnp`` (:func:`dp4a_reference`, itself tested against NumPy). The output buffer
is pre-filled with INT32_MAX (aliased in) to expose unwritten tiles. Pallas's Triton backend is
deprecated from jax 0.11; the Mosaic GPU module is the Hopper path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._tiling import (
    check_operands, divisor_at_most, entry_points, finish, num_cores, pad_operands, round_up,
)

POISON = jnp.iinfo(jnp.int32).max
GEMV_MAX_M = 4
DECODE_MAX_M = 16
DP4A_ASM = "dp4a.u32.s32 $0, $1, $2, $3;"  # $0 = $3 + sum_i u8($1)_i * s8($2)_i
REG_BUDGET = 64  # accumulator registers per thread the GEMV tiles are sized to


@dataclasses.dataclass(frozen=True)
class Config:
    """Tiles: ``bm`` x rows per program (GEMV: ``Mp``, the rows themselves), ``bn`` packed rows,
    ``bk`` K per step, ``splits`` K chunks; ``gemv`` selects the dp4a path."""

    bm: int = 64
    bn: int = 64
    bk: int = 128
    splits: int = 1
    gemv: bool = False
    num_warps: int = 4
    num_stages: int = 3


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _row_block(r: int, largest: int, smallest: int) -> int:
    """The largest power of two in ``[smallest, largest]`` dividing ``r`` (no weight padding), else ``largest``."""
    return next((b for b in (largest >> i for i in range(largest.bit_length())) if b >= smallest and r % b == 0), largest)


def gemv_config(m: int, r: int, k: int, cores: int | None = None) -> Config:
    """dp4a GEMV tiles for ``m <= GEMV_MAX_M``: accumulators ``m * 4 * bn * bk/4`` within the register
    budget, and enough split-K programs for two per SM."""
    bm = _pow2_at_least(m)
    bk, num_warps = 256, 4
    bn = _row_block(r, max(4, REG_BUDGET * 32 * num_warps // (bm * 4 * (bk // 4))), 1)  # 32 at M = 1
    return _split(Config(bm=bm, bn=bn, bk=bk, gemv=True, num_warps=num_warps, num_stages=4), r, k, cores)


def decode_config(m: int, r: int, k: int, cores: int | None = None) -> Config:
    """int8-dot decode tiles for ``GEMV_MAX_M < m <= DECODE_MAX_M`` (16-row ``x``), split K."""
    return _split(Config(bm=16, bn=_row_block(r, 64, 16), bk=128, num_stages=4), r, k, cores)


def _split(cfg: Config, r: int, k: int, cores: int | None) -> Config:
    nk = round_up(k, cfg.bk) // cfg.bk
    row_blocks = round_up(r, cfg.bn) // cfg.bn
    wanted = -(-2 * (cores or num_cores()) // row_blocks)
    by_traffic = max(1, round_up(k, cfg.bk) // (32 * cfg.bm))  # partials <= half the packed bytes
    return dataclasses.replace(cfg, splits=divisor_at_most(nk, min(wanted, by_traffic)))


def prefill_config(m: int, r: int) -> Config:
    """int8-dot prefill tiles: 32 or 64 ``x`` rows, no K split."""
    return Config(bm=32 if m <= 32 else 64, bn=_row_block(r, 64, 16), bk=128)


def small_m_config(m: int, r: int, k: int) -> Config:
    """The GEMV tiles for ``m <= GEMV_MAX_M``, else the int8-dot decode tiles."""
    return gemv_config(m, r, k) if m <= GEMV_MAX_M else decode_config(m, r, k)


def config_for(m: int, r: int, k: int) -> Config:
    """GEMV for ``m <= GEMV_MAX_M``, decode for ``m <= DECODE_MAX_M``, else prefill."""
    return small_m_config(m, r, k) if m <= DECODE_MAX_M else prefill_config(m, r)


def dp4a_reference(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """``c + sum_i a_i * b_i`` over the four bytes of ``a`` (unsigned) and ``b`` (signed), as int32."""
    a = a.astype(jnp.int32)
    b = b.astype(jnp.int32)
    out = c
    for i in range(4):
        out = out + ((a >> (8 * i)) & 0xFF) * ((b << (24 - 8 * i)) >> 24)
    return out


def _dp4a(a: jax.Array, b: jax.Array, c: jax.Array, interpret: bool) -> jax.Array:
    if interpret:
        return dp4a_reference(a, b, c)
    (out,) = pltriton.elementwise_inline_asm(
        DP4A_ASM, args=[a, b, c], constraints="=r,r,r,r", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(c.shape, jnp.int32)],
    )
    return out


def _gemv_body(cfg: Config, per_split: int, interpret: bool):
    bm, bn, kw = cfg.bm, cfg.bn, cfg.bk // 4

    def kernel(x_ref, w_ref, *refs):  # x [bm, Kp/4] int32 words, w [bn, Kp/4] uint32 words
        o_ref = refs[-1]
        s = pl.program_id(1)

        def body(t, accs):
            ks = pl.ds(pl.multiple_of((s * per_split + t) * kw, kw), kw)
            words = w_ref[:, ks]
            planes = [(words >> (2 * q)) & 0x03030303 for q in range(4)]
            out = []
            for row in range(bm):
                xw = jnp.broadcast_to(x_ref[row, ks][None, :], (bn, kw))
                out.extend(_dp4a(planes[q], xw, accs[4 * row + q], interpret) for q in range(4))
            return tuple(out)

        zeros = tuple(jnp.zeros((bn, kw), jnp.int32) for _ in range(4 * bm))
        accs = jax.lax.fori_loop(0, per_split, body, zeros)
        for row in range(bm):
            for q in range(4):
                o_ref[q, row, :] = jnp.sum(accs[4 * row + q], axis=1)

    return kernel


def _dot_body(cfg: Config, per_split: int):
    bk = cfg.bk

    def kernel(x_ref, w_ref, *refs):  # x [bm, Kp] int8, w [bn, Kp] uint8
        o_ref = refs[-1]
        s = pl.program_id(1)

        def body(t, accs):
            ks = pl.ds(pl.multiple_of((s * per_split + t) * bk, bk), bk)
            x = x_ref[:, ks]
            p = w_ref[:, ks].astype(jnp.int32)
            return tuple(
                acc + pltriton.dot(x, ((p >> (2 * q)) & 3).astype(jnp.int8), trans_b=True).astype(jnp.int32)
                for q, acc in enumerate(accs)
            )

        zeros = tuple(jnp.zeros((cfg.bm, cfg.bn), jnp.int32) for _ in range(4))
        accs = jax.lax.fori_loop(0, per_split, body, zeros)
        for q in range(4):
            o_ref[q] = accs[q]

    return kernel


def build_call(mp: int, rp: int, kp: int, cfg: Config, *, interpret: bool = False):
    """The raw kernel: (x, packed[, poison]) -> int32 partials ``[S, 4, Mp, Rp]`` of ``x @ codes.T``.

    ``x`` is int8 ``[Mp, Kp]`` and ``packed`` uint8 ``[Rp, Kp]``, or (GEMV) their 32-bit words
    ``int32 [Mp, Kp/4]`` and ``uint32 [Rp, Kp/4]``.
    """
    bm, bn, splits = cfg.bm, cfg.bn, cfg.splits
    nk = kp // cfg.bk
    if nk % splits:
        raise ValueError(f"{splits} K splits do not divide {nk} K steps")
    per_split = nk // splits
    width = kp // 4 if cfg.gemv else kp
    kernel = _gemv_body(cfg, per_split, interpret) if cfg.gemv else _dot_body(cfg, per_split)
    in_specs = [pl.BlockSpec((bm, width), lambda j, s, i: (i, 0)), pl.BlockSpec((bn, width), lambda j, s, i: (j, 0))]
    out_spec = pl.BlockSpec((None, 4, bm, bn), lambda j, s, i: (s, 0, i, j))
    if interpret:
        in_specs.append(out_spec)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((splits, 4, mp, rp), jnp.int32),
        grid=(rp // bn, splits, mp // bm),
        in_specs=in_specs,
        out_specs=out_spec,
        input_output_aliases={2: 0} if interpret else {},
        compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
    )


def words(a: jax.Array, dtype) -> jax.Array:
    """A ``[rows, K]`` byte array as ``[rows, K/4]`` 32-bit words (byte ``i`` of word ``j`` = column ``4j + i``)."""
    return jax.lax.bitcast_convert_type(a.reshape(a.shape[0], a.shape[1] // 4, 4), dtype)


def padded_dims(m: int, r: int, k: int, cfg: Config) -> tuple[int, int, int]:
    """``(Mp, Rp, Kp)`` the operands are padded to for ``cfg``."""
    return round_up(m, cfg.bm), round_up(r, cfg.bn), round_up(k, cfg.bk)


def _matmul(x, packed, cfg: Config | None, interpret: bool):
    check_operands(x, packed)
    (m, k), r = x.shape, packed.shape[0]
    cfg = cfg or config_for(m, r, k)
    mp, rp, kp = padded_dims(m, r, k, cfg)
    xp, wp = pad_operands(x, packed, mp, rp, kp)
    if cfg.gemv:
        xp, wp = words(xp, jnp.int32), words(wp, jnp.uint32)
    args = (xp, wp)
    if interpret:
        args += (jnp.full((cfg.splits, 4, mp, rp), POISON, jnp.int32),)
    out = build_call(mp, rp, kp, cfg, interpret=interpret)(*args)
    return finish(out, x, r)


# ternary_matmul(x, packed, interpret=False, cfg=None), decode(...), prefill(...): exact int32 x @ w.T
ternary_matmul, decode, prefill = entry_points(_matmul, small_m_config, lambda m, r, k: prefill_config(m, r))


def illegal_variant(name: str):
    """A deliberately broken configuration the cuda lowering must reject (for the compile tests)."""
    bad = {
        "non_pow2_tile": Config(bm=16, bn=48, bk=128),  # Triton tiles must be powers of 2
        "non_pow2_gemv": Config(bm=1, bn=24, bk=256, gemv=True),  # likewise for the GEMV tile
    }[name]
    return jax.jit(lambda x, packed: _matmul(x, packed, bad, False))
