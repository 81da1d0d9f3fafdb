"""Benchmark the packed ternary matmul against a bf16 ``jnp.dot`` at 2B4T shapes; JSON to benchmarks/results/.

Reports per (backend, M, N, K): median time, GB/s on packed weight bytes, effective TOP/s
(2 M N K / t), and the speed-up over bf16 ``x @ w.T`` of the same shape on the same device. Every
kernel result is first checked exactly against the int64 NumPy reference (small M) so a fast wrong
kernel never gets reported. Usage::

    python scripts/bench_kernels.py                      # platform default backend, full shape list
    python scripts/bench_kernels.py --backend xla --m 1 8 --shapes 2560x2560 --iters 5   # quick CPU run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pallas_kernels  # noqa: E402
from pallas_kernels.reference import ternary_matmul_reference  # noqa: E402

# 2B4T: q/o 2560x2560, k/v 640x2560, gate/up 6912x2560, down 2560x6912; fused q|k|v and gate|up.
SHAPES = ["2560x2560", "640x2560", "6912x2560", "2560x6912", "3840x2560", "13824x2560"]
M_VALUES = [1, 8, 64, 512, 2048]


def _time(fn, *args, iters: int) -> float:
    """Median wall seconds of ``fn(*args)`` after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_one(backend: str, m: int, n: int, k: int, iters: int, rng: np.random.Generator) -> dict:
    """Time one shape; raises if the kernel is not exact."""
    w = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    kernel = pallas_kernels.get_kernel(backend)
    packed = kernel.pack(jnp.asarray(w))
    xj = jnp.asarray(x)
    kern = jax.jit(kernel.matmul)
    got = np.asarray(kern(xj, packed))
    rows = min(m, 8)
    if not np.array_equal(got[:rows], ternary_matmul_reference(x[:rows], w)):
        raise AssertionError(f"{backend} is not exact at M={m} N={n} K={k}")
    t = _time(kern, xj, packed, iters=iters)
    wb, xb = jnp.asarray(w, jnp.bfloat16), jnp.asarray(x, jnp.bfloat16)
    dense = jax.jit(lambda a, b: jnp.dot(a, b.T, preferred_element_type=jnp.float32))
    t_bf16 = _time(dense, xb, wb, iters=iters)
    return {
        "backend": backend, "M": m, "N": n, "K": k,
        "time_us": t * 1e6, "bf16_dot_time_us": t_bf16 * 1e6,
        "packed_GBps": packed.size * packed.dtype.itemsize / t / 1e9,
        "TOPs": 2 * m * n * k / t / 1e12, "speedup_vs_bf16": t_bf16 / t,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark grid and write one JSON file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default=None, help=f"one of {pallas_kernels.BACKENDS} (default: platform's)")
    ap.add_argument("--m", type=int, nargs="+", default=M_VALUES)
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="NxK strings")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--note", default="", help="free text stored in the JSON (machine load, etc.)")
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/kernels-<platform>-<date>.json)")
    a = ap.parse_args(argv)
    backend = pallas_kernels.select_kernel(a.backend).name
    device = jax.devices()[0]
    rng = np.random.default_rng(0)
    rows = []
    for shape in a.shapes:
        n, k = map(int, shape.lower().split("x"))
        for m in a.m:
            row = bench_one(backend, m, n, k, a.iters, rng)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "device": str(getattr(device, "device_kind", device.platform)),
        "platform": device.platform, "jax": jax.__version__, "backend": backend,
        "iters": a.iters, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(), "note": a.note, "results": rows,
    }
    out = Path(a.out) if a.out else Path(__file__).resolve().parents[1] / "benchmarks" / "results" / (
        f"kernels-{device.platform}-{backend}-{dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as f:
        json.dump(result, f, indent=1)
    os.replace(f.name, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
