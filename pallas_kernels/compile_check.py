"""Compile/lower checks for the Pallas kernels without the accelerator (``python -m`` entry point).

``python -m pallas_kernels.compile_check tpu v5e:2x2 [--illegal VARIANT]`` compiles the TPU kernels
(decode and prefill blocks at every 2B4T matmul shape) for a TPU topology through libtpu;
``... tpu-attention v5e:2x2`` compiles the TPU flash attention used for prompts;
``... cuda mosaic_gpu|triton [--illegal VARIANT]`` lowers a GPU kernel's decode and prefill paths for
``cuda``. Run each in a subprocess: a Mosaic/LLVM abort kills the process. Exit status 0 and ``OK``
on success. ``--illegal`` swaps in a deliberately broken variant that the check must reject (see
:data:`ILLEGAL`), proving each check can fail.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

# 2B4T matmuls (N x K): q/o, k/v, gate/up, down; M = 1 and 8 (decode tiles) and 512 (prefill tiles).
MODEL_SHAPES = ((2560, 2560), (640, 2560), (6912, 2560), (2560, 6912))
M_VALUES = (1, 8, 512)
SHAPES = tuple((m, n, k) for n, k in MODEL_SHAPES for m in M_VALUES)
ILLEGAL = {
    "tpu": ("int8_arith", "bad_block", "bad_decode_block"),
    "tpu-attention": ("short_block",),
    "mosaic_gpu": ("bad_tile", "bad_swizzle", "bad_decode_tile"),
    "triton": ("non_pow2_tile", "non_pow2_gemv"),
}
ATTENTION_T = (128, 1024)  # prompt lengths (power-of-two buckets) the TPU flash attention serves


def _args(m: int, n: int, k: int, sharding=None):
    return (jax.ShapeDtypeStruct((m, k), jnp.int8, sharding=sharding),
            jax.ShapeDtypeStruct((n // 4, k), jnp.uint8, sharding=sharding))


def _tpu_illegal_kernel(variant: str):
    from jax.experimental import pallas as pl

    def int8_arith(x_ref, w_ref, o_ref):  # 8-bit elementwise arithmetic: Mosaic rejects it
        p = w_ref[...]
        o_ref[0] = jax.lax.dot_general(
            x_ref[...] + x_ref[...], (p & 3).astype(jnp.int8), (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.int32,
        )

    def bad_block(x_ref, w_ref, o_ref):
        o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype) + pl.program_id(0)

    return {"int8_arith": int8_arith, "bad_block": bad_block, "bad_decode_block": None}[variant]


def _tpu_sharding(topology: str):
    """A single-device sharding on the first chip of a (virtual, libtpu-described) TPU topology."""
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    return SingleDeviceSharding(topologies.get_topology_desc(topology, "tpu").devices[0])


def check_tpu(topology: str, illegal: str | None) -> None:
    """Compile the TPU kernel's decode and prefill blocks (or an illegal variant) for ``topology``."""
    from pallas_kernels import tpu

    sharding = _tpu_sharding(topology)
    for m, n, k in SHAPES:
        cfg = tpu.config_for(m, n // 4, k)
        kernel = None
        if illegal == "bad_block":  # a [bm, 100] output block breaks the (8, 128) tiling rule
            cfg = tpu.Config(cfg.bm, 100, cfg.bk, cfg.mp, 200, cfg.kp, cfg.ck)
            kernel = _tpu_illegal_kernel(illegal)
        elif illegal == "bad_decode_block":  # decode blocks of 200 rows: neither 128-aligned nor full
            cfg = tpu.Config(cfg.bm, 200, cfg.bk, cfg.mp, 400, cfg.kp, cfg.ck)
        elif illegal:
            kernel = _tpu_illegal_kernel(illegal)
        call = tpu.build_call(cfg.mp, cfg.rp, cfg.kp, cfg.bm, cfg.bn, cfg.bk, kernel=kernel, ck=cfg.ck)
        jax.jit(call).trace(*_args(cfg.mp, 4 * cfg.rp, cfg.kp, sharding)).lower(lowering_platforms=("tpu",)).compile()
        print(f"compiled tpu {topology} M={m} N={n} K={k} {cfg}", flush=True)


def check_tpu_attention(topology: str, illegal: str | None) -> None:
    """Compile the TPU flash attention (20 query / 5 KV heads of 128, bf16) for prompt lengths."""
    from pallas_kernels.attention import tpu_flash_causal

    sharding = _tpu_sharding(topology)
    for t in (64,) if illegal == "short_block" else ATTENTION_T:  # 64 < the kernel's 128-row blocks
        q = jax.ShapeDtypeStruct((1, t, 20, 128), jnp.bfloat16, sharding=sharding)
        kv = jax.ShapeDtypeStruct((1, t, 5, 128), jnp.bfloat16, sharding=sharding)
        jax.jit(tpu_flash_causal).trace(q, kv, kv).lower(lowering_platforms=("tpu",)).compile()
        print(f"compiled tpu flash attention {topology} T={t}", flush=True)


def check_cuda(kernel_name: str, illegal: str | None) -> None:
    """Lower a GPU kernel's decode and prefill paths (or an illegal variant) for ``cuda`` on this machine."""
    from pallas_kernels.gpu import mosaic, triton

    module = {"mosaic_gpu": mosaic, "triton": triton}[kernel_name]
    for m, n, k in SHAPES:
        fn = module.illegal_variant(illegal) if illegal else (module.decode if m <= module.DECODE_MAX_M else module.prefill)
        jax.jit(fn).trace(*_args(m, n, k)).lower(lowering_platforms=("cuda",)).as_text()
        print(f"lowered cuda {kernel_name} M={m} N={n} K={k} {module.config_for(m, n // 4, k)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one check; exit 0 on success."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("platform", choices=("tpu", "tpu-attention", "cuda"))
    ap.add_argument("target", help="TPU topology (v5e:2x2) or GPU kernel (mosaic_gpu, triton)")
    ap.add_argument("--illegal", default=None, help="a deliberately broken variant to check")
    a = ap.parse_args(argv)
    family = a.target if a.platform == "cuda" else a.platform
    if a.illegal is not None and a.illegal not in ILLEGAL.get(family, ()):
        ap.error(f"--illegal for {family} is one of {ILLEGAL.get(family, ())}")
    {"tpu": check_tpu, "tpu-attention": check_tpu_attention, "cuda": check_cuda}[a.platform](a.target, a.illegal)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
