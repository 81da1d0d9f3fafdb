"""Shared fixtures: tiny models built directly from presets (no files)."""

from __future__ import annotations

import os

# the command line's persistent compilation cache stays off in tests (no writes to ~/.cache, no global JAX
# config change); tests of the cache set BITNET_JAX_CACHE for their subprocess
os.environ.setdefault("BITNET_JAX_CACHE", "off")
os.environ.setdefault("BITNET_JAX_PACKED_CACHE", "off")  # likewise from_pretrained's packed-layout cache

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


@pytest.fixture(scope="session")
def tiny_model() -> BitNetModel:
    """The packed tiny preset with random weights."""
    return random_model("tiny")
