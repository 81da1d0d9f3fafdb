"""Benchmark CPU inference: whole-model decode and prefill tokens/s, resident memory, llama.cpp side by side.

Usage::

    python scripts/bench_cpu.py --json benchmarks/results/cpu_2b4t.json          # 2B4T shape, random weights
    python scripts/bench_cpu.py --head int8                                       # the quantized head
    python scripts/bench_cpu.py --model path/to/checkpoint --threads 2

Decode runs one jitted single-token step per token with a host sync after each (as llama.cpp's
``tg``); prefill is one jitted call over ``--prompt-len`` tokens that fills the KV cache and returns the
last token's logits (as ``pp``). Where ``llama-cpp-python`` is installed (the ``bench`` extra) and
``bitnet_jax.gguf_write`` is available, the same weights are exported as TQ2_0 GGUF and llama.cpp runs
them in the same process, interleaved with our runs, and the ratios are printed; otherwise the
llama.cpp keys are null and ``llamacpp_skipped`` says why. The bandwidth floor is the decode rate the
machine's memory read bandwidth allows for the bytes one token must read (weights + head + KV cache).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels
from bitnet_jax import head as head_lib
from bitnet_jax.checkpoint import checkpoint_to_params, random_checkpoint
from bitnet_jax.config import ModelConfig
from bitnet_jax.loading import read_checkpoint
from bitnet_jax.model import Transformer, init_cache

BANDWIDTH_GBS = (28.0, 33.0)  # this machine's memory read bandwidth, varying minute to minute


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps the loader's freed temporaries otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (the machine is shared: context for the numbers)."""
    return [round(v, 2) for v in os.getloadavg()]


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_params(ckpt: Any, backend: str, head: str, table_dtype: str) -> dict:
    """The packed parameter tree on device: kernel layout, head table in ``table_dtype`` or int8."""
    params = checkpoint_to_params(ckpt, backend)
    config = ckpt.config
    name = "embed_tokens" if config.tie_word_embeddings else "lm_head"
    if head == "int8":
        params = head_lib.quantize_head_params(params, config.tie_word_embeddings)
    else:
        params[name] = jnp.asarray(params[name], dtype=table_dtype)
    return jax.tree_util.tree_map(jnp.asarray, params)


