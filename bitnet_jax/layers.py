"""Building blocks: RMSNorm, rotary position embedding, and BitLinear in its two forms."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import pallas_kernels
from bitnet_jax import fsdp, quant, sharding

Dtype = Any
INIT_STD = 0.02


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


class BitLinear(nn.Module):
    """A bias-free ternary linear layer ``y = x W^T`` with int8 activations.

    ``packed=False`` is the training form: latent float32 ``weight [out, in]``, both quantizers applied
    as fake quantization with the straight-through estimator (differentiable); ``quantize=False`` skips
    them (the same architecture in full precision, for comparison runs). ``packed=True`` is the
    inference form: ``weight_packed`` (2-bit codes in the kernel layout) and ``weight_scale`` (the
    multiplicative dequantization scale ``1 / s_w``), activations quantized to int8, an exact int32
    product through the kernel dispatcher :func:`pallas_kernels.ternary_matmul` (made mesh-aware by
    :func:`bitnet_jax.sharding.ternary_matmul`), then the rescale ``acc / s_x * weight_scale``.
    """

    features: int
    packed: bool = False
    dtype: Dtype = jnp.float32
    kernel_backend: str | None = None
    quantize: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        if not self.packed:
            w = self.param("weight", nn.initializers.normal(INIT_STD), (self.features, in_features), jnp.float32)
            if self.quantize:
                x, w = quant.fake_quantize_activations(x), fsdp.fake_quantize_weights(w)
            xd, wd = x.astype(self.dtype), w.astype(self.dtype)
            return jnp.einsum("...k,nk->...n", xd, wd, preferred_element_type=jnp.float32).astype(self.dtype)

        def init_packed(key, shape):
            wq = jax.random.randint(key, (self.features, in_features), -1, 2, dtype=jnp.int8)
            return pallas_kernels.pack(wq, self.kernel_backend)

        w_packed = self.param("weight_packed", init_packed, None)
        scale = self.param("weight_scale", nn.initializers.constant(INIT_STD), (), jnp.float32)
        xq, s_x = quant.quantize_activations(x)
        lead = x.shape[:-1]
        acc = sharding.ternary_matmul(xq.reshape(-1, in_features), w_packed, backend=self.kernel_backend)
        acc = acc.reshape(*lead, self.features).astype(jnp.float32)
        return (acc / s_x * scale).astype(self.dtype)
