"""Shared fixtures: tiny models built directly from presets (no files)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from bitnet_jax import BitNetModel, ModelConfig
from bitnet_jax.model import Transformer


def random_model(preset: str = "tiny", seed: int = 0, packed: bool = True, **changes) -> BitNetModel:
    """A randomly initialised model of a preset (with optional config changes)."""
    config = ModelConfig.preset(preset).replace(**changes)
    variables = Transformer(config, packed=packed).init(jax.random.PRNGKey(seed), jnp.zeros((1, 1), jnp.int32))
    return BitNetModel(config, variables["params"], packed=packed)


@pytest.fixture(scope="session")
def tiny_model() -> BitNetModel:
    """The packed tiny preset with random weights."""
    return random_model("tiny")
