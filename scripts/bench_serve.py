"""Benchmark the HTTP server: aggregate tokens/s, time to first token and inter-token latency under load.

Usage::

    python scripts/bench_serve.py --json benchmarks/results/serve_cpu.json
    python scripts/bench_serve.py --models default --concurrency 1,8 --no-peer

For each model, ``bitnet-jax serve`` (continuous batching over ``--slots`` slots) and, where
``llama-cpp-python`` is installed with its server extra (the ``bench`` extra), ``python -m
llama_cpp.server`` on the same weights run at the same time on 127.0.0.1; for each concurrency level
(1, 4, 8, 16 streaming clients by default) the two servers are driven in turn (the order alternating
level by level), each level a fresh burst of ``c`` streaming ``/v1/completions`` requests, greedy, ``--output-tokens``
tokens each, every request with its own prompt of ``--prompt-tokens`` random letters (one token each in the
byte-level tokenizer): a repeated prompt would let llama-cpp-python's server reuse the previous request's
cached prefix and skip its prefill, which real traffic does not allow. Per level: aggregate output tokens/s (all streams'
tokens over the burst's wall time), time to first token (request sent -> first token chunk) and
inter-token latency (gaps between token chunks) p50/p99. Tokens are counted as stream chunks (both servers
send one per token, its text possibly empty).

Models: ``default`` (the bundled model, served from its directory; llama.cpp is skipped: its 192-wide
rows are no multiple of TQ2_0's 256-value blocks) and ``2b4t`` (the BitNet b1.58 2B4T shape with random
weights, all 30 layers unless ``--layers`` says fewer, and SiLU for relu^2 as llama.cpp's ``bitnet``
graph computes; exported as a TQ2_0 GGUF file with a BF16 embedding, as the real model's table is bfloat16, that both
servers load). ``bj.generate`` single-stream decode of the same prompt and length is measured in this
process for reference (``generate_tokens_per_s``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_results import cpu_model, git_commit, write_json  # noqa: E402  (scripts/bench_results.py)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



class Server:
    """A server subprocess on 127.0.0.1 (log in a file), stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, ready_path: str, timeout: float = 900):
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {log}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start within {timeout} s; see {log}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def one_stream(client: httpx.AsyncClient, url: str, body: dict) -> dict[str, Any]:
    """One streaming completion: the time of each text chunk after sending."""
    t0 = time.perf_counter()
    times = []
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or [{}]
            if choices[0].get("finish_reason") is None or choices[0].get("text"):  # a token's chunk
                times.append(time.perf_counter() - t0)
    return {"times": times}


async def burst(url: str, bodies: list[dict]) -> dict[str, Any]:
    """One stream per body, all at once; aggregate tokens/s, TTFT and ITL percentiles."""
    concurrency = len(bodies)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, url, body) for body in bodies))
        wall = time.perf_counter() - t0
    tokens = sum(len(r["times"]) for r in results)
    ttft = [r["times"][0] for r in results if r["times"]]
    itl = [b - a for r in results for a, b in zip(r["times"], r["times"][1:])]

    def pct(values, q):
        return round(float(np.percentile(values, q)) * 1000, 2) if values else None

    return {"concurrency": concurrency, "wall_s": round(wall, 3), "output_tokens": tokens,
            "tokens_per_stream": round(tokens / concurrency, 1), "aggregate_tokens_per_s": round(tokens / wall, 2),
            "ttft_ms_p50": pct(ttft, 50), "ttft_ms_p99": pct(ttft, 99), "itl_ms_p50": pct(itl, 50),
            "itl_ms_p99": pct(itl, 99)}


