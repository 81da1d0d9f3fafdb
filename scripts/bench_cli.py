"""Benchmark the command line as people start it, and what the GGUF embedding type does to greedy text.

Usage::

    python scripts/bench_cli.py                      # writes benchmarks/results/cli_startup.json

Start-up: wall time of ``bitnet-jax --help`` and of an argument error (no JAX import), then ``bitnet-jax
generate`` of the bundled model with an empty persistent compilation cache (first run), with the cache
warm (second and third runs: the ``<= 3 s`` target), and with ``--no-compile-cache``; each as the total wall
time and the time to the first byte of output (the prompt is echoed after the first token). Runs are
interleaved, repeated ``--repeats`` times, the median reported.

Embedding type: the bundled model converted to GGUF I2_S with ``--embed-type auto`` (the default: the
checkpoint's float32), ``f16`` and ``bf16``; greedy tokens of each compared token by token with the source
model's over ``--prompts`` prompts of ``--new-tokens`` tokens (the first differing position per prompt).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_results import cpu_model, git_commit, write_json  # scripts/bench_results.py

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "bitnet_jax.cli"]
PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:\n", "for i in range(10):", "def read_file(path):",
           "try:\n    import json", "    return self.", "if __name__ == '__main__':", "x = [i * i for i in",
           "def __init__(self, name):", "with open(path) as f:", "raise ValueError("]



def timed_run(args: list[str], env: dict[str, str]) -> dict[str, float]:
    """(wall seconds, seconds to the first stdout byte, exit code) of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tempfile.gettempdir())
    first = proc.stdout.read(1)
    t_first = time.perf_counter() - t0
    proc.communicate()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "first_byte_s": t_first if first else wall, "rc": proc.returncode}


def startup(repeats: int, new_tokens: int) -> dict:
    """The start-up timings (medians over ``repeats`` interleaved rounds)."""
    base = dict(os.environ, PYTHONUNBUFFERED="1")
    gen = ["generate", "def f(x):", "--max-new-tokens", str(new_tokens)]
    rows: dict[str, list[dict]] = {k: [] for k in ("help", "argument_error", "generate_first_cold_cache",
                                                     "generate_second_warm_cache", "generate_third_warm_cache",
                                                     "generate_no_cache")}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(base, BITNET_JAX_CACHE=str(Path(cache) / "xla"))
            rows["help"].append(timed_run([*CLI, "--help"], env))
            rows["argument_error"].append(timed_run([*CLI, "generate", "x", "--top-p", "2"], env))
            rows["generate_first_cold_cache"].append(timed_run([*CLI, *gen], env))
            rows["generate_second_warm_cache"].append(timed_run([*CLI, *gen], env))
            rows["generate_third_warm_cache"].append(timed_run([*CLI, *gen], env))
            rows["generate_no_cache"].append(timed_run([*CLI, "--no-compile-cache", *gen], env))
    out = {}
    for name, runs in rows.items():
        out[name] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "first_byte_s_median": statistics.median(r["first_byte_s"] for r in runs),
            "wall_s_all": [round(r["wall_s"], 3) for r in runs],
            "exit_codes": sorted({r["rc"] for r in runs}),
        }
    out["import_jax_s"] = timed_run([sys.executable, "-c", "import jax, jax.numpy"], base)["wall_s"]
    return out


def embed_agreement(n_prompts: int, new_tokens: int) -> dict:
    """Greedy token agreement of GGUF exports per ``--embed-type`` with the source model."""
    os.environ.setdefault("BITNET_JAX_CACHE", "off")
    import warnings

    import bitnet_jax as bj

    source = bj.from_pretrained(bj.DEFAULT_MODEL)
    prompts = PROMPTS[:n_prompts]
    ref = [bj.generate(source, [p], max_new_tokens=new_tokens, stop_tokens=())[0].tolist() for p in prompts]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for embed in ("auto", "f16", "bf16"):
            path = Path(tmp) / f"m-{embed}.gguf"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the I2_S row-alignment note for bitnet.cpp
                bj.save_pretrained(source, path, format="gguf", embed_type=embed)
            model = bj.from_pretrained(path)
            ours = [bj.generate(model, [p], max_new_tokens=new_tokens, stop_tokens=())[0].tolist() for p in prompts]
            first_diff = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None) for x, y in zip(ref, ours)]
            same = sum(a == b for x, y in zip(ref, ours) for a, b in zip(x, y))
            result[embed] = {
                "file_bytes": path.stat().st_size,
                "token_agreement": same / (len(prompts) * new_tokens),
                "prompts_identical": sum(d is None for d in first_diff),
                "first_differing_token": first_diff,
            }
    return {"prompts": len(prompts), "new_tokens": new_tokens, "quant": "i2_s", "by_embed_type": result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=16, help="generate's --max-new-tokens in the start-up runs")
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--agreement-tokens", type=int, default=64)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "cli_startup.json")
    args = p.parse_args()
    load_before = os.getloadavg()
    record = {"startup": startup(args.repeats, args.new_tokens)}
    record["embed_type"] = embed_agreement(args.prompts, args.agreement_tokens)
    import jax

    import bitnet_jax as bj

    record.update({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "bitnet_jax": bj.__version__,
        "target": "second generate (warm persistent cache) <= 3 s wall",
    })
    write_json(args.json, record)
    s = record["startup"]
    print(f"--help {s['help']['wall_s_median']:.2f} s; generate first {s['generate_first_cold_cache']['wall_s_median']:.2f}"
          f" s, second {s['generate_second_warm_cache']['wall_s_median']:.2f} s, no cache "
          f"{s['generate_no_cache']['wall_s_median']:.2f} s; wrote {args.json}")


if __name__ == "__main__":
    main()
