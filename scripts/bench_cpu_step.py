"""Benchmark the hand-built CPU step (a jitted decode step, exact cache, donated buffers) against llama.cpp.

Usage::

    python scripts/bench_cpu_step.py --json benchmarks/results/cpu_2b4t.json          # 2B4T shape, random weights
    python scripts/bench_cpu_step.py --head int8                                       # the quantized head
    python scripts/bench_cpu_step.py --model path/to/checkpoint --threads 2

Decode runs one jitted single-token step per token with a host sync after each (as llama.cpp's
``tg``); prefill is one jitted call over ``--prompt-len`` tokens that fills the KV cache and returns the
last token's logits (as ``pp``). Both steps update the KV cache in place (donated), as llama.cpp does.
The model runs with ``scan_layers`` (one compiled layer body over stacked weights, read in place by
the kernel; about 4 MB less compiled code per layer); ``--unrolled`` compiles every layer on its own.

llama.cpp: where ``llama-cpp-python`` is installed (the ``bench`` extra), a worker process (this
script with ``--llamacpp-worker``) builds the same checkpoint (same seed, or the same ``--model``),
exports it as TQ2_0 GGUF and loads it in llama.cpp. This process interleaves its runs with the
worker's, repeat by repeat with a short pause between engines, so both see the same machine load;
the separate process keeps the two engines' memory and thread pools apart. Without llama.cpp the
``llamacpp_*`` keys are null and ``llamacpp_skipped`` says why.

Memory: ``rss_baseline_bytes`` is this process's resident set once JAX's CPU runtime and the kernel
extension are initialised, before the checkpoint is read. ``rss_model_bytes`` is the growth from there
to the end of the run (model loaded, prefill and decode compiled, all runs done): the memory the model
costs, compared with ``rss_target`` x (packed body + head) in ``rss_model_over_body_plus_head``.
``rss_over_body_plus_head`` divides the whole resident set (Python and JAX included) instead.

The bandwidth floor is the decode rate the machine's memory read bandwidth allows for the bytes one
token must read (weights + head + KV cache). The bandwidth is measured in the same run, before and
after the timed runs (``--threads`` threads each taking the max of their share of a 1 GiB array;
it varies minute to minute), and ``fraction_of_floor`` compares the decode rate with both floors.
"""

from __future__ import annotations

import argparse
import ctypes
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
from bitnet_jax.config import ModelConfig
from bitnet_jax.io import Checkpoint, model_from_checkpoint, random_checkpoint, read_checkpoint
from bitnet_jax.io.loading import release_host_memory
from bitnet_jax.model import BitNetModel, Form, Transformer, init_cache, with_int8_head
from bitnet_jax.parallel.rules import path_name
from bench_results import git_commit, write_json  # scripts/bench_results.py

BANDWIDTH_REFERENCE_GBS = (28.0, 33.0)  # the facts sheet's read bandwidth for this machine type
BANDWIDTH_PROBE_BYTES = 1 << 30
RSS_TARGET = 1.1  # the target: resident memory <= 1.1 x (packed weights + head)
ENGINE_PAUSE_S = 0.3  # between the two engines' runs: lets the other engine's spinning threads go idle
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def memory_status() -> dict[str, int]:
    """Resident (total, anonymous, file-backed) and peak resident bytes of this process."""
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in keys:
                out[keys[name]] = int(value.split()[0]) * 1024
    return out


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return memory_status()["rss"]


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark (VmHWM) from the current resident set, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def settle_memory() -> int:
    """Collect garbage, return freed heap pages to the OS, and give the resident set size."""
    gc.collect()
    release_host_memory()
    return rss_bytes()


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (the machine is shared: context for the numbers)."""
    return [round(v, 2) for v in os.getloadavg()]


def cpu_description() -> dict[str, Any]:
    """CPU model name, the SIMD flags that matter for the kernels, core count and memory size."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    return {"model": name, "flags": [f for f in wanted if f in flags], "count": os.cpu_count(), "memory_bytes": mem}


