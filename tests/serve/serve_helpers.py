"""Fixtures of the serving tests: the default model, greedy references from bj.generate, live servers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

import bitnet_jax as bj
from bitnet_jax.inference.generate import default_stop_tokens

PROMPTS = ["def f(x):", "import os\nimport sys\n", "class Point:", "for i in range(10):", "x = [1, 2,"]
REF_TOKENS = 16  # one output bucket: every reference shares one compiled program


@pytest.fixture(scope="session")
def model():
    return bj.from_pretrained(bj.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def references(model):
    """Greedy ids (stop token included) of each prompt of PROMPTS, from bj.generate run alone."""
    return {p: [int(t) for t in bj.generate(model, [p], max_new_tokens=REF_TOKENS)[0]] for p in PROMPTS}


def expected_text(model, ids: list[int], max_tokens: int) -> tuple[str, str]:
    """The text and finish reason the server must answer for greedy reference ``ids`` cut at ``max_tokens``."""
    stops = set(default_stop_tokens(model))
    ids = ids[:max_tokens]
    for i, t in enumerate(ids):
        if t in stops:
            return model.tokenizer.decode(ids[:i]), "stop"
    return model.tokenizer.decode(ids), "length"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(*args: str, timeout: float = 240.0):
    """``bitnet-jax serve`` on 127.0.0.1 at a free port (its base URL); stopped (SIGKILL at worst) afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "bitnet_jax.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up within {timeout} s")
            time.sleep(0.5)
        server = type("Server", (), {"url": base, "proc": proc, "port": port})()
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="session")
def server():
    """The shared live server: default model, 8 slots, context 64, prompts prefilled up to 2 at a time (five
    prompt buckets x row counts 1 and 2, and four decode programs, to warm up)."""
    with live_server("--slots", "8", "--context", "64", "--max-queue", "64", "--prefill-batch", "2") as s:
        yield s
