"""Benchmark the packed ternary matmul against a bf16 ``jnp.dot`` at the shapes the 2B4T model runs;
JSON to benchmarks/results/.

Per (backend, M, N, K): the result checked exactly first (all of it against the ``xla`` kernel, 4 rows
against the int64 NumPy reference) so a fast wrong kernel is never reported; then device-side time
(:func:`pallas_kernels.timing.device_times`: the profiler's device events of the program, L2 flushed
between calls -- not per-call Python dispatch), the in-program time at decode sizes (distinct weight
copies in one program), GB/s of packed bytes, TOP/s (``2 M N K / t``), and the speed-up over a bf16
``x @ w.T`` of the same shape timed the same way, side by side. Usage::

    python scripts/bench_kernels.py                                # platform default backend
    python scripts/bench_kernels.py --backend all --m 1 8 128 512
    python scripts/bench_kernels.py --backend xla --m 1 8 --shapes 2560x2560 --calls 5   # quick CPU run

Shapes default to the model's matmuls: q/o 2560x2560, k/v 640x2560, gate/up 6912x2560, down 2560x6912.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pallas_kernels  # noqa: E402
from bench_results import cpu_model, git_commit, write_json  # noqa: E402
from pallas_kernels import timing  # noqa: E402
from pallas_kernels.reference import ternary_matmul_reference  # noqa: E402

MODEL_SHAPES = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]  # q/o, k/v, gate/up, down
M_VALUES = [1, 8, 128, 512]
COPY_BYTES = 256 << 20  # in-program timing: weight copies adding up to this (several times an L2)
MAX_COPIES = 32


def one_line(e: BaseException) -> str:
    """An exception as one line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def random_weight(key, n: int, k: int, kernel):
    """A random ternary ``[N, K]`` weight (made on the device) and its packing for ``kernel``."""
    w = jax.random.randint(key, (n, k), -1, 2, jnp.int8)
    return kernel.pack(w), w