def measure_read_bandwidth(threads: int, nbytes: int = BANDWIDTH_PROBE_BYTES, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: ``threads`` threads each reduce (max) their share of an array.

    NumPy's uint8 max is vectorised and releases the GIL, so the threads run in parallel and the
    reduction is bound by memory reads. Best of ``repeats``; the array is freed before returning.
    """
    import threading

    data = np.ones(nbytes, np.uint8)
    parts = np.array_split(data, threads)
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=np.max, args=(part,)) for part in parts]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t0)
    del data, parts
    return round(nbytes / best / 1e9, 2)




def set_mmap_threshold(nbytes: int) -> None:
    """Fix glibc's mmap threshold: blocks this large get their own mapping and go back to the OS when freed."""
    try:
        if not ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, int(nbytes)):
            raise SystemExit(f"--mmap-threshold {nbytes}: glibc rejected the value")
    except AttributeError:
        raise SystemExit("--mmap-threshold needs glibc") from None


def make_checkpoint(args: argparse.Namespace) -> Checkpoint:
    """The benchmarked checkpoint: ``--model``, or random weights of ``--preset`` (seed 0)."""
    if args.model:
        return read_checkpoint(args.model)
    return random_checkpoint(ModelConfig.preset(args.preset), seed=0)


def make_prompt(config: ModelConfig, length: int) -> np.ndarray:
    """The benchmark prompt: ``length`` random token ids (seed 1), the same for both engines."""
    return np.random.default_rng(1).integers(0, config.vocab_size, length).astype(np.int32)


