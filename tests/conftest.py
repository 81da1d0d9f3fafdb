"""Shared fixtures: tiny models built directly from presets (no files)."""

from __future__ import annotations

import os

# the command line's persistent compilation cache stays off in tests (no writes to ~/.cache, no global JAX
# config change); tests of the cache set BITNET_JAX_CACHE for their subprocess
os.environ.setdefault("BITNET_JAX_CACHE", "off")
os.environ.setdefault("BITNET_JAX_PACKED_CACHE", "off")  # likewise from_pretrained's packed-layout cache
# One JAX persistent compilation cache for the whole run, in a temporary directory that the first process
# (pytest itself, before xdist starts its workers) creates and removes at exit: the workers and every
# subprocess a test starts (CLI, servers, multi-process runs) inherit it, so a program compiled once in
# the run is not compiled again elsewhere. Compiled programs behave the same whether compiled or loaded.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _xla_cache = tempfile.mkdtemp(prefix="bitnet-jax-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    atexit.register(shutil.rmtree, _xla_cache, True)
# no test touches the network: the hub libraries read these when first imported, so set them before any
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import jax
import jax.numpy as jnp
import pytest

from bitnet_jax import BitNetModel, ModelConfig
from bitnet_jax.model import Form, Transformer
from pallas_kernels import get_kernel, select_kernel


def packed_form(kernel: str | None = None, **changes) -> Form:
    """The packed inference form for ``kernel`` (default: the platform's kernel)."""
    return Form(kernel=get_kernel(kernel) if kernel else select_kernel(), **changes)


def random_model(preset: str = "tiny", seed: int = 0, packed: bool = True, kernel: str | None = None,
                 **changes) -> BitNetModel:
    """A randomly initialised model of a preset (with optional config changes), packed or latent."""
    config = ModelConfig.preset(preset).replace(**changes)
    form = packed_form(kernel) if packed else Form()
    variables = Transformer(config, form).init(jax.random.PRNGKey(seed), jnp.zeros((1, 1), jnp.int32))
    return BitNetModel(config, variables["params"], form=form)


MAX_WORKERS = 4
"""Test processes at most: each compiles with XLA's own threads, and the multi-device tests start
subprocesses of their own."""


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core, at most :data:`MAX_WORKERS`."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      MAX_WORKERS))


@pytest.fixture(scope="session")
def tiny_model() -> BitNetModel:
    """The packed tiny preset with random weights."""
    return random_model("tiny")