def measure_backend(name: str, shapes, ms, *, calls: int = 20, copy_gbps: float | None = None,
                    time_left: Callable[[], float] = lambda: float("inf")) -> list[dict]:
    """Exactness, then device-side timing, of backend ``name`` at every (shape, M), bf16 dot alongside.

    The kernel is taken with ``guard=False``: a shape that does not compile is reported as an error
    instead of silently running the xla fallback. Shapes are skipped once ``time_left()`` is under 30 s.
    """
    xla = pallas_kernels.get_kernel("xla")
    kernel = pallas_kernels.get_kernel(name, interpret=False, guard=False)
    rows, programs = [], []
    key = jax.random.key(0)
    for n, k in shapes:
        if time_left() < 30:
            rows.append({"backend": name, "N": n, "K": k, "skipped": "time budget"})
            continue
        key, wkey = jax.random.split(key)
        packed, w = random_weight(wkey, n, k, kernel)
        packed_xla, w_host = xla.pack(w), np.asarray(w)
        dense = w.astype(jnp.bfloat16).T  # [K, N]: the bf16 peer computes x @ w.T
        copies = int(min(MAX_COPIES, max(2, -(-COPY_BYTES // packed.nbytes))))
        extra = [jax.random.randint(jax.random.fold_in(wkey, c), packed.codes.shape, 0, 256, jnp.int32).astype(jnp.uint8)
                 for c in range(copies - 1)]  # in-program timing only: any bytes will do
        for m in ms:
            key, xkey = jax.random.split(key)
            x = jax.random.randint(xkey, (m, k), -128, 128, jnp.int8)
            row = {"backend": name, "M": m, "N": n, "K": k, "packed_bytes": packed.nbytes}
            try:
                got = jax.block_until_ready(jax.jit(kernel.matmul)(x, packed))
            except Exception as e:  # noqa: BLE001 -- a backend that does not compile here is a result
                row["error"] = one_line(e)
                rows.append(row)
                continue
            ref_rows = min(m, 4)
            row["exact_vs_xla"] = bool(jnp.array_equal(got, jax.jit(xla.matmul)(x, packed_xla)))
            row["exact_vs_numpy_rows"] = bool(np.array_equal(
                np.asarray(got[:ref_rows]), ternary_matmul_reference(np.asarray(x[:ref_rows]), w_host)))

            def run(a, codes, packed=packed):
                return kernel.matmul(a, dataclasses.replace(packed, codes=codes))

            tag = f"{m}x{n}x{k}"
            programs += [(f"{name}_{tag}", run, [x, packed.codes]),
                         (f"bf16_{tag}", jnp.dot, [x.astype(jnp.bfloat16), dense])]
            if m <= 8:  # decode sizes, where per-call dispatch would dominate a wall-clock timing
                try:
                    row["inprogram"] = timing.inprogram_time(run, x, [packed.codes, *extra], name=f"rot_{name}_{tag}")
                except Exception as e:  # noqa: BLE001
                    row["inprogram"] = {"error": one_line(e)}
            rows.append(row)
        del extra
    timed = timing.device_times(programs, calls=calls) if programs else {}
    for row in rows:
        if "error" in row or "skipped" in row:
            continue
        m, n, k = row["M"], row["N"], row["K"]
        t, b = timed[f"{name}_{m}x{n}x{k}"], timed[f"bf16_{m}x{n}x{k}"]
        sec = t["time_us"] * 1e-6
        row.update(
            time_us=t["time_us"], time_source=t["source"], wall_us=t["wall_us"], bf16_dot_time_us=b["time_us"],
            packed_GBps=row["packed_bytes"] / sec / 1e9, TOPs=2 * m * n * k / sec / 1e12,
            speedup_vs_bf16=b["time_us"] / t["time_us"],
        )
        if copy_gbps:
            row["fraction_of_copy_bw"] = row["packed_GBps"] / copy_gbps
    return rows



def main(argv: list[str] | None = None) -> int:
    """Run the grid and write one JSON file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default=None, help=f"one of {pallas_kernels.BACKENDS}, or 'all' (default: platform's)")
    ap.add_argument("--m", type=int, nargs="+", default=M_VALUES)
    ap.add_argument("--shapes", nargs="+", default=None, help="NxK strings (default: the model's matmuls)")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per program")
    ap.add_argument("--copy-bandwidth", action="store_true", help="also measure the device copy bandwidth")
    ap.add_argument("--note", default="", help="free text stored in the JSON")
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/kernels-<platform>-<date>.json)")
    a = ap.parse_args(argv)
    plat = jax.default_backend()
    if a.backend == "all":
        backends = [b for b in pallas_kernels.BACKENDS if b != "cpu" or plat == "cpu"]
    else:
        backends = [pallas_kernels.select_kernel(a.backend).name]
    shapes = [tuple(map(int, s.lower().split("x"))) for s in a.shapes] if a.shapes else MODEL_SHAPES
    load_before = os.getloadavg()
    copy = timing.copy_bandwidth(1 << 30 if plat != "cpu" else 64 << 20) if a.copy_bandwidth else None
    rows = []
    for backend in backends:
        rows += measure_backend(backend, shapes, a.m, calls=a.calls, copy_gbps=copy and copy["GBps"])
    device = jax.devices()[0]
    result = {
        "device": str(getattr(device, "device_kind", device.platform)), "platform": plat, "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "jax": jax.__version__, "commit": git_commit(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "calls": a.calls, "note": a.note, "copy_bandwidth": copy, "results": rows,
    }
    out = Path(a.out) if a.out else Path(__file__).resolve().parents[1] / "benchmarks" / "results" / (
        f"kernels-{plat}-{'-'.join(backends)}-{dt.date.today().isoformat()}.json")
    write_json(out, result)
    for row in rows:
        print({k: row.get(k) for k in ("backend", "M", "N", "K", "time_us", "bf16_dot_time_us", "speedup_vs_bf16",
                                       "exact_vs_xla", "error")}, flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