def weight_bytes(params: dict) -> dict[str, int]:
    """Bytes of the packed ternary body, of the head table (+ scales), and in total."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    body = sum(v.nbytes for p, v in leaves if path_name(p).endswith("weight_packed/codes"))
    head_names = ("embed_tokens", "embed_scales", "lm_head", "lm_head_scales")
    head = sum(v.nbytes for p, v in leaves if len(p) == 1 and getattr(p[0], "key", None) in head_names)
    return {"body": int(body), "head": int(head), "total": int(sum(v.nbytes for _, v in leaves))}


def make_steps(config: ModelConfig, form: Form) -> tuple[Callable, Callable]:
    """Jitted prefill(params, tokens [1, T], cache) and decode(params, token [1, 1], pos [1, 1], cache).

    Both return the greedy next token as ``[1, 1]`` and the updated cache; the cache argument is
    donated, so the cache is updated in place instead of copied every token.
    """
    module = Transformer(config, form)

    def prefill(params, tokens, cache):
        last = jnp.array([tokens.shape[1] - 1], jnp.int32)
        logits, cache = module.apply({"params": params}, tokens, None, cache, last)
        return jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32), cache

    def decode(params, token, position, cache):
        logits, cache = module.apply({"params": params}, token, position, cache)
        return jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32), cache

    return jax.jit(prefill, donate_argnums=2), jax.jit(decode, donate_argnums=3)


class JaxRunner:
    """Our engine: prefill of a fixed prompt, then greedy decode one token at a time."""

    def __init__(self, model: BitNetModel, prompt: np.ndarray, decode_tokens: int):
        self.config, self.params, self.n = model.config, model.params, decode_tokens
        self.prompt = jnp.asarray(prompt[None, :])
        self.cache_len = len(prompt) + decode_tokens + 1
        self.positions = [jnp.full((1, 1), len(prompt) + i, jnp.int32) for i in range(decode_tokens)]
        self.scan_layers = model.form.scan_layers
        self.prefill_fn, self.decode_fn = make_steps(model.config, model.form)

    def prefill(self) -> tuple[float, Any, Any]:
        """(seconds, next token, cache) of one prefill over the prompt into a fresh cache."""
        cache = init_cache(self.config, 1, self.cache_len, stacked=self.scan_layers)
        t0 = time.perf_counter()
        token, cache = self.prefill_fn(self.params, self.prompt, cache)
        token.block_until_ready()
        return time.perf_counter() - t0, token, cache

    def decode(self) -> float:
        """Seconds for ``decode_tokens`` greedy steps after a (untimed) prefill."""
        _, token, cache = self.prefill()
        t0 = time.perf_counter()
        for position in self.positions:
            token, cache = self.decode_fn(self.params, token, position, cache)
            token.block_until_ready()
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------
# llama.cpp, in a worker process


def byte_level_tokenizer() -> Any:
    """A Llama 3-style byte-level BPE (the 256 byte tokens and one merge) that llama.cpp accepts.

    Speed does not depend on the vocabulary (both engines are fed token ids), but llama.cpp refuses a
    GGUF file without one, or with no merges; the writer pads it with unused tokens up to the model's
    vocabulary.
    """
    from tokenizers import pre_tokenizers

    from bitnet_jax.io.tokenizer import tokenizer_from_gguf_metadata

    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": sorted(pre_tokenizers.ByteLevel.alphabet()) + ["\u0120\u0120"],
        "tokenizer.ggml.merges": ["\u0120 \u0120"],  # two spaces
    }
    return tokenizer_from_gguf_metadata(meta, "bench_cpu byte-level tokenizer")


def llamacpp_worker(args: argparse.Namespace) -> None:
    """The worker: export the checkpoint as TQ2_0, load it in llama.cpp, then time runs on request.

    Protocol: one JSON object per line. The worker first answers ``{"ready": ...}`` (or
    ``{"error": ...}``), then answers each ``{"cmd": "prefill" | "decode"}`` with ``{"seconds": s}``
    until ``{"cmd": "quit"}`` or end of input.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # llama.cpp prints to fd 1: keep that out of the protocol
    os.dup2(2, 1)

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    try:
        import llama_cpp

        from bitnet_jax.io.gguf_write import write_gguf

        with tempfile.TemporaryDirectory(prefix="bench_cpu_") as tmp:
            ckpt = make_checkpoint(args)
            prompt = [int(t) for t in make_prompt(ckpt.config, args.prompt_len)]
            path = write_gguf(ckpt.config, ckpt.tensors, byte_level_tokenizer(), Path(tmp) / "model-tq2_0.gguf", "tq2_0")
            del ckpt
            rss_before = settle_memory()
            llm = llama_cpp.Llama(
                model_path=str(path), n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=len(prompt) + args.decode_tokens + 8, n_batch=len(prompt), verbose=bool(os.environ.get("BENCH_CPU_LLAMA_VERBOSE")),
            )

            def prefill() -> float:
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(prompt)
                return time.perf_counter() - t0

            def decode() -> float:
                prefill()
                t0 = time.perf_counter()
                for i in range(args.decode_tokens):
                    llm.eval([(prompt[-1] + i) % llm.n_vocab()])
                return time.perf_counter() - t0

            decode()  # warm-up
            send({
                "ready": True, "gguf_bytes": path.stat().st_size, "version": llama_cpp.__version__,
                "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
                "rss_bytes": rss_bytes(), "rss_model_bytes": rss_bytes() - rss_before,
            })
            for line in sys.stdin:
                cmd = json.loads(line).get("cmd")
                if cmd == "quit":
                    break
                send({"seconds": prefill() if cmd == "prefill" else decode()})
            send({"rss_bytes": rss_bytes()})
    except Exception as e:  # noqa: BLE001 - report any export/load failure to the parent
        send({"error": f"{type(e).__name__}: {e}"})


