"""Benchmark generate(): compile time, time to first token, prefill and decode tokens/s (random weights).

Usage::

    python scripts/bench_generate.py --preset tiny --json benchmarks/results/generate_tiny_cpu.json
    python scripts/bench_generate.py --preset bitnet-b1.58-2b-4t --prompt-len 128 --new-tokens 4

Decode runs inside the jitted ``lax.while_loop`` (no host syncs); its rate is measured as
``(n - 1) / (t(n) - t(1))`` from two steady-state runs with ``n`` and ``1`` new tokens, so prefill and
sampling of the first token cancel out. Compile time is the first call minus a steady call.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np

import bitnet_jax as bj
from bitnet_jax.io import model_from_checkpoint, random_checkpoint
from bench_results import git_commit, write_json  # scripts/bench_results.py

gen = importlib.import_module("bitnet_jax.inference.generate")




def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(preset: str, batch: int, prompt_len: int, new_tokens: int, repeats: int, dtype: str | None) -> dict:
    """Measure one configuration and return the result record."""
    config = bj.ModelConfig.preset(preset)
    if dtype:
        config = config.replace(dtype=dtype)
    t0 = time.perf_counter()
    model = model_from_checkpoint(random_checkpoint(config, seed=0))
    init_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, config.vocab_size, prompt_len)) for _ in range(batch)]

    def call(n):
        return lambda: bj.generate(model, prompts, max_new_tokens=n, stop_tokens=())

    t0 = time.perf_counter()
    call(new_tokens)()
    first_call_s = time.perf_counter() - t0
    t_n = timed(call(new_tokens), repeats)
    compile_s = first_call_s - t_n
    call(1)()  # compiles nothing new when 1 and new_tokens share the output bucket
    t_1 = timed(call(1), repeats)
    decode_s = max(t_n - t_1, 1e-9)
    weight_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(model.params))
    return {
        "preset": preset,
        "dtype": config.dtype,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "init_s": round(init_s, 3),
        "compile_s": round(compile_s, 3),
        "time_to_first_token_s": round(t_1, 4),
        "prefill_tok_s": round(batch * prompt_len / t_1, 2),
        "decode_tok_s": round(batch * (new_tokens - 1) / decode_s, 2) if new_tokens > 1 else None,
        "generate_s": round(t_n, 4),
        "param_bytes": int(weight_bytes),
        "compiled_programs": gen._generate_loop._cache_size(),
    }


def main() -> None:
    """Parse arguments, run, print and optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--json", type=Path, default=None, help="write the result record here")
    args = p.parse_args()
    result = run(args.preset, args.batch, args.prompt_len, args.new_tokens, args.repeats, args.dtype)
    result.update(
        device=str(jax.devices()[0].device_kind),
        platform=jax.default_backend(),
        cpu=platform.processor() or platform.machine(),
        jax_version=jax.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=git_commit(),
    )
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
