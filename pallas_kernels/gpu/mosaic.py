"""GPU (Mosaic GPU, Hopper ``wgmma``) kernels: int8 tensor-core matmul with the 2-bit unpack on chip.

One kernel body, two configurations chosen from ``M`` at call time (same ``rows4`` layout):

* **decode** (``M <= DECODE_MAX_M``): split-K. The grid is ``(R / bn, S)``: CTA ``(j, s)`` multiplies
  packed rows ``j*bn ..`` over the ``s``-th of ``S`` equal K chunks and writes an int32 partial; XLA adds
  the ``S`` partials (fused with the rest of the epilogue). ``S`` is chosen so that the grid fills the
  GPU's SMs (:func:`decode_config`), so a GEMV with few row blocks still runs on every SM. ``x`` is one
  tile (``bm = M`` rounded up to 8), so every packed byte is read from HBM exactly once.
* **prefill** (``M > DECODE_MAX_M``): 64-row ``x`` tiles over a grid in ``M``, ``S = 1``.

Transposed formulation: CTA ``(j, s, i)`` computes ``out_q^T [bn, bm] = C_q x^T`` for the four planes
``q`` of a ``rows4`` tile ``[bn = 64, bk]``: the code plane is the wgmma LHS (64 rows per warpgroup),
``x [bm, bk]`` the K-major RHS (wgmma N = bm, any multiple of 8, so M = 1 wastes little). Per K step
the packed tile (TMA-copied into swizzled SMEM) is loaded to registers, widened to int32 (Mosaic
rejects 8-bit arithmetic), split into the four 2-bit *codes* ``c = w + 1`` (0, 1, 2; the ``-1`` is
applied once at the end as ``- sum_k x``, which saves one op per weight), narrowed to int8 and stored
into one of two SMEM scratch slots; four int8 ``wgmma`` into int32 accumulators follow. With
``overlap`` the wgmma of step ``t`` stays in flight while step ``t + 1`` unpacks into the other slot
(``wgmma_wait(4)`` keeps only the current step's four groups pending, and the pipeline releases an
input slot one step late, ``delay_release=1``).

Interpret mode (CPU) runs the same kernel -- grid, split-K, pipeline, SMEM tiling and swizzle, slots
-- through the Mosaic GPU interpreter except for two things it does not model, isolated in
:func:`_load_tile` and :func:`_x_operand`: the packed tile is read with a plain load instead of the
``WGMMA_8BIT`` register layout, and ``x`` arrives pre-transposed ``[K, M]`` (a plain SMEM tile)
instead of through a transposed view of a tiled, swizzled tile (int8 wgmma needs a K-major RHS).
The hardware variant's block-index math (:func:`w_block`, :func:`x_block`) and SMEM swizzle are
checked by NumPy models in the tests. Unwritten output is INT32_MAX there (the poison).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels._tiling import (
    check_operands, divisor_at_most, entry_points, finish, num_cores, pad_operands, round_up,
)

DECODE_MAX_M = 16
WGMMA_GROUPS_PER_STEP = 4  # one wgmma (one commit group) per code plane


@dataclasses.dataclass(frozen=True)
class Config:
    """Tiles: ``bn`` packed rows (wgmma M), ``bm`` x rows (wgmma N), ``bk`` K per step, ``splits`` K chunks."""

    bn: int = 64
    bm: int = 64
    bk: int = 128
    steps: int = 3  # TMA pipeline depth
    splits: int = 1
    swizzle: int = 128
    overlap: bool = True  # double-buffered code scratch: wgmma of step t overlaps the unpack of t + 1


def decode_config(m: int, r: int, k: int, cores: int | None = None, *, bk: int = 128) -> Config:
    """Split-K decode tiles for ``m <= DECODE_MAX_M``: enough (row block, K chunk) CTAs for two per SM,
    with the int32 partials kept under half of the packed bytes they replace."""
    bm = round_up(m, 8)
    nk = round_up(k, bk) // bk
    row_blocks = round_up(r, 64) // 64
    wanted = -(-2 * (cores or num_cores()) // row_blocks)  # two CTAs per SM
    # int32 partials S * 4 * bn * bm * 4 bytes (L2-resident until XLA adds them) against the packed
    # bytes bn * K they replace: at most half, S <= K / (32 * bm)
    by_traffic = max(1, round_up(k, bk) // (32 * bm))
    return Config(bm=bm, bk=bk, steps=4, splits=divisor_at_most(nk, min(wanted, by_traffic)))


def prefill_config(m: int) -> Config:
    """Prefill tiles: 64-row ``x`` tiles, a 3-deep pipeline, no K split."""
    return Config(bm=64, steps=3)


def config_for(m: int, r: int, k: int) -> Config:
    """The decode config for ``m <= DECODE_MAX_M``, else the prefill config."""
    return decode_config(m, r, k) if m <= DECODE_MAX_M else prefill_config(m)


def _interpret_params():
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # private in jax 0.10

    # rows past R in the last packed-row block: TMA fills zeros on hardware, the interpreter its
    # poison; either way only output rows that are cut off again depend on them
    return InterpretGPUParams(out_of_bounds_reads="uninitialized")


def k_step(s, t, per_split: int):
    """Global K step of pipeline step ``t`` in K split ``s``."""
    return s * per_split + t


def w_block(j, s, t, per_split: int):
    """Block index of the packed tile ``[bn, bk]`` that CTA ``(j, s)`` reads at step ``t``."""
    return j, k_step(s, t, per_split)


def x_block(i, s, t, per_split: int, interpret: bool):
    """Block index of the ``x`` tile at step ``t``: ``[bm, bk]`` of ``x`` on hardware, ``[bk, bm]`` of
    ``x^T`` when interpreting (the same elements, transposed)."""
    return (k_step(s, t, per_split), i) if interpret else (i, k_step(s, t, per_split))


def _load_tile(w_smem, interpret: bool):
    """The packed tile in registers (the WGMMA_8BIT register layout on hardware)."""
    if interpret:
        return w_smem[...]
    return plgpu.load(w_smem, (), layout=plgpu.Layout.WGMMA_8BIT)


def _x_spec(cfg: Config, per_split: int, interpret: bool, transforms, delay: int):
    """BlockSpec of the ``x`` operand of split ``s`` and x tile ``i`` (plain ``[bk, bm]`` tiles of
    ``x^T`` when interpreting)."""
    shape = (cfg.bk, cfg.bm) if interpret else (cfg.bm, cfg.bk)
    transforms = () if interpret else transforms
    return lambda s, i: plgpu.BlockSpec(
        shape, lambda t: x_block(i, s, t, per_split, interpret), transforms=transforms, delay_release=delay
    )


def _x_operand(x_smem, interpret: bool):
    """The wgmma RHS ``[bk, bm]``: a transposed (K-major) view of the ``[bm, bk]`` tile on hardware."""
    return x_smem if interpret else plgpu.transpose_ref(x_smem, (1, 0))


def build_call(mp: int, rp: int, kp: int, cfg: Config, *, interpret: bool = False):
    """The raw kernel: (packed [Rp, Kp], x [Mp, Kp] int8 (``[Kp, Mp]`` when interpreting)) ->
    int32 partials ``[S, 4, Rp, Mp]`` of ``codes @ x^T`` (codes = w + 1)."""
    bn, bm, bk, splits = cfg.bn, cfg.bm, cfg.bk, cfg.splits
    tr = (plgpu.TilingTransform((8, bk)), plgpu.SwizzleTransform(cfg.swizzle))
    nk = kp // bk
    if nk % splits:
        raise ValueError(f"{splits} K splits do not divide {nk} K steps")
    per_split = nk // splits
    slots = 2 if cfg.overlap and per_split > 1 else 1
    delay = 1 if slots == 2 else 0
    depth = max(min(cfg.steps, per_split), delay + 1)
    x_spec = _x_spec(cfg, per_split, interpret, tr, delay)

    def kernel(w_gmem, x_gmem, o_gmem, o_smem, c_scr):
        j = lax.axis_index("n")
        s = lax.axis_index("s")
        i = lax.axis_index("m")

        def with_accs(*accs):
            def step(indices, w_smem, x_smem):
                slot = lax.rem(indices[0], slots) if slots > 1 else 0
                p = _load_tile(w_smem, interpret).astype(jnp.int32)
                for q in range(4):
                    c_scr[slot, q] = ((p >> (2 * q)) & 3).astype(jnp.int8)
                plgpu.commit_smem()
                xt = _x_operand(x_smem, interpret)
                for q in range(4):
                    plgpu.wgmma(accs[q], c_scr.at[slot, q], xt)
                plgpu.wgmma_wait(WGMMA_GROUPS_PER_STEP if slots > 1 else 0)

            w_spec = plgpu.BlockSpec((bn, bk), lambda t: w_block(j, s, t, per_split), transforms=tr, delay_release=delay)
            plgpu.emit_pipeline(step, grid=(per_split,), in_specs=[w_spec, x_spec(s, i)],
                                max_concurrent_steps=depth)(w_gmem, x_gmem)
            plgpu.wgmma_wait(0)
            for q in range(4):  # one plane at a time through a single [bn, bm] staging buffer
                o_smem[...] = accs[q][...]
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[s, q, pl.ds(j * bn, bn), pl.ds(i * bm, bm)])
                plgpu.wait_smem_to_gmem(0)

        pl.run_scoped(with_accs, *([plgpu.ACC((bn, bm), jnp.int32)] * 4))

    return plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((splits, 4, rp, mp), jnp.int32),
        grid=(rp // bn, splits, mp // bm),
        grid_names=("n", "s", "m"),
        scratch_types=[plgpu.SMEM((bn, bm), jnp.int32), plgpu.SMEM((slots, 4, bn, bk), jnp.int8, transforms=tr)],
        interpret=_interpret_params() if interpret else None,
    )


def padded_dims(m: int, r: int, k: int, cfg: Config) -> tuple[int, int, int]:
    """``(Mp, Rp, Kp)`` of the grid and output for ``cfg``. The packed weights are padded along K only
    (to ``Kp``); a last row block past ``R`` is read out of bounds (zero-filled by TMA), not copied."""
    return round_up(m, cfg.bm), round_up(r, cfg.bn), round_up(k, cfg.bk)


def _matmul(x: jax.Array, packed: jax.Array, cfg: Config | None, interpret: bool) -> jax.Array:
    check_operands(x, packed)
    (m, k), r = x.shape, packed.shape[0]
    cfg = cfg or config_for(m, r, k)
    mp, rp, kp = padded_dims(m, r, k, cfg)
    xp, wp = pad_operands(x, packed, mp, r, kp)
    out = build_call(mp, rp, kp, cfg, interpret=interpret)(wp, xp.T if interpret else xp)
    return finish(out, x, r, transposed=True)


# ternary_matmul(x, packed, interpret=False, cfg=None), decode(...), prefill(...): exact int32 x @ w.T
ternary_matmul, decode, prefill = entry_points(_matmul, decode_config, lambda m, r, k: prefill_config(m))


def illegal_variant(name: str):
    """A deliberately broken configuration the cuda lowering must reject (for the compile tests)."""
    bad = {
        "bad_tile": Config(bn=48),  # wgmma needs 64 LHS rows per warpgroup
        "bad_swizzle": Config(bk=96),  # a 96-byte row cannot use the 128-byte swizzle
        "bad_decode_tile": Config(bm=264, splits=2, steps=4),  # x tiles this wide overflow shared memory
    }[name]
    return jax.jit(lambda x, packed: _matmul(x, packed, bad, False))

