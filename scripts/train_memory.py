#!/usr/bin/env python
"""Peak memory per device of one compiled train step, from ``compiled.memory_analysis()`` (compiled, not run).

``python scripts/train_memory.py [--config configs/train/finetune-2b4t-bf16.yaml] [--devices 8]
[--remat none nothing_saveable ...] [--seq-len 4096] [--out benchmarks/results/train_memory_2b4t_fsdp8.json]``

The step is the run config's (model preset, mesh, batch, grad accumulation, compute dtype) lowered
over abstract inputs on ``--devices`` simulated CPU devices and compiled once per remat policy; nothing
is allocated or run. Per device: ``argument`` (parameters, AdamW state, the batch), ``output``,
``alias`` (outputs that reuse donated inputs) and ``temp`` (everything XLA allocates inside the step:
activations kept for the backward pass, gathered weights, gradients). The peak is
``argument + output - alias + temp``. CPU compiles with CPU's fusion and scheduling choices, so GPU and
TPU figures differ somewhat; the activation share is what remat changes. The CPU compile uses XLA's
memory-minimizing scheduler (``--xla_cpu_enable_concurrency_optimized_scheduler=false``): CPU's
default, concurrency-optimized one keeps rematerialized values alive, so remat would show no saving.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
GB = 1e9
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def measure(cfg, remat: str) -> dict:
    """Compile the config's step with ``remat`` and read its memory analysis."""
    import dataclasses

    from bitnet_jax.parallel.rules import make_mesh
    from bitnet_jax.train.step import abstract_batch, abstract_state, make_optimizer, make_train_step

    cfg = dataclasses.replace(cfg, training=cfg.training.replace(remat=remat))
    model_cfg = cfg.model.replace(dtype=cfg.training.compute_dtype)
    mesh = make_mesh(cfg.mesh)
    tx = make_optimizer(cfg)
    t0 = time.perf_counter()
    lowered = make_train_step(cfg, model_cfg, tx, mesh).lower(abstract_state(cfg, model_cfg, tx, mesh),
                                                              abstract_batch(cfg, mesh))
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    sizes = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp",
                                                                   "generated_code")}
    peak = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
    return {"remat": remat, "compile_seconds": round(seconds, 1), "bytes_per_device": sizes,
            "peak_bytes_per_device": peak, "peak_gb_per_device": round(peak / GB, 2),
            "fits_80gb": peak < 80 * GB}


def main() -> int:
    """Measure each policy and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "train" / "finetune-2b4t-bf16.yaml"))
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--remat", nargs="+", default=["nothing_saveable", "none"])
    p.add_argument("--seq-len", type=int, default=None, help="override data.seq_len")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_memory_2b4t_fsdp8.json"))
    args = p.parse_args()
    # CPU's default scheduler orders for concurrency and keeps rematerialized values alive (remat then
    # saves nothing on CPU); the memory-minimizing scheduler is what GPU/TPU compilers approximate
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
                               f" {SCHEDULER_FLAG}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from bitnet_jax.config import load_config

    sets = list(args.set) + ([f"data.seq_len={args.seq_len}"] if args.seq_len else [])
    cfg = load_config(args.config, sets)
    t = cfg.training
    results = []
    for remat in args.remat:
        r = measure(cfg, remat)
        print(json.dumps(r), flush=True)
        results.append(r)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = {
        "what": "peak memory per device of one train step (compiled, not run), compiled.memory_analysis()",
        "config": str(Path(args.config).resolve().relative_to(ROOT)) if str(args.config).startswith(str(ROOT))
        else args.config,
        "overrides": sets,
        "model": cfg.model.to_dict(),
        "mesh": dict(make_mesh_shape(cfg)),
        "devices": args.devices,
        "seq_len": cfg.data.seq_len,
        "batch_size": t.batch_size,
        "grad_accum": t.grad_accum,
        "micro_batch_per_device": t.batch_size // t.grad_accum // args.devices,
        "compute_dtype": t.compute_dtype,
        "results": results,
        "platform": f"{jax.devices()[0].platform} ({args.devices} simulated devices)",
        "xla_flags": os.environ["XLA_FLAGS"].strip(),
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "git_commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


def make_mesh_shape(cfg):
    """The mesh axis sizes the config builds."""
    from bitnet_jax.parallel.rules import make_mesh

    return make_mesh(cfg.mesh).shape


if __name__ == "__main__":
    raise SystemExit(main())