def weight_bytes(params: dict) -> dict[str, int]:
    """Bytes of the packed ternary body, of the head table (+ scales), and in total."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    body = sum(v.nbytes for p, v in leaves if getattr(p[-1], "key", None) == "weight_packed")
    head = sum(v.nbytes for p, v in leaves if getattr(p[0], "key", None) in ("embed_tokens", "embed_scales", "lm_head", "lm_head_scales") and len(p) == 1)
    return {"body": int(body), "head": int(head), "total": int(sum(v.nbytes for _, v in leaves))}


def make_steps(config: ModelConfig, backend: str) -> tuple[Callable, Callable]:
    """Jitted prefill(params, tokens [1, T], cache) and decode(params, token [1, 1], pos [1, 1], cache)."""
    module = Transformer(config, packed=True, kernel_backend=backend)

    @jax.jit
    def prefill(params, tokens, cache):
        last = jnp.array([tokens.shape[1] - 1], jnp.int32)
        logits, cache = module.apply({"params": params}, tokens, None, cache, last)
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

    @jax.jit
    def decode(params, token, position, cache):
        logits, cache = module.apply({"params": params}, token, position, cache)
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

    return prefill, decode


class JaxRunner:
    """Our engine: prefill of a fixed prompt, then greedy decode one token at a time."""

    def __init__(self, config: ModelConfig, params: dict, backend: str, prompt: np.ndarray, decode_tokens: int):
        self.config, self.params, self.prompt, self.n = config, params, prompt, decode_tokens
        self.cache_len = len(prompt) + decode_tokens + 1
        self.prefill_fn, self.decode_fn = make_steps(config, backend)

    def prefill(self) -> tuple[float, Any, Any]:
        cache = init_cache(self.config, 1, self.cache_len)
        t0 = time.perf_counter()
        token, cache = self.prefill_fn(self.params, jnp.asarray(self.prompt[None, :]), cache)
        token.block_until_ready()
        return time.perf_counter() - t0, token, cache

    def decode(self) -> float:
        _, token, cache = self.prefill()
        pos = len(self.prompt)
        t0 = time.perf_counter()
        for i in range(self.n):
            token, cache = self.decode_fn(self.params, token[:, None], jnp.full((1, 1), pos + i, jnp.int32), cache)
            token.block_until_ready()
        return time.perf_counter() - t0


class LlamaCppRunner:
    """llama.cpp through llama-cpp-python on a TQ2_0 export of the same weights."""

    def __init__(self, gguf_path: Path, prompt: np.ndarray, decode_tokens: int, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(gguf_path), n_threads=threads, n_threads_batch=threads, n_ctx=len(prompt) + decode_tokens + 8,
            n_batch=len(prompt), verbose=False,
        )
        self.prompt, self.n = [int(t) for t in prompt], decode_tokens

    def prefill(self) -> float:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(self.prompt)
        return time.perf_counter() - t0

    def decode(self) -> float:
        self.prefill()
        t0 = time.perf_counter()
        for i in range(self.n):
            self.llm.eval([(self.prompt[-1] + i) % 1000])
        return time.perf_counter() - t0


def llamacpp_runner(ckpt: Any, prompt: np.ndarray, decode_tokens: int, threads: int, workdir: Path):
    """A :class:`LlamaCppRunner`, or the reason llama.cpp cannot run here (a string)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install '.[bench]'; it builds llama.cpp, ~11 min)"
    try:
        from bitnet_jax.gguf_write import write_gguf
    except ImportError:
        return "this bitnet-jax has no GGUF writer (bitnet_jax.gguf_write)"
    path = workdir / "model-tq2_0.gguf"
    try:
        write_gguf(ckpt.config, ckpt.tensors, ckpt.tokenizer, path, "tq2_0")
        return LlamaCppRunner(path, prompt, decode_tokens, threads)
    except Exception as e:  # noqa: BLE001 - report any export/load failure instead of aborting the bench
        return f"llama.cpp could not run the TQ2_0 export: {type(e).__name__}: {e}"


