"""Compile/lower checks for the Pallas kernels without the accelerator (``python -m`` entry point).

``python -m pallas_kernels.compile_check tpu v5e:2x2 [--illegal VARIANT]`` compiles the TPU kernel
for a TPU topology through libtpu (run it in a subprocess: a Mosaic/LLVM abort kills the process);
``... cuda mosaic_gpu|triton [--illegal VARIANT]`` lowers a GPU kernel for ``cuda``. Exit status 0 and
``OK`` on success. ``--illegal`` swaps in a deliberately broken kernel variant that the check must
reject (see :data:`ILLEGAL`), proving each check can fail.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

# Shapes checked: a decode GEMV and a prefill GEMM at 2B4T sizes (N x K = 2560 x 2560, 640 x 2560).
SHAPES = ((1, 2560, 2560), (512, 640, 2560))


def _args(m: int, n: int, k: int):
    return jax.ShapeDtypeStruct((m, k), jnp.int8), jax.ShapeDtypeStruct((n // 4, k), jnp.uint8)


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

    return {"int8_arith": int8_arith, "bad_block": bad_block}[variant]


def check_tpu(topology: str, illegal: str | None) -> None:
    """Compile the TPU kernel (or an illegal variant) for ``topology`` via libtpu."""
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    from pallas_kernels import tpu

    topo = topologies.get_topology_desc(topology, "tpu")
    sharding = SingleDeviceSharding(topo.devices[0])
    for m, n, k in SHAPES:
        bm, bn, bk, mp, rp, kp = tpu.blocks(m, n // 4, k)
        kernel = tpu._kernel
        if illegal == "bad_block":  # a [bm, 100] output block breaks the (8, 128) tiling rule
            bn, rp = 100, 200
            kernel = _tpu_illegal_kernel(illegal)
        elif illegal:
            kernel = _tpu_illegal_kernel(illegal)
        call = tpu.build_call(mp, rp, kp, bm, bn, bk, kernel=kernel)
        x = jax.ShapeDtypeStruct((mp, kp), jnp.int8, sharding=sharding)
        w = jax.ShapeDtypeStruct((rp, kp), jnp.uint8, sharding=sharding)
        jax.jit(call).trace(x, w).lower(lowering_platforms=("tpu",)).compile()
        print(f"compiled tpu {topology} M={m} N={n} K={k} blocks=({bm},{bn},{bk})", flush=True)


def check_cuda(kernel_name: str, illegal: str | None) -> None:
    """Lower a GPU kernel (or an illegal variant) for ``cuda`` on this (CPU) machine."""
    from pallas_kernels.gpu import mosaic, triton

    module = {"mosaic_gpu": mosaic, "triton": triton}[kernel_name]
    for m, n, k in SHAPES:
        fn = module.illegal_variant(illegal) if illegal else module.ternary_matmul
        jax.jit(fn).trace(*_args(m, n, k)).lower(lowering_platforms=("cuda",)).as_text()
        print(f"lowered cuda {kernel_name} M={m} N={n} K={k}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run one check; exit 0 on success."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("platform", choices=("tpu", "cuda"))
    ap.add_argument("target", help="TPU topology (v5e:2x2) or GPU kernel (mosaic_gpu, triton)")
    ap.add_argument("--illegal", default=None, help="a deliberately broken variant to check")
    a = ap.parse_args(argv)
    if a.platform == "tpu":
        check_tpu(a.target, a.illegal)
    else:
        check_cuda(a.target, a.illegal)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
