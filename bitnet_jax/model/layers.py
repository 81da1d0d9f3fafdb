"""Building blocks without weights to quantize: RMSNorm, the FFN activations and the rotary position
embedding."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32: ``w * x * rsqrt(mean(x^2) + eps)``."""

    features: int
    eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.ones, (self.features,), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return weight.astype(self.dtype) * normed.astype(self.dtype)


def relu2(x: jax.Array) -> jax.Array:
    """Squared ReLU, ``relu(x)^2`` (BitNet b1.58 2B4T)."""
    return jnp.square(jax.nn.relu(x))


# ModelConfig.hidden_act -> the gate activation of the FFN
ACTIVATIONS = {"relu2": relu2, "silu": jax.nn.silu}


def rope_inverse_frequencies(head_dim: int, theta: float) -> jax.Array:
    """``1 / theta^(2i / head_dim)`` for ``i < head_dim / 2`` (float32)."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (jnp.float32(theta) ** exponents)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate-half RoPE over the whole head: pairs ``(i, i + head_dim/2)``; x is ``[B, T, H, D]``."""
    head_dim = x.shape[-1]
    freqs = positions[..., None].astype(jnp.float32) * rope_inverse_frequencies(head_dim, theta)
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos = jnp.cos(angles).astype(x.dtype)
    sin = jnp.sin(angles).astype(x.dtype)
    half = head_dim // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