def main() -> None:
    """Parse arguments, build the model, run the interleaved benchmark, print and optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a checkpoint (HF directory or GGUF); default: random weights")
    p.add_argument("--preset", default="bitnet-b1.58-2b-4t", help="shape of the random model")
    p.add_argument("--head", choices=("exact", "int8"), default="exact")
    p.add_argument("--table-dtype", default=None, help="exact head table dtype (default: the model's dtype)")
    p.add_argument("--kernel-backend", default=None, help="ternary-matmul backend (default: the dispatcher's)")
    p.add_argument("--isa", default=None, help="force the CPU kernel's path: avx512vnni, avx2 or scalar")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp side-by-side run")
    p.add_argument("--json", type=Path, default=None, help="write the result record here")
    args = p.parse_args()

    os.environ["BITNET_JAX_CPU_THREADS"] = str(args.threads)
    backend = pallas_kernels.resolve_backend(args.kernel_backend)
    if args.isa:
        pallas_kernels.cpu.set_isa(args.isa)
    rss_start = rss_bytes()
    load_before = load_average()
    if args.model:
        ckpt = read_checkpoint(args.model)
    else:
        ckpt = random_checkpoint(ModelConfig.preset(args.preset), seed=0)
    config = ckpt.config
    table_dtype = args.table_dtype or config.dtype
    params = build_params(ckpt, backend, args.head, table_dtype)
    sizes = weight_bytes(params)
    prompt = np.random.default_rng(1).integers(0, config.vocab_size, args.prompt_len).astype(np.int32)

    runner = JaxRunner(config, params, backend, prompt, args.decode_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        llama = None if args.no_llamacpp else llamacpp_runner(ckpt, prompt, args.decode_tokens, args.threads, Path(tmp))
        del ckpt
        gc.collect()
        release_freed_memory()
        skipped = "--no-llamacpp" if args.no_llamacpp else (llama if isinstance(llama, str) else None)
        llama = None if isinstance(llama, str) else llama

        t0 = time.perf_counter()
        runner.prefill()  # compiles prefill
        runner.decode_fn(params, jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32),
                         init_cache(config, 1, runner.cache_len))[0].block_until_ready()  # compiles decode
        compile_s = time.perf_counter() - t0
        gc.collect()
        release_freed_memory()  # the compiler's freed working memory
        rss_model = rss_bytes()
        results: dict[str, list[float]] = {"pp": [], "tg": [], "llama_pp": [], "llama_tg": []}
        for _ in range(args.repeats):  # interleaved, so both engines see the same machine load
            results["pp"].append(runner.prefill()[0])
            if llama:
                results["llama_pp"].append(llama.prefill())
            results["tg"].append(runner.decode())
            if llama:
                results["llama_tg"].append(llama.decode())
        rss_end = rss_bytes()

    def rate(key: str, tokens: int) -> float | None:
        return round(tokens / min(results[key]), 2) if results[key] else None

    decode = rate("tg", args.decode_tokens)
    prefill = rate("pp", args.prompt_len)
    kv_bytes = 2 * config.num_hidden_layers * runner.cache_len * config.num_key_value_heads * config.head_size * jnp.dtype(config.dtype).itemsize
    token_bytes = sizes["body"] + sizes["head"] + kv_bytes
    floor = [round(bw * 1e9 / token_bytes, 2) for bw in BANDWIDTH_GBS]
    record: dict[str, Any] = {
        "decode_tok_s": decode,
        "prefill_tok_s": prefill,
        "llamacpp_decode_tok_s": rate("llama_tg", args.decode_tokens),
        "llamacpp_prefill_tok_s": rate("llama_pp", args.prompt_len),
        "llamacpp_skipped": skipped,
        "decode_tok_s_median": round(args.decode_tokens / float(np.median(results["tg"])), 2),
        "prefill_tok_s_median": round(args.prompt_len / float(np.median(results["pp"])), 2),
        "bytes_per_token": int(token_bytes),
        "bandwidth_floor_tok_s": floor,
        "bandwidth_floor_gbs": list(BANDWIDTH_GBS),
        "fraction_of_floor": [round(decode / f, 3) for f in floor],
        "effective_read_gbs": round(decode * token_bytes / 1e9, 2),
        "packed_body_bytes": sizes["body"],
        "head_bytes": sizes["head"],
        "param_bytes": sizes["total"],
        "rss_bytes": rss_end,
        "rss_before_model_bytes": rss_start,
        "rss_after_compile_bytes": rss_model,
        "rss_over_body_plus_head": round(rss_end / (sizes["body"] + sizes["head"]), 3),
        "rss_model_over_body_plus_head": round((rss_end - rss_start) / (sizes["body"] + sizes["head"]), 3),
        "compile_s": round(compile_s, 2),
        "settings": {
            "model": args.model or f"random {args.preset}",
            "head": args.head,
            "table_dtype": table_dtype if args.head == "exact" else "int8",
            "kernel_backend": backend,
            "isa": pallas_kernels.cpu.isa() if backend == "cpu" else None,
            "threads": args.threads,
            "prompt_len": args.prompt_len,
            "decode_tokens": args.decode_tokens,
            "repeats": args.repeats,
            "rates": "best of repeats; *_median: the median",
        },
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
    }
    if record["llamacpp_decode_tok_s"]:
        record["decode_ratio_vs_llamacpp"] = round(decode / record["llamacpp_decode_tok_s"], 3)
        record["prefill_ratio_vs_llamacpp"] = round(prefill / record["llamacpp_prefill_tok_s"], 3)
    print(json.dumps(record, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