def prepare(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The model's files: what our server loads, the GGUF the peer loads (or why not), and a description."""
    import bitnet_jax as bj
    from bitnet_jax.config import ModelConfig
    from bitnet_jax.io import random_checkpoint
    from bitnet_jax.io.gguf_write import write_gguf

    if name == "default":
        return {"ours": str(bj.DEFAULT_MODEL), "gguf": None, "prompt": lambda i: "def fibonacci(n):\n    " * 4,
                "peer_skipped": "the default model's 192-wide rows are no multiple of TQ2_0's 256-value blocks",
                "description": "the bundled default model (2.4M parameters)"}
    if name != "2b4t":
        raise SystemExit(f"--models: unknown model {name!r} (default, 2b4t)")
    config = ModelConfig.preset("bitnet-b1.58-2b-4t")
    full_layers = config.num_hidden_layers
    # SiLU instead of relu^2: llama.cpp runs BitNet sub-norm models as arch "bitnet", whose graph computes SiLU
    # (relu^2 + sub-norms is bitnet.cpp's "bitnet-b1.58"); the cost per token is the same
    config = dataclasses.replace(config, num_hidden_layers=args.layers, hidden_act="silu")
    ckpt = random_checkpoint(config, seed=0)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_cpu import byte_level_tokenizer

    # the embedding (= the tied head) as BF16, as the real 2B4T's table is bfloat16: both servers read the
    # same 16-bit table (an F32 one would double the bytes each decoded token reads)
    path = write_gguf(ckpt.config, ckpt.tensors, byte_level_tokenizer(), tmp / "bench-2b4t-tq2_0.gguf", "tq2_0",
                      embed_type="bf16")
    def prompt(i: int) -> str:  # request i's prompt: its own random letters (one token each), the same length
        rng = np.random.default_rng(1 + i)
        return "".join(chr(c) for c in rng.integers(ord("a"), ord("z") + 1, args.prompt_tokens))

    return {"ours": str(path), "gguf": str(path), "prompt": prompt, "peer_skipped": None,
            "description": f"the BitNet b1.58 2B4T shape with random weights, {args.layers} of its {full_layers} "
                           "layers and SiLU for "
                           "relu^2 (llama.cpp's 'bitnet' graph; same cost), exported as TQ2_0 GGUF with a BF16 embedding for both servers",
            "shape": {k: getattr(config, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                      "num_attention_heads", "num_key_value_heads", "vocab_size")}}


def generate_rate(model_path: str, prompt: str, tokens: int) -> dict[str, Any]:
    """bj.generate's single-stream decode rate on the same prompt (compiled first, best of 3)."""
    import bitnet_jax as bj

    model = bj.from_pretrained(model_path)
    ids = model.tokenizer.encode(prompt, add_bos=model.config.bos_token_id is not None)
    bj.generate(model, [ids], max_new_tokens=tokens, stop_tokens=())
    best = min(_timed(lambda: bj.generate(model, [ids], max_new_tokens=tokens, stop_tokens=())) for _ in range(3))
    return {"generate_tokens_per_s": round(tokens / best, 2), "prompt_tokens": len(ids)}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    """Run the benchmark and print (and optionally write) the JSON record."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="default,2b4t")
    p.add_argument("--layers", type=int, default=30, help="layers of the 2B4T-shaped random model (2B4T: 30)")
    p.add_argument("--concurrency", default="1,4,8,16")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads")
    p.add_argument("--no-peer", action="store_true", help="skip llama-cpp-python's server")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    try:
        import llama_cpp
        import llama_cpp.server  # noqa: F401  (the server extra)

        peer_version, peer_missing = llama_cpp.__version__, None
    except ImportError as e:
        peer_version, peer_missing = None, f"llama-cpp-python's server is not installed ({e})"
    record: dict[str, Any] = {
        "benchmark": "bench_serve", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "cpu": cpu_model(), "cores": os.cpu_count(), "load_average_start": os.getloadavg(),
        "python": platform.python_version(), "versions": {}, "settings": vars(args) | {"json": str(args.json)},
        "models": {},
    }
    import fastapi
    import jax
    import uvicorn

    record["versions"] = {"jax": jax.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
                          "llama_cpp_python": peer_version}
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmpdir:
        tmp = Path(tmpdir)
        for name in args.models.split(","):
            info = prepare(name, args, tmp)
            context = 2 * args.prompt_tokens + args.output_tokens + 64  # room for the prompt in either tokenizer
            entry: dict[str, Any] = {"description": info["description"], "shape": info.get("shape"),
                                     "context": context, "slots": args.slots}
            entry.update(generate_rate(info["ours"], info["prompt"](0), args.output_tokens))
            entry["peer_skipped"] = info["peer_skipped"] or (peer_missing if info["gguf"] else None)
            if args.no_peer:
                entry["peer_skipped"] = "--no-peer"
            port = free_port()
            logs = Path(tempfile.gettempdir()) / "bench_serve_logs"
            logs.mkdir(exist_ok=True)
            servers = [Server("bitnet-jax", [
                sys.executable, "-m", "bitnet_jax.cli", "serve", "--model", info["ours"], "--port", str(port),
                "--slots", str(args.slots), "--context", str(context), "--max-queue", "256"], port,
                logs / f"ours-{name}.log", "/health")]
            try:
                if not entry["peer_skipped"]:
                    port = free_port()
                    servers.append(Server("llama-cpp-python", [  # one request at a time; none interrupts another
                        sys.executable, "-m", "llama_cpp.server", "--model", info["gguf"], "--host", "127.0.0.1",
                        "--port", str(port), "--n_ctx", str(context), "--n_threads", str(args.threads),
                        "--n_threads_batch", str(args.threads), "--interrupt_requests", "False"], port,
                        logs / f"peer-{name}.log", "/v1/models"))
                def bodies(first: int, count: int, max_tokens: int = args.output_tokens) -> list[dict]:
                    return [{"prompt": info["prompt"](first + j), "max_tokens": max_tokens, "temperature": 0,
                             "stream": True} for j in range(count)]

                for s in servers:  # warm-up (ours compiled every program before it listened)
                    asyncio.run(burst(s.url, bodies(0, 1, 3)))
                runs: dict[str, list] = {s.name: [] for s in servers}
                for i, c in enumerate(levels):
                    order = servers if i % 2 == 0 else servers[::-1]
                    for s in order:  # every request its own prompt: no server reuses a cached prefix
                        result = asyncio.run(burst(s.url, bodies(1000 * (i + 1), c)))
                        runs[s.name].append(result)
                        print(name, s.name, json.dumps(result), flush=True)
                        time.sleep(0.3)
            finally:
                for s in servers:
                    s.stop()
            entry["runs"] = runs
            if "llama-cpp-python" in runs:
                entry["ratio_aggregate_tokens_per_s"] = {
                    str(a["concurrency"]): round(a["aggregate_tokens_per_s"] / b["aggregate_tokens_per_s"], 2)
                    for a, b in zip(runs["bitnet-jax"], runs["llama-cpp-python"])}
            single = next((r for r in runs["bitnet-jax"] if r["concurrency"] == 1), None)
            if single:
                entry["single_stream_over_generate"] = round(single["aggregate_tokens_per_s"]
                                                             / entry["generate_tokens_per_s"], 2)
            record["models"][name] = entry
    record["load_average_end"] = os.getloadavg()
    print(json.dumps(record, indent=2))
    if args.json:
        write_json(args.json, record)


if __name__ == "__main__":
    main()
