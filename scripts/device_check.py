"""One command for a lent GPU or TPU: is every ternary-matmul backend that compiles there exact, how fast
is it against a bf16 ``jnp.dot``, and how fast does a 2B4T-shape model decode; one JSON file.

Usage (on the device, from the repository root; about 4-5 minutes on one H100/H200 or TPU chip)::

    python scripts/device_check.py                    # JSON into benchmarks/results/
    python scripts/device_check.py --copy-to "$OUT"   # and a copy there
    python scripts/device_check.py --quick            # M = 1 and 512 only, one generate run

Sections, in order of importance, each skipped (and said so in the JSON) once ``--budget-s`` is spent:

1. environment (device, compute capability, SMs, jax/jaxlib, commit, date) and the two ceilings:
   device copy bandwidth (bytes read + written) and the bf16 matmul rate;
2. per backend (the platform's default first; ``guard=False`` so a compile failure is reported, not
   hidden by the xla fallback) and per 2B4T matmul shape and M in 1, 8, 128, 512: the output checked
   exactly (all of it against the ``xla`` kernel on the device, 4 rows against the int64 NumPy
   reference); device-side time (profiler events, L2 flushed between calls) and the in-program time
   (distinct weight copies in one program); GB/s of packed bytes, TFLOP/s, the share of the copy
   bandwidth, and the speed-up over a bf16 ``jnp.dot`` of the same shape timed the same way;
3. 2B4T-shape ``generate`` (random weights, batch 1): decode tokens/s with the default kernel, int8
   and exact head, and with the ``xla`` kernel;
4. the fused prompt attention (cuDNN / TPU flash) against the model's einsum attention;
5. split-K sweep of the GPU decode kernels at M = 1 (to choose the defaults from).

Targets (the issue): M=1 GEMV >= 80% of copy bandwidth on packed bytes, >= 4x bf16 ``jnp.dot`` at
13824x2560 (gate|up fused -- a target shape only, the model runs gate and up apart); batch-1 decode
>= 1500 tok/s. Needs jax with the accelerator plugin and flax/numpy/pyyaml (no checkpoint, no network).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import os
import platform
import re
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import pallas_kernels  # noqa: E402
from bench_kernels import MODEL_SHAPES, measure_backend, one_line, random_weight  # noqa: E402
from bench_results import git_commit, write_json  # noqa: E402
from bitnet_jax.errors import KernelFallbackWarning  # noqa: E402
from pallas_kernels import timing  # noqa: E402

TARGET_SHAPE = (13824, 2560)  # gate|up fused: the speed target (not a shape the model runs)
M_VALUES = [1, 8, 128, 512]


class Budget:
    """Seconds left of the run's budget; sections ask before they start."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def environment() -> dict:
    dev = jax.devices()[0]
    info = {
        "platform": dev.platform, "device_kind": getattr(dev, "device_kind", ""), "device_count": jax.device_count(),
        "compute_capability": str(getattr(dev, "compute_capability", "")), "core_count": getattr(dev, "core_count", None),
        "jax": jax.__version__, "jaxlib": getattr(importlib.import_module("jaxlib"), "__version__", ""),
        "python": platform.python_version(), "host": platform.node(), "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()), "default_backend": pallas_kernels.default_backend(),
        "commit": os.environ.get("BITNET_JAX_COMMIT") or git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["xla_backend_version"] = str(importlib.import_module("jax.extend.backend").get_backend().platform_version)
    except Exception as e:  # noqa: BLE001
        info["xla_backend_version"] = one_line(e)
    return info


def backends_for(plat: str) -> list[str]:
    """The platform's default backend first, then the other backends that may compile there."""
    default = pallas_kernels.default_backend(plat)
    others = {"gpu": ["mosaic_gpu", "triton", "xla"], "tpu": ["tpu", "xla"]}.get(plat, ["xla"])
    return [default] + [b for b in others if b != default]


def random_model(config, kernel, head: str):
    """A model of ``config``'s shape with random weights made on the device (packed codes valid ternary)."""
    from bitnet_jax import BitNetModel
    from bitnet_jax.model import Form, Transformer
    from bitnet_jax.parallel.rules import path_name
    from pallas_kernels import PackedWeight

    form = Form(kernel=kernel, head=head)
    shapes = jax.eval_shape(lambda: Transformer(config, form).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))
    pack = jax.jit(lambda key, n, k: kernel.pack(jax.random.randint(key, (n, k), -1, 2, jnp.int8)).codes,
                   static_argnums=(1, 2))

    def fill(path, leaf):
        name = path_name(path)
        key = jax.random.fold_in(jax.random.key(1), hash(name) % (2**31))
        if isinstance(leaf, PackedWeight):
            return dataclasses.replace(leaf, codes=pack(key, *leaf.shape))
        if name.endswith("weight_scale"):
            return jnp.float32(1.0 / np.sqrt(config.hidden_size))
        if name.endswith("norm/weight"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if leaf.dtype == jnp.int8:
            return jax.random.randint(key, leaf.shape, -127, 128, jnp.int8)
        if name.endswith("_scales"):
            return jnp.full(leaf.shape, 0.02 / 127, leaf.dtype)
        return (0.02 * jax.random.normal(key, leaf.shape, jnp.float32)).astype(leaf.dtype)

    params = jax.tree_util.tree_map_with_path(fill, shapes["params"], is_leaf=lambda x: isinstance(x, PackedWeight))
    return BitNetModel(config, params, form=form)


def decode_rate(model, prompt_len: int = 32) -> dict:
    """Batch-1 decode tokens/s: (n2 - n1) / (t(n2) - t(n1)) with n1, n2 in one output bucket (one
    compiled program), so prefill, dispatch and sampling of the first token cancel out."""
    from bitnet_jax import generate
    from bitnet_jax.inference.generate import MIN_CACHE_BUCKET, bucket

    n2 = min(250, model.config.max_position_embeddings - prompt_len)
    n1 = max(n2 - 120, bucket(prompt_len + n2, MIN_CACHE_BUCKET) // 2 + 1 - prompt_len)

    prompt = [int(t) for t in np.random.default_rng(0).integers(0, model.config.vocab_size, prompt_len)]
    t0 = time.perf_counter()
    generate(model, [prompt], max_new_tokens=n1, stop_tokens=())
    compile_s = time.perf_counter() - t0

    def best(n: int) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            generate(model, [prompt], max_new_tokens=n, stop_tokens=())
            times.append(time.perf_counter() - t)
        return min(times)

    t1, t2 = best(n1), best(n2)
    out = {"first_call_s": compile_s, "prompt_len": prompt_len, "new_tokens": [n1, n2], "t_s": [t1, t2]}
    if t2 > t1:
        out.update(decode_tok_s=(n2 - n1) / (t2 - t1), ms_per_token=(t2 - t1) / (n2 - n1) * 1e3)
    else:
        out["note"] = "t(n2) <= t(n1): timing noise larger than the decode time"
    return out


def generate_section(configs, budget: Budget, preset: str) -> list[dict]:
    from bitnet_jax import ModelConfig

    config = ModelConfig.preset(preset)
    out = []
    for kernel_name, head in configs:
        entry = {"kernel": kernel_name, "head": head, "dtype": config.dtype, "batch": 1}
        if budget.left() < 75:
            out.append({**entry, "skipped": "time budget"})
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", KernelFallbackWarning)
                kernel = pallas_kernels.select_kernel(kernel_name)
                model = random_model(config, kernel, head)
                entry.update(decode_rate(model))
                del model
            entry["fallbacks"] = [str(c.message)[:300] for c in caught if issubclass(c.category, KernelFallbackWarning)]
        except Exception as e:  # noqa: BLE001
            entry["error"] = one_line(e)
            entry["traceback"] = traceback.format_exc()[-2000:]
        out.append(entry)
        print(f"generate {kernel_name}/{head}: {entry.get('decode_tok_s', entry.get('error', entry.get('skipped')))}",
              flush=True)
    return out


def attention_section(plat: str) -> dict:
    """The fused prompt attention vs the model's einsum attention (2B4T heads, bf16, T = 1024)."""
    from bitnet_jax.model.transformer import attend
    from pallas_kernels import attention

    fused = {"gpu": attention.cudnn_causal, "tpu": attention.tpu_flash_causal}.get(plat)
    if fused is None:
        return {"skipped": f"no fused attention on {plat}"}
    t = 1024
    keys = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(keys[0], (1, t, 20, 128), jnp.bfloat16)
    k, v = (jax.random.normal(key, (1, t, 5, 128), jnp.bfloat16) for key in keys[1:])
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    result = {"T": t, "heads": 20, "kv_heads": 5, "head_dim": 128}
    try:
        got = jax.jit(fused)(q, k, v).reshape(1, t, -1).astype(jnp.float32)
        ref = jax.jit(attend)(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), pos)
        einsum = jax.jit(attend)(q, k, v, pos).astype(jnp.float32)
        norm = float(jnp.linalg.norm(ref))
        result["rel_err_fused_vs_f32"] = float(jnp.linalg.norm(got - ref)) / norm
        result["rel_err_einsum_bf16_vs_f32"] = float(jnp.linalg.norm(einsum - ref)) / norm
        times = timing.device_times([("attn_fused", fused, [q, k, v]), ("attn_einsum", attend, [q, k, v, pos])],
                                    calls=10, flush_bytes=0)
        result["fused_us"], result["einsum_us"] = times["attn_fused"]["time_us"], times["attn_einsum"]["time_us"]
        result["time_source"] = times["attn_fused"]["source"]
    except Exception as e:  # noqa: BLE001
        result["error"] = one_line(e)
    return result


def split_sweep(budget: Budget, calls: int) -> list[dict]:
    """M = 1 device time of the GPU decode kernels over their K-split count (defaults marked)."""
    from pallas_kernels.gpu import mosaic, triton

    rows, programs = [], []
    for n, k in [TARGET_SHAPE, (2560, 2560)]:
        r = n // 4
        packed, _ = random_weight(jax.random.key(n), n, k, pallas_kernels.get_kernel("xla"))
        x = jax.random.randint(jax.random.key(k), (1, k), -128, 128, jnp.int8)
        for module, base in ((mosaic, mosaic.decode_config(1, r, k)), (triton, triton.gemv_config(1, r, k))):
            steps = -(-k // base.bk)
            for s in sorted({d for d in (1, 2, 4, 5, 8, 10, 16, 20, 27, 40) if steps % d == 0} | {base.splits}):
                cfg = dataclasses.replace(base, splits=s)
                tag = f"sweep_{module.__name__.rsplit('.', 1)[-1]}_{n}x{k}_s{s}"
                fn = jax.jit(lambda a, c, cfg=cfg, module=module: module.ternary_matmul(a, c, cfg=cfg))
                try:
                    ok = bool(jnp.array_equal(fn(x, packed.codes), pallas_kernels.get_kernel("xla").matmul(x, packed)))
                except Exception as e:  # noqa: BLE001
                    rows.append({"tag": tag, "error": one_line(e)})
                    continue
                rows.append({"tag": tag, "kernel": module.__name__, "N": n, "K": k, "splits": s,
                             "default": s == base.splits, "exact": ok, "config": str(cfg)})
                programs.append((tag, fn, [x, packed.codes]))
        if budget.left() < 40:
            break
    timed = timing.device_times(programs, calls=calls) if programs else {}
    for row in rows:
        if row.get("tag") in timed:
            row["time_us"] = timed[row["tag"]]["time_us"]
            row["GBps"] = row["N"] * row["K"] / 4 / (row["time_us"] * 1e-6) / 1e9
    return rows


def summary(record: dict) -> str:
    lines = [f"device {record['env']['device_kind']} ({record['env']['platform']}), jax {record['env']['jax']}, "
             f"commit {record['env']['commit'][:12]}"]
    ceil = record.get("ceilings", {})
    if "copy" in ceil:
        lines.append(f"copy {ceil['copy'].get('GBps', 0):.0f} GB/s, bf16 matmul {ceil.get('matmul', {}).get('TFLOPs', 0):.0f} "
                     f"TFLOP/s")
    lines.append(f"{'backend':<11}{'M':>5}{'N x K':>12}{'us':>9}{'GB/s':>8}{'%copy':>7}{'x bf16':>8}  exact")
    for row in record.get("kernels", []):
        shape = f"{row['N']}x{row['K']}"
        if "error" in row or "skipped" in row:
            lines.append(f"{row['backend']:<11}{row.get('M', ''):>5}{shape:>12}  {row.get('error', row.get('skipped'))[:60]}")
            continue
        lines.append(f"{row['backend']:<11}{row['M']:>5}{shape:>12}{row['time_us']:>9.1f}{row['packed_GBps']:>8.0f}"
                     f"{100 * row.get('fraction_of_copy_bw', 0):>6.0f}%{row['speedup_vs_bf16']:>8.2f}  "
                     f"{row['exact_vs_xla'] and row['exact_vs_numpy_rows']}")
    for g in record.get("generate", []):
        what = f"{g['decode_tok_s']:.0f} tok/s" if "decode_tok_s" in g else g.get("error", g.get("skipped", g.get("note")))
        lines.append(f"generate {g['kernel']}/{g['head']}: {what}" + (f" ({len(g['fallbacks'])} xla fallbacks)"
                                                                      if g.get("fallbacks") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every section within the budget; write one JSON file (and a copy); print a summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=270.0, help="stop starting sections after this many seconds")
    ap.add_argument("--quick", action="store_true", help="M = 1 and 512 only, model shapes + target, one generate")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per program")
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/device-check-...json)")
    ap.add_argument("--copy-to", default=None, help="also copy the JSON into this directory (e.g. $OUT)")
    ap.add_argument("--shapes", nargs="+", default=None, help="NxK matmul shapes (default: 2B4T's and the target)")
    ap.add_argument("--m", type=int, nargs="+", default=None, help="activation rows (default 1 8 128 512)")
    ap.add_argument("--preset", default="bitnet-b1.58-2b-4t", help="model preset of the generate section")
    a = ap.parse_args(argv)
    budget = Budget(a.budget_s)
    t_start = time.monotonic()
    env = environment()
    plat = env["platform"]
    record: dict = {"kind": "device_check", "env": env, "notes": []}
    print(f"device check on {env['device_kind']} ({plat}), jax {env['jax']}", flush=True)
    try:
        record["ceilings"] = {"copy": timing.copy_bandwidth(1 << 30 if plat != "cpu" else 64 << 20),
                              "matmul": timing.matmul_peak(8192 if plat != "cpu" else 512)}
    except Exception as e:  # noqa: BLE001
        record["ceilings"] = {"error": one_line(e)}
    copy_gbps = record["ceilings"].get("copy", {}).get("GBps")
    ms = a.m or ([1, 512] if a.quick else M_VALUES)
    shapes = [tuple(map(int, s.lower().split("x"))) for s in a.shapes] if a.shapes else MODEL_SHAPES + [TARGET_SHAPE]
    backends = backends_for(plat)
    record["kernels"] = []
    sections = [("kernels", backends[0])]
    sections.append(("generate", [(backends[0], "int8")]))
    sections += [("kernels", b) for b in backends[1:]]
    if plat in ("gpu", "tpu"):
        sections.append(("attention", None))
    if plat == "gpu" and not a.quick:
        sections.append(("sweep", None))
    if not a.quick:
        sections.append(("generate", [(backends[0], "exact"), ("xla", "exact")]))
    slug = re.sub(r"[^a-z0-9]+", "-", env["device_kind"].lower()).strip("-") or plat
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"device-check-{plat}-{slug}-{dt.date.today()}.json"

    def save() -> None:  # after every section: a run cut short still leaves its results
        record["elapsed_s"] = time.monotonic() - t_start
        write_json(out, record)
        if a.copy_to:
            Path(a.copy_to).mkdir(parents=True, exist_ok=True)
            shutil.copy(out, Path(a.copy_to) / out.name)

    save()
    for kind, arg in sections:
        if budget.left() < 20:
            record["notes"].append(f"skipped {kind} {arg}: time budget")
            continue
        print(f"[{time.monotonic() - t_start:6.1f}s] {kind} {arg or ''}", flush=True)
        try:
            if kind == "kernels":
                record["kernels"] += measure_backend(arg, shapes, ms, calls=a.calls, copy_gbps=copy_gbps,
                                                     time_left=budget.left)
            elif kind == "generate":
                record.setdefault("generate", []).extend(generate_section(arg, budget, a.preset))
            elif kind == "attention":
                record["attention"] = attention_section(plat)
            else:
                record["split_sweep"] = split_sweep(budget, a.calls)
        except Exception as e:  # noqa: BLE001 -- keep going; the JSON says what broke
            record["notes"].append(f"{kind} {arg}: {one_line(e)}")
            record.setdefault("tracebacks", []).append(traceback.format_exc()[-3000:])
        save()
    print(summary(record))
    print(f"wrote {out} in {record['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
