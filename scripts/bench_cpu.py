"""Benchmark the public CPU path: ``bj.from_pretrained(gguf)`` -> ``bj.generate`` / ``generate_stream``,
the ``bitnet-jax generate`` CLI, llama.cpp (TQ2_0, llama-cpp-python) and bitnet.cpp (I2_S, its
``llama-bench``) on the same weights.

Usage::

    python scripts/bench_cpu.py --json benchmarks/results/cpu_public_2b4t.json     # 2B4T shape, random weights
    python scripts/bench_cpu.py --layers 4 --repeats 1                            # a quick iteration run
    python scripts/bench_cpu.py --gguf path/to/model-i2_s.gguf
    python scripts/bench_cpu.py --bitnet-cpp /tmp/bitnet_cpp/build/bin/llama-bench   # + bitnet.cpp

Without ``--gguf`` the script writes a random-weight I2_S GGUF of ``--preset`` (``--layers`` overrides
the depth) with a byte-level tokenizer into ``--workdir`` (reused when present) and converts it with
``bj.convert`` to TQ2_0 for llama.cpp: both engines read the same codes and scales (and the same BF16 embedding table). With ``--bitnet-cpp``
(a ``llama-bench`` built by ``scripts/build_bitnet_cpp.sh``) it also converts it to I2_S of GGUF arch
``bitnet`` for bitnet.cpp -- the same codes and scales in the same x86 I2_S byte layout -- because the
2024 bitnet.cpp that the mirrors hold (BitNet 4645960, llama.cpp fork 406a5036) knows arch ``bitnet``
only, not ``bitnet-b1.58``; a file already of arch ``bitnet`` is used as it is.

Every engine runs in a fresh process per repeat, interleaved (ours, the CLI, llama.cpp, bitnet.cpp, ours,
...), so each sees the same machine load. Ours first runs once with an empty packed-layout cache
(``bitnet_jax_cold``: load and first-token figures only); the repeats then find it filled (warm).
A process's figures:

* ``start_to_first_token_s``: from the parent's ``Popen`` to the first token of a 32-token prompt
  (ours: the first step of ``generate_stream``, what the CLI streams; llama.cpp: ``Llama(...)`` then
  ``eval(prompt)``); ``load_s``: ``from_pretrained`` / ``Llama(...)``;
* ``first_generate_s``: the first ``generate(prompt 32, max_new_tokens=64)`` (compile + run);
  ``one_token_s``: a ``max_new_tokens=1`` call afterwards, with ``programs`` the number of compiled
  ``generate`` programs after it (1 = it reused the 64-token program);
* ``decode_tok_s``: warm decode, ``63 / (t(64 new tokens) - t(1 new token))`` through ``generate``
  (greedy, no stop tokens); ``stream_decode_tok_s``: the same through ``generate_stream``;
  llama.cpp: 64 single-token ``eval`` calls after the prompt;
* ``prefill128_tok_s``: ``128 / t(generate(prompt of 128, max_new_tokens=1))`` (llama.cpp: ``eval`` of
  the 128 tokens);
* ``batch{4,8}_decode_tok_s``: aggregate decode tokens/s of ``generate`` over 4 / 8 rows (ours only);
* bitnet.cpp: ``llama-bench -p 128 -n 32 -r INNER -t THREADS`` in one process per repeat (after its own
  warm-up run): ``prefill128_tok_s`` the best pp128 sample, ``decode_tok_s`` the best tg32 sample (32
  tokens decoded from an empty context; ``*_avg_tok_s`` the means); its graph computes SiLU where 2B4T
  uses relu² (elementwise: no effect on speed), so its outputs are not the model's;
* CLI: ``process_s``, the whole ``bitnet-jax generate`` process, 64 new tokens (``start_to_first_output_s``
  is its first stdout byte, which can be the echoed prompt rather than the first token);
* memory: ``rss_bytes`` (VmRSS) at the end (after the batched runs and their programs),
  ``rss_single_stream_bytes`` after the single-row decode runs, ``peak_rss_load_bytes`` (VmHWM after
  loading) and ``rss_after_load_bytes``; ``model_bytes`` is the packed body + head as held in memory,
  ``head_screen_bytes`` the int8 screen of the head that greedy decoding reads instead of the table
  (``from_pretrained``'s default ``head_screen``), not counted in ``model_bytes``;
  ``cold_peak_load_over_final_rss`` is the cold run's load peak over its RSS after loading.

The head is the exact float head (``head: exact``) unless ``--head int8``. The figures reported are
medians over ``--repeats`` processes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench_cpu_step import byte_level_tokenizer, cpu_description, load_average, memory_status  # scripts/
from bench_results import git_commit, write_json

PROMPT_LEN = 32
PREFILL_LEN = 128
NEW_TOKENS = 64
BITNET_CPP_GEN = 32  # llama-bench -n
BATCHES = (4, 8)


def prompt_ids(vocab: int, length: int, row: int = 0) -> list[int]:
    """A fixed random prompt (seed 1 + row), the same for every engine."""
    return [int(t) for t in np.random.default_rng(1 + row).integers(0, min(vocab, 256), length)]


def make_ggufs(args: argparse.Namespace, bitnet_cpp: bool = False) -> tuple[Path, Path, Path | None]:
    """(I2_S GGUF, TQ2_0 GGUF, bitnet.cpp's I2_S GGUF or None) of the benchmarked weights; written once
    into ``--workdir``."""
    import jax.numpy as jnp

    import bitnet_jax as bj
    from bitnet_jax.config import ModelConfig
    from bitnet_jax.io import random_checkpoint
    from bitnet_jax.io.gguf_write import write_gguf

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.gguf:
        i2s = Path(args.gguf)
    else:
        cfg = ModelConfig.preset(args.preset)
        if args.layers:
            cfg = cfg.replace(num_hidden_layers=args.layers)
        i2s = work / f"{args.preset}-L{cfg.num_hidden_layers}-bf16embed-i2_s.gguf"
        if not i2s.exists():
            ckpt = random_checkpoint(cfg, seed=0)
            for name, value in ckpt.tensors.items():  # the real 2B4T's tables are bfloat16 values
                if not hasattr(value, "codes") and np.ndim(value) == 2:
                    ckpt.tensors[name] = np.asarray(value).astype(jnp.bfloat16).astype(np.float32)
            # the table as BF16, as the real model's is 16-bit: every engine's head reads 2 bytes a value
            write_gguf(cfg, ckpt.tensors, byte_level_tokenizer(), i2s, "i2_s", embed_type="bf16")
            del ckpt
    tq2 = work / (i2s.stem.removesuffix("-i2_s") + "-tq2_0.gguf")
    if not tq2.exists() and not args.no_llamacpp and not args.no_run:
        bj.convert(i2s, tq2, quant="tq2_0", arch="bitnet")  # upstream llama.cpp's BitNet graph
    bcpp = None
    if bitnet_cpp and not args.no_run:
        from bitnet_jax.io._gguf_file import open_gguf

        if open_gguf(i2s).metadata["general.architecture"] == "bitnet":
            bcpp = i2s
        else:
            bcpp = work / (i2s.stem.removesuffix("-i2_s") + "-bitnet-i2_s.gguf")
            if not bcpp.exists():
                with warnings.catch_warnings():  # relu² under arch bitnet: recorded as a caveat instead
                    warnings.simplefilter("ignore", UserWarning)
                    # 2024 bitnet.cpp reads the 128-weight x86 I2_S layout on x86 and ARM alike
                    bj.convert(i2s, bcpp, quant="i2_s", arch="bitnet", i2_s_layout="x86")
    return i2s, tq2, bcpp


def _now() -> float:
    return time.time()


def jax_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Our engine through the public API, in this (fresh) process."""
    t_import = _now()
    import jax

    import bitnet_jax as bj
    import importlib

    from bitnet_jax.model import head as head_lib

    gen_mod = importlib.import_module("bitnet_jax.inference.generate")

    t0 = _now()
    model = bj.from_pretrained(args.gguf_path, scan_layers={"auto": None, "on": True, "off": False}[args.scan_layers])
    jax.block_until_ready(model.params)
    out: dict[str, Any] = {"load_s": _now() - t0, "import_s": t0 - t_import}
    mem = memory_status()
    out["rss_after_load_bytes"], out["peak_rss_load_bytes"] = mem["rss"], mem["peak"]
    if args.head == "int8":
        model = bj.with_int8_head(model)
    leaves = jax.tree_util.tree_leaves(model.params)
    screen = [model.params[n] for n in head_lib.SCREEN_NAMES if n in model.params]
    out["head_screen_bytes"] = int(sum(x.nbytes for x in screen))  # greedy decoding's int8 screen of the head
    out["model_bytes"] = int(sum(x.nbytes for x in leaves)) - out["head_screen_bytes"]
    out["scan_layers"] = model.form.scan_layers
    vocab = model.config.vocab_size
    p32 = prompt_ids(vocab, PROMPT_LEN)
    kw = dict(stop_tokens=())

    t0 = _now()
    stream = bj.generate_stream(model, [p32], max_new_tokens=NEW_TOKENS, **kw)
    next(stream)
    out["first_token_abs"] = _now()
    out["first_token_s"] = out["first_token_abs"] - t0
    for _ in stream:
        pass
    out["first_stream_s"] = _now() - t0

    def timed(prompts, n) -> float:
        t = time.perf_counter()
        bj.generate(model, prompts, max_new_tokens=n, **kw)
        return time.perf_counter() - t

    out["first_generate_s"] = timed([p32], NEW_TOKENS)
    out["one_token_s"] = timed([p32], 1)
    out["programs"] = gen_mod._generate_loop._cache_size()
    if args.cold:  # the cold run: load and first-token figures only
        out["rss_bytes"] = memory_status()["rss"]
        return out

    reps = args.inner
    t64 = min(timed([p32], NEW_TOKENS) for _ in range(reps))
    t1 = min(timed([p32], 1) for _ in range(reps))
    out["decode_tok_s"] = (NEW_TOKENS - 1) / (t64 - t1)
    out["gen64_s"], out["gen1_s"] = t64, t1

    def stream_time() -> float:
        s = bj.generate_stream(model, [p32], max_new_tokens=NEW_TOKENS, **kw)
        next(s)
        t = time.perf_counter()
        n = sum(1 for _ in s)
        return n / (time.perf_counter() - t)

    out["stream_decode_tok_s"] = max(stream_time() for _ in range(reps))
    out["rss_single_stream_bytes"] = memory_status()["rss"]  # one row decoded: the model and one program
    p128 = prompt_ids(vocab, PREFILL_LEN)
    timed([p128], 1)  # compile the 128 bucket
    out["prefill128_tok_s"] = PREFILL_LEN / min(timed([p128], 1) for _ in range(reps))
    for b in BATCHES:
        rows = [prompt_ids(vocab, PROMPT_LEN, r) for r in range(b)]
        timed(rows, NEW_TOKENS)
        tb64 = min(timed(rows, NEW_TOKENS) for _ in range(reps))
        tb1 = min(timed(rows, 1) for _ in range(reps))
        out[f"batch{b}_decode_tok_s"] = b * (NEW_TOKENS - 1) / (tb64 - tb1)
    out["programs_end"] = gen_mod._generate_loop._cache_size()
    mem = memory_status()
    out["rss_bytes"], out["peak_rss_bytes"] = mem["rss"], mem["peak"]
    out["versions"] = {"jax": jax.__version__, "bitnet_jax": getattr(bj, "__version__", None)}
    import pallas_kernels.cpu as kcpu

    out["kernel_isa"] = kcpu.isa()
    return out


def llamacpp_worker(args: argparse.Namespace) -> dict[str, Any]:
    """llama.cpp (llama-cpp-python) on the TQ2_0 file, in this (fresh) process."""
    proto = os.dup(1)
    os.dup2(2, 1)  # llama.cpp prints to fd 1
    import llama_cpp

    t0 = _now()
    llm = llama_cpp.Llama(model_path=args.gguf_path, n_threads=args.threads, n_threads_batch=args.threads,
                          n_ctx=PREFILL_LEN + NEW_TOKENS + 16, n_batch=PREFILL_LEN, verbose=False)
    out: dict[str, Any] = {"load_s": _now() - t0}
    mem = memory_status()
    out["rss_after_load_bytes"], out["peak_rss_load_bytes"] = mem["rss"], mem["peak"]
    vocab = llm.n_vocab()
    p32 = prompt_ids(vocab, PROMPT_LEN)
    t0 = _now()
    llm.eval(p32)
    int(np.argmax(llm.scores[llm.n_tokens - 1]))
    out["first_token_abs"] = _now()
    out["first_token_s"] = out["first_token_abs"] - t0

    def decode() -> float:
        llm.reset()
        llm.eval(p32)
        t = time.perf_counter()
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        for _ in range(NEW_TOKENS - 1):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        return (NEW_TOKENS - 1) / (time.perf_counter() - t)

    def prefill() -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt_ids(vocab, PREFILL_LEN))
        return PREFILL_LEN / (time.perf_counter() - t)

    decode()
    out["decode_tok_s"] = max(decode() for _ in range(args.inner))
    out["prefill128_tok_s"] = max(prefill() for _ in range(args.inner))
    mem = memory_status()
    out["rss_bytes"], out["peak_rss_bytes"] = mem["rss"], mem["peak"]
    out["versions"] = {"llama_cpp_python": llama_cpp.__version__}
    out["system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    os.dup2(proto, 1)
    return out


def run_worker(args: argparse.Namespace, engine: str, path: Path, cold: bool = False) -> dict[str, Any]:
    """Run one engine's worker process; its figures, with ``start_to_first_token_s`` from the spawn."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--gguf-path", str(path),
           "--threads", str(args.threads), "--inner", str(args.inner), "--head", args.head]
    cmd += ["--scan-layers", args.scan_layers]
    if cold:
        cmd.append("--cold")
    t0 = _now()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["start_to_first_token_s"] = res.pop("first_token_abs") - t0
    res["process_s"] = _now() - t0
    return res


def run_cli(args: argparse.Namespace, path: Path, vocab: int) -> dict[str, Any]:
    """``bitnet-jax generate`` with a 32-token prompt, 64 new tokens: process wall time and first output."""
    exe = Path(sys.executable).with_name("bitnet-jax")
    text = bytes(prompt_ids(vocab, PROMPT_LEN)).decode("latin-1")  # the byte tokenizer: 1 token per byte
    text = "".join(c if c.isprintable() and c != "\x00" else "a" for c in text)
    cmd = [str(exe), "generate", "--model", str(path), "--max-new-tokens", str(NEW_TOKENS), text]
    t0 = _now()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(1)
    t_first = _now() - t0 if first else None
    proc.communicate(timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"CLI failed ({proc.returncode})")
    return {"start_to_first_output_s": t_first, "process_s": _now() - t0}


BITNET_CPP_CAVEATS = [
    "bitnet.cpp (2024 fork) runs GGUF arch 'bitnet', whose graph computes SiLU in the gated FFN where "
    "2B4T uses relu2: an elementwise op, no effect on speed, but its outputs are not this model's",
    "same weights: codes and scales identical to the other engines' files, x86 I2_S layout, tied head "
    "(token_embd BF16 in every engine's file, as the bench writes it; the official 2B4T file stores "
    "it F16: the same 2 bytes a value)",
    "llama-bench figures: best of -r samples after its warm-up; tg32 decodes 32 tokens from an empty "
    "context (ours and llama.cpp's decode after a 32-token prompt); KV cache F16 (its default)",
]


def parse_llama_bench(text: str) -> dict[str, Any]:
    """pp128 / tg32 tokens/s from ``llama-bench -o json`` output (a JSON list, one object per test)."""
    start = text.find("[")
    if start < 0:
        raise ValueError("no JSON list in llama-bench output")
    tests = json.loads(text[start:])
    out: dict[str, Any] = {}
    for t in tests:
        if t.get("n_prompt") == PREFILL_LEN and not t.get("n_gen"):
            key = "prefill128"
        elif t.get("n_gen") == BITNET_CPP_GEN and not t.get("n_prompt"):
            key = "decode"
        else:
            continue
        samples = [float(v) for v in t.get("samples_ts") or [t["avg_ts"]]]
        out[f"{key}_tok_s"] = max(samples)
        out[f"{key}_avg_tok_s"] = float(t["avg_ts"])
        out[f"{key}_samples_tok_s"] = samples
        out.setdefault("model_type", t.get("model_type"))
        out.setdefault("model_size", t.get("model_size"))
        out.setdefault("n_threads", t.get("n_threads"))
        out.setdefault("cpu_info", t.get("cpu_info"))
    if "prefill128_tok_s" not in out or "decode_tok_s" not in out:
        raise ValueError(f"llama-bench output lacks the pp{PREFILL_LEN} / tg{BITNET_CPP_GEN} tests")
    return out


def bitnet_cpp_command(args: argparse.Namespace, path: Path) -> list[str]:
    """bitnet.cpp's ``llama-bench`` command line on ``path``."""
    return [str(Path(args.bitnet_cpp).resolve()), "-m", str(path), "-p", str(PREFILL_LEN),
            "-n", str(BITNET_CPP_GEN), "-t", str(args.threads), "-r", str(args.inner), "-o", "json"]


def run_bitnet_cpp(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    """One ``llama-bench`` process of bitnet.cpp on ``path``: pp128 and tg32 tokens/s."""
    cmd = bitnet_cpp_command(args, path)
    t0 = _now()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"bitnet.cpp llama-bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = parse_llama_bench(proc.stdout)
    res["process_s"] = _now() - t0
    return res


def bitnet_cpp_version(args: argparse.Namespace) -> dict[str, Any] | None:
    """The build record of ``scripts/build_bitnet_cpp.sh`` (BUILD_DIR/bitnet_cpp_version.json next to
    BUILD_DIR/bin/llama-bench, or ``--bitnet-cpp-version``), None when there is none."""
    path = (Path(args.bitnet_cpp_version) if args.bitnet_cpp_version
            else Path(args.bitnet_cpp).resolve().parent.parent / "bitnet_cpp_version.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(vals), 4) if vals else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", help="an I2_S GGUF to benchmark (default: random weights of --preset)")
    p.add_argument("--preset", default="bitnet-b1.58-2b-4t")
    p.add_argument("--layers", type=int, default=0, help="override the preset's depth (quick runs)")
    p.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_cpu"))
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per engine")
    p.add_argument("--inner", type=int, default=3, help="timed runs per figure inside a process (best of)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--head", choices=("exact", "int8"), default="exact")
    p.add_argument("--scan-layers", choices=("auto", "on", "off"), default="auto",
                   help="from_pretrained's scan_layers: auto (its default: None), on (True), off (False)")
    p.add_argument("--no-llamacpp", action="store_true")
    p.add_argument("--no-cli", action="store_true")
    p.add_argument("--bitnet-cpp", help="bitnet.cpp's built llama-bench (skipped when absent), e.g. from "
                   "scripts/build_bitnet_cpp.sh SRC BUILD: BUILD/bin/llama-bench")
    p.add_argument("--bitnet-cpp-version", help="bitnet.cpp's build record (default: "
                   "bitnet_cpp_version.json in the directory above llama-bench's)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-run", action="store_true", help="only write the I2_S GGUF")
    p.add_argument("--worker", choices=("jax", "llamacpp"), help=argparse.SUPPRESS)
    p.add_argument("--gguf-path", help=argparse.SUPPRESS)
    p.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    """Run the engines interleaved, print and optionally write the medians."""
    args = parse_args()
    if args.worker:
        res = (jax_worker if args.worker == "jax" else llamacpp_worker)(args)
        sys.stdout.write(json.dumps(res) + "\n")
        return
    if not args.bitnet_cpp:
        bitnet_skip = "not built (pass --bitnet-cpp PATH to llama-bench)"
    elif not Path(args.bitnet_cpp).exists():
        bitnet_skip = f"not built ({args.bitnet_cpp} does not exist; see scripts/build_bitnet_cpp.sh)"
    else:
        bitnet_skip = None
    i2s, tq2, bcpp = make_ggufs(args, bitnet_cpp=bitnet_skip is None)
    if args.no_run:
        return
    from bitnet_jax.io._gguf_file import open_gguf

    meta = open_gguf(i2s)
    vocab = meta.tensors["token_embd.weight"].dims[1]
    layers = meta.metadata[f"{meta.metadata['general.architecture']}.block_count"]
    llama_skip = None
    if args.no_llamacpp:
        llama_skip = "--no-llamacpp"
    else:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            llama_skip = "llama-cpp-python is not installed"
    runs: dict[str, list[dict]] = {"bitnet_jax": [], "cli": [], "llamacpp": [], "bitnet_cpp": []}
    load = [load_average()]
    cache = Path(args.workdir) / "packed-cache"  # the packed-layout cache: empty for the first (cold) run
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["BITNET_JAX_PACKED_CACHE"] = str(cache)
    cold = None
    for rep in range(args.repeats + 1):
        if rep == 0:
            cold = run_worker(args, "jax", i2s, cold=True)
            print("bitnet_jax cold", json.dumps(cold), flush=True)
            continue
        runs["bitnet_jax"].append(run_worker(args, "jax", i2s))
        print("bitnet_jax", rep, json.dumps(runs["bitnet_jax"][-1]), flush=True)
        if not args.no_cli:
            runs["cli"].append(run_cli(args, i2s, vocab))
            print("cli", rep, runs["cli"][-1], flush=True)
        if llama_skip is None:
            runs["llamacpp"].append(run_worker(args, "llamacpp", tq2))
            print("llamacpp", rep, json.dumps(runs["llamacpp"][-1]), flush=True)
        if bitnet_skip is None:
            runs["bitnet_cpp"].append(run_bitnet_cpp(args, bcpp))
            print("bitnet_cpp", rep, json.dumps(runs["bitnet_cpp"][-1]), flush=True)
        load.append(load_average())
    keys = sorted({k for rs in runs.values() for r in rs for k, v in r.items()
                   if isinstance(v, (int, float))})
    summary = {eng: {k: median(rs, k) for k in keys if any(k in r for r in rs)} for eng, rs in runs.items() if rs}
    ours, peer, bitnet_cpp = summary["bitnet_jax"], summary.get("llamacpp", {}), summary.get("bitnet_cpp", {})

    def ratio(key: str, other: dict | None = None) -> float | None:
        other = peer if other is None else other
        return round(ours[key] / other[key], 3) if ours.get(key) and other.get(key) else None

    record = {
        "benchmark": "cpu_public_path",
        "definitions": __doc__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "cpu": cpu_description(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": load,
        "threads": args.threads,
        "head": args.head,
        "scan_layers": args.scan_layers,
        "model": {"gguf": i2s.name, "gguf_bytes": i2s.stat().st_size, "layers": layers, "vocab": vocab,
                  "preset": None if args.gguf else args.preset, "weights": "random" if not args.gguf else "file"},
        "repeats": args.repeats,
        "inner": args.inner,
        "packed_cache": "cold run: empty packed-layout cache (first load decodes and repacks the GGUF); "
                        "runs/summary: warm cache",
        "bitnet_jax_cold": cold,
        "summary": summary,
        "ratios_vs_llamacpp": {k: ratio(k) for k in ("decode_tok_s", "prefill128_tok_s", "load_s")},
        "ratios_vs_bitnet_cpp": {"decode_vs_bitnet_cpp": ratio("decode_tok_s", bitnet_cpp),
                                 "prefill128_vs_bitnet_cpp": ratio("prefill128_tok_s", bitnet_cpp)},
        "start_to_first_token_over_llamacpp": (round(ours["start_to_first_token_s"] / peer["start_to_first_token_s"], 3)
                                               if peer.get("start_to_first_token_s") else None),
        "rss_over_model_bytes": round(ours["rss_bytes"] / ours["model_bytes"], 3),
        "head_screen_bytes": ours["head_screen_bytes"],
        "rss_single_stream_over_model_plus_screen_bytes": round(
            ours["rss_single_stream_bytes"] / (ours["model_bytes"] + ours["head_screen_bytes"]), 3),
        "rss_single_stream_over_model_bytes": round(ours["rss_single_stream_bytes"] / ours["model_bytes"], 3),
        "peak_load_over_final_rss": round(ours["peak_rss_load_bytes"] / ours["rss_after_load_bytes"], 3),
        "cold_peak_load_over_final_rss": (round(cold["peak_rss_load_bytes"] / cold["rss_after_load_bytes"], 3)
                                          if cold else None),
        "llamacpp_skipped": llama_skip,
        "bitnet_cpp_skipped": bitnet_skip,
        "bitnet_cpp": None if bitnet_skip else {
            "llama_bench": str(Path(args.bitnet_cpp).resolve()), "gguf": bcpp.name, "gguf_arch": "bitnet",
            "command": " ".join(["llama-bench", *bitnet_cpp_command(args, Path(bcpp.name))[1:]]),
            "version": bitnet_cpp_version(args), "caveats": BITNET_CPP_CAVEATS},
        "runs": runs,
    }
    print(json.dumps({"summary": summary, "ratios": record["ratios_vs_llamacpp"],
                      "ratios_bitnet_cpp": record["ratios_vs_bitnet_cpp"]}, indent=1))
    if args.json:
        write_json(Path(args.json), record)


if __name__ == "__main__":
    main()
