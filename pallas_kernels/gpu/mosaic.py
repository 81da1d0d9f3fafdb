"""GPU (Mosaic GPU, Hopper ``wgmma``) kernels: int8 tensor-core matmul with the unpack on chip.

One kernel body, two tile configurations picked by M (same ``rows4`` layout, so the choice is free
at call time): **decode** (M <= 64: the whole of ``x`` is one tile, so every packed byte is read from
HBM exactly once; deeper TMA pipeline for the memory-bound GEMV) and **prefill** (M > 64: 64-row
``x`` tiles over a grid in M, a 3-deep pipeline; four int32 [64, 64] accumulators fit in registers).

Transposed formulation: the CTA at grid point ``(j, i)`` computes ``out_q^T [bn, bm] = W_q x^T`` for
the four planes q of a ``rows4`` tile ``[bn = 64, bk = 128]``: the weight plane is the wgmma LHS
(M = 64 rows per warpgroup), ``x [bm, bk]`` the K-major RHS (wgmma N = bm, any multiple of 8, so a
decode step with M = 1 wastes little). Per K step the packed tile (TMA-copied to swizzled SMEM) is
loaded to registers, widened to int32 (Mosaic rejects 8-bit arithmetic), split into four planes,
narrowed to int8, stored to an SMEM scratch and fed to four int8 ``wgmma`` into int32 accumulators.
The result ``[4, R, M]`` is transposed by XLA (free for M = 1).

Interpret mode (CPU) runs the same body through the Mosaic GPU interpreter with layout-only details
removed, because the interpreter does not model them: no SMEM tiling/swizzle transforms, a plain
load instead of the WGMMA_8BIT-layout load, and ``x`` passed pre-transposed ``[K, M]`` instead of a
transposed SMEM view. Unwritten output is INT32_MAX there (the interpreter's poison).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels._tiling import assemble, check_operands, pad_operands, round_up

DECODE_MAX_M = 64


@dataclasses.dataclass(frozen=True)
class Config:
    """Tile sizes: ``bn`` packed rows (wgmma M), ``bm`` x rows (wgmma N), ``bk`` K per step."""

    bn: int = 64
    bm: int = 64
    bk: int = 128
    steps: int = 3  # TMA pipeline depth
    swizzle: int = 128


def config_for(m: int) -> Config:
    """The decode config for ``m <= DECODE_MAX_M``, else the prefill config."""
    if m <= DECODE_MAX_M:
        return Config(bm=round_up(m, 8), steps=4)
    return Config(bm=64, steps=3)


def _interpret_params():
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # private in jax 0.10

    return InterpretGPUParams()


def build_call(mp: int, rp: int, kp: int, cfg: Config, *, interpret: bool = False):
    """The raw kernel: (x [Mp, Kp] int8 (``[Kp, Mp]`` when interpreting), packed [Rp, Kp]) -> [4, Rp, Mp]."""
    bn, bm, bk = cfg.bn, cfg.bm, cfg.bk
    tr = () if interpret else (plgpu.TilingTransform((8, bk)), plgpu.SwizzleTransform(cfg.swizzle))
    nk = kp // bk

    def kernel(w_gmem, x_gmem, o_gmem, o_smem, w_scr):
        j = lax.axis_index("n")
        i = lax.axis_index("m")

        def with_accs(*accs):
            def step(_, w_smem, x_smem):
                if interpret:
                    p = w_smem[...]
                else:
                    p = plgpu.load(w_smem, (), layout=plgpu.Layout.WGMMA_8BIT)
                p = p.astype(jnp.int32)
                for q in range(4):
                    w_scr[q] = (((p >> (2 * q)) & 3) - 1).astype(jnp.int8)
                plgpu.commit_smem()
                xt = x_smem if interpret else plgpu.transpose_ref(x_smem, (1, 0))
                for q in range(4):
                    plgpu.wgmma(accs[q], w_scr.at[q], xt)
                plgpu.wgmma_wait(0)

            x_spec = (
                plgpu.BlockSpec((bk, bm), lambda k: (k, i))
                if interpret
                else plgpu.BlockSpec((bm, bk), lambda k: (i, k), transforms=tr)
            )
            plgpu.emit_pipeline(
                step,
                grid=(nk,),
                in_specs=[plgpu.BlockSpec((bn, bk), lambda k: (j, k), transforms=tr), x_spec],
                max_concurrent_steps=min(cfg.steps, nk),
            )(w_gmem, x_gmem)
            for q in range(4):  # one plane at a time through a single [bn, bm] staging buffer
                o_smem[...] = accs[q][...]
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[q, pl.ds(j * bn, bn), pl.ds(i * bm, bm)])
                plgpu.wait_smem_to_gmem(0)

        pl.run_scoped(with_accs, *([plgpu.ACC((bn, bm), jnp.int32)] * 4))

    return plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((4, rp, mp), jnp.int32),
        grid=(rp // bn, mp // bm),
        grid_names=("n", "m"),
        scratch_types=[plgpu.SMEM((bn, bm), jnp.int32), plgpu.SMEM((4, bn, bk), jnp.int8, transforms=tr)],
        interpret=_interpret_params() if interpret else None,
    )


def _matmul(x: jax.Array, packed: jax.Array, cfg: Config | None, interpret: bool) -> jax.Array:
    check_operands(x, packed)
    (m, k), r = x.shape, packed.shape[0]
    cfg = cfg or config_for(m)
    mp, rp, kp = round_up(m, cfg.bm), round_up(r, cfg.bn), round_up(k, cfg.bk)
    xp, wp = pad_operands(x, packed, mp, rp, kp)
    if interpret:
        xp = xp.T
    out = build_call(mp, rp, kp, cfg, interpret=interpret)(wp, xp)
    return assemble(out, m, r, transposed=True)


@functools.partial(jax.jit, static_argnames=("interpret",))
def ternary_matmul(x: jax.Array, packed: jax.Array, interpret: bool = False) -> jax.Array:
    """Exact int32 ``x @ w.T`` from int8 ``x [M, K]`` and ``rows4``-packed ``w`` (Hopper wgmma)."""
    return _matmul(x, packed, None, interpret)


def illegal_variant(name: str):
    """A deliberately broken configuration the cuda lowering must reject (for the compile tests)."""
    bad = {
        "bad_tile": Config(bn=48),  # wgmma needs 64 LHS rows per warpgroup
        "bad_swizzle": Config(bk=96),  # a 96-byte row cannot use the 128-byte swizzle
    }[name]
    return jax.jit(lambda x, packed: _matmul(x, packed, bad, False))