class LlamaCppWorker:
    """The parent's handle on :func:`llamacpp_worker`: start it, then time prefill/decode runs in it."""

    def __init__(self, args: argparse.Namespace, log_path: Path):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--llamacpp-worker", "--threads", str(args.threads),
               "--prompt-len", str(args.prompt_len), "--decode-tokens", str(args.decode_tokens), "--preset", args.preset]
        if args.model:
            cmd += ["--model", args.model]
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.info: dict = {}

    def _receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the llama.cpp worker exited ({self.proc.returncode}); its log ends:\n{tail}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(msg["error"])
        return msg

    def wait_ready(self) -> dict:
        """Block until the worker has loaded the model; its ``ready`` message."""
        self.info = self._receive()
        return self.info

    def run(self, cmd: str) -> float:
        """Seconds of one ``prefill`` or ``decode`` run in the worker."""
        self.proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
        self.proc.stdin.flush()
        return self._receive()["seconds"]

    def close(self) -> dict:
        """Stop the worker; its last message (final resident set) if it sent one."""
        last: dict = {}
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                last = self._receive()
        except (OSError, RuntimeError, ValueError):
            pass
        finally:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()
        return last


def start_llamacpp(args: argparse.Namespace, workdir: Path) -> LlamaCppWorker | str:
    """A started :class:`LlamaCppWorker`, or the reason llama.cpp cannot run here (a string)."""
    if args.no_llamacpp:
        return "--no-llamacpp"
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install '.[bench]'; it builds llama.cpp, ~11 min)"
    try:
        from bitnet_jax.io.gguf_write import write_gguf  # noqa: F401
    except ImportError:
        return "this bitnet-jax has no GGUF writer (bitnet_jax.io.gguf_write)"
    return LlamaCppWorker(args, workdir / "llamacpp-worker.log")


# ---------------------------------------------------------------------------------------------------


def load_model(args: argparse.Namespace, kernel: pallas_kernels.Kernel) -> BitNetModel:
    """The packed model as the library loads it, with the requested head; host copies freed."""
    model = model_from_checkpoint(make_checkpoint(args), kernel, args.scan_layers)  # the checkpoint is freed on return
    if args.head == "int8":
        model = with_int8_head(model)
    elif args.table_dtype:
        name = "embed_tokens" if model.config.tie_word_embeddings else "lm_head"
        model.params[name] = model.params[name].astype(args.table_dtype)
    settle_memory()
    return model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
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
    p.add_argument("--unrolled", dest="scan_layers", action="store_false",
                   help="compile every layer on its own (default: scan_layers, one compiled layer body)")
    p.add_argument("--mmap-threshold", type=int, default=None,
                   help="fix glibc's mmap threshold (bytes) before loading, as MALLOC_MMAP_THRESHOLD_ would")
    p.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp side-by-side run")
    p.add_argument("--json", type=Path, default=None, help="write the result record here")
    p.add_argument("--llamacpp-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("threads", "prompt_len", "decode_tokens", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.head == "int8" and args.table_dtype:
        p.error("--table-dtype applies to the exact head only")
    return args


def main() -> None:
    """Parse arguments, build the model, run the interleaved benchmark, print and optionally write JSON."""
    args = parse_args()
    if args.llamacpp_worker:
        llamacpp_worker(args)
        return
    os.environ["BITNET_JAX_CPU_THREADS"] = str(args.threads)
    if args.mmap_threshold is not None:
        set_mmap_threshold(args.mmap_threshold)
    kernel = pallas_kernels.select_kernel(args.kernel_backend)
    backend = kernel.name
    if args.isa:
        pallas_kernels.cpu.set_isa(args.isa)
    jnp.zeros(8).block_until_ready()  # JAX's CPU runtime is up: the baseline excludes only the model
    load_before = load_average()
    bandwidth = [measure_read_bandwidth(args.threads)]
    reset_peak_rss()  # the probe's array is gone: the peak from here on is the model's
    rss_baseline = settle_memory()

    with tempfile.TemporaryDirectory(prefix="bench_cpu_") as tmp:
        llama = start_llamacpp(args, Path(tmp))  # exports and loads while we load
        t0 = time.perf_counter()
        model = load_model(args, kernel)
        load_s = time.perf_counter() - t0
        peak_load = memory_status()["peak"]
        rss_loaded = rss_bytes()
        config = model.config
        sizes = weight_bytes(model.params)
        prompt = make_prompt(config, args.prompt_len)
        runner = JaxRunner(model, prompt, args.decode_tokens)
        del model

        skipped, llama_info = None, {}
        if isinstance(llama, str):
            skipped, llama = llama, None
        else:
            try:
                llama_info = llama.wait_ready()
            except RuntimeError as e:
                skipped = f"llama.cpp could not run the TQ2_0 export: {e}"
                llama.close()
                llama = None

        t0 = time.perf_counter()
        runner.prefill()  # compiles prefill
        runner.decode_fn(runner.params, jnp.zeros((1, 1), jnp.int32), runner.positions[0],
                         init_cache(config, 1, runner.cache_len, stacked=runner.scan_layers))[0].block_until_ready()  # compiles decode
        compile_s = time.perf_counter() - t0
        rss_compiled = settle_memory()
        runner.decode()  # warm-up, untimed
        load_runs = load_average()

        results: dict[str, list[float]] = {"pp": [], "tg": [], "llama_pp": [], "llama_tg": []}
        for _ in range(args.repeats):  # interleaved, so both engines see the same machine load
            results["pp"].append(runner.prefill()[0])
            if llama:
                time.sleep(ENGINE_PAUSE_S)
                results["llama_pp"].append(llama.run("prefill"))
                time.sleep(ENGINE_PAUSE_S)
            results["tg"].append(runner.decode())
            if llama:
                time.sleep(ENGINE_PAUSE_S)
                results["llama_tg"].append(llama.run("decode"))
                time.sleep(ENGINE_PAUSE_S)
        rss_end = settle_memory()
        llama_end = llama.close() if llama else {}
    bandwidth.append(measure_read_bandwidth(args.threads))

    def rate(key: str, tokens: int) -> float | None:
        return round(tokens / min(results[key]), 2) if results[key] else None

    def median_rate(key: str, tokens: int) -> float | None:
        return round(tokens / float(np.median(results[key])), 2) if results[key] else None

    decode = rate("tg", args.decode_tokens)
    prefill = rate("pp", args.prompt_len)
    kv_bytes = 2 * config.num_hidden_layers * runner.cache_len * config.num_key_value_heads * config.head_size * jnp.dtype(config.dtype).itemsize
    token_bytes = sizes["body"] + sizes["head"] + kv_bytes
    bandwidth = sorted(bandwidth)
    floor = [round(bw * 1e9 / token_bytes, 2) for bw in bandwidth]
    weights = sizes["body"] + sizes["head"]
    model_rss = rss_end - rss_baseline
    record: dict[str, Any] = {
        "decode_tok_s": decode,
        "prefill_tok_s": prefill,
        "llamacpp_decode_tok_s": rate("llama_tg", args.decode_tokens),
        "llamacpp_prefill_tok_s": rate("llama_pp", args.prompt_len),
        "decode_ratio_vs_llamacpp": None,
        "prefill_ratio_vs_llamacpp": None,
        "llamacpp_skipped": skipped,
        "decode_tok_s_median": median_rate("tg", args.decode_tokens),
        "prefill_tok_s_median": median_rate("pp", args.prompt_len),
        "llamacpp_decode_tok_s_median": median_rate("llama_tg", args.decode_tokens),
        "llamacpp_prefill_tok_s_median": median_rate("llama_pp", args.prompt_len),
        "runs_s": {k: [round(v, 4) for v in vals] for k, vals in results.items()},
        "bytes_per_token": int(token_bytes),
        "bandwidth_floor_tok_s": floor,
        "bandwidth_floor_gbs": bandwidth,
        "bandwidth_reference_gbs": list(BANDWIDTH_REFERENCE_GBS),
        "fraction_of_floor": [round(decode / f, 3) for f in floor],
        "effective_read_gbs": round(decode * token_bytes / 1e9, 2),
        "packed_body_bytes": sizes["body"],
        "head_bytes": sizes["head"],
        "body_plus_head_bytes": weights,
        "param_bytes": sizes["total"],
        "rss_target": RSS_TARGET,
        "rss_model_bytes": model_rss,
        "rss_model_over_body_plus_head": round(model_rss / weights, 3),
        "rss_target_met": model_rss <= RSS_TARGET * weights,
        "rss_model_over_target_bytes": int(model_rss - RSS_TARGET * weights),
        "rss_bytes": rss_end,
        "rss_over_body_plus_head": round(rss_end / weights, 3),
        "rss_baseline_bytes": rss_baseline,
        "rss_after_load_bytes": rss_loaded,
        "rss_after_compile_bytes": rss_compiled,
        "rss_peak_bytes": peak_load,
        "rss_breakdown_bytes": {
            "baseline (python, jax runtime, kernel extension)": rss_baseline,
            "parameters (all leaves)": sizes["total"],
            "load residue (after load - baseline - parameters)": rss_loaded - rss_baseline - sizes["total"],
            "compile (prefill + decode executables, jax caches)": rss_compiled - rss_loaded,
            "runs (KV caches, runtime buffers, lazily built code)": rss_end - rss_compiled,
        },
        "rss_definition": (
            "rss_model_bytes = resident set at the end (model loaded, both steps compiled, all runs done) minus "
            "rss_baseline_bytes (python + jax CPU runtime + kernel extension, before the checkpoint is read); "
            "rss_model_over_body_plus_head compares it with packed_body_bytes + head_bytes (target <= rss_target); "
            "rss_over_body_plus_head divides the whole resident set instead; rss_peak_bytes is the high-water mark "
            "(reached while loading). Resident sets are measured after gc + malloc_trim."
        ),
        "llamacpp_rss_model_bytes": llama_info.get("rss_model_bytes"),
        "llamacpp_rss_bytes": llama_end.get("rss_bytes", llama_info.get("rss_bytes")),
        "llamacpp_gguf_bytes": llama_info.get("gguf_bytes"),
        "load_s": round(load_s, 2),
        "compile_s": round(compile_s, 2),
        "settings": {
            "model": args.model or f"random {args.preset} (seed 0)",
            "shape": {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                      "num_attention_heads", "num_key_value_heads", "vocab_size",
                                                      "tie_word_embeddings", "dtype")},
            "head": args.head,
            "scan_layers": args.scan_layers,
            "table_dtype": str(runner.params["embed_tokens" if config.tie_word_embeddings else "lm_head"].dtype),
            "kernel_backend": backend,
            "isa": pallas_kernels.cpu.isa() if backend == "cpu" else None,
            "threads": args.threads,
            "prompt_len": args.prompt_len,
            "decode_tokens": args.decode_tokens,
            "repeats": args.repeats,
            "mmap_threshold": args.mmap_threshold,
            "llamacpp": {"format": "TQ2_0 (same weights, F16 embedding)", "threads": args.threads,
                         "version": llama_info.get("version"), "system_info": llama_info.get("system_info")},
            "rates": "best of repeats; *_median: the median; engines interleaved repeat by repeat",
        },
        "load_average_before": load_before,
        "load_average_at_runs": load_runs,
        "load_average_after": load_average(),
        "cpu": cpu_description(),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(__import__("jaxlib"), "__version__", None),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
    }
    if record["llamacpp_decode_tok_s"]:
        record["decode_ratio_vs_llamacpp"] = round(decode / record["llamacpp_decode_tok_s"], 3)
        record["prefill_ratio_vs_llamacpp"] = round(prefill / record["llamacpp_prefill_tok_s"], 3)
    print(json.dumps(record, indent=2))
    if args.json:
        write_json(args.json, record)


if __name__ == "__main__":
    main()
