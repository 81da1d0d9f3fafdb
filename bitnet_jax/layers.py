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


def layer_param(module: nn.Module, name: str, init: Any, shape: tuple, dtype: Any, layers: int, layer: Any) -> jax.Array:
    """A parameter of one layer: plain, or (``layers > 0``) row ``layer`` of a ``[layers, *shape]`` stack."""
    if not layers:
        return module.param(name, init, shape, dtype)
    stack = module.param(name, lambda key, s, d: jax.vmap(lambda k: init(k, s[1:], d))(jax.random.split(key, s[0])),
                         (layers, *shape), dtype)
    return jax.lax.dynamic_index_in_dim(stack, layer, keepdims=False)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32: ``w * x * rsqrt(mean(x^2) + eps)``.

    ``layers > 0``: the weight is a stack over layers and ``__call__`` takes the ``layer`` index.
    """

    features: int
    eps: float
    dtype: Dtype = jnp.float32
    layers: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, layer: Any = None) -> jax.Array:
        weight = layer_param(self, "weight", nn.initializers.ones, (self.features,), jnp.float32, self.layers, layer)
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
    ``layers > 0`` (packed, for ``scan_layers`` models): both parameters are stacks over layers and
    ``__call__`` takes the ``layer`` index (:func:`pallas_kernels.ternary_matmul_stacked`).
    """

    features: int
    packed: bool = False
    dtype: Dtype = jnp.float32
    kernel_backend: str | None = None
    quantize: bool = True
    layers: int = 0  # > 0: packed weights of every layer in one stack, indexed by ``layer`` (scanned layers)

    @nn.compact
    def __call__(self, x: jax.Array, layer: Any = None) -> jax.Array:
        in_features = x.shape[-1]
        if self.layers and not self.packed:
            raise ValueError("BitLinear: stacked layers (layers > 0) exist only in the packed inference form")
        if not self.packed:
            w = self.param("weight", nn.initializers.normal(INIT_STD), (self.features, in_features), jnp.float32)
            if self.quantize:
                x, w = quant.fake_quantize_activations(x), fsdp.fake_quantize_weights(w)
            xd, wd = x.astype(self.dtype), w.astype(self.dtype)
            return jnp.einsum("...k,nk->...n", xd, wd, preferred_element_type=jnp.float32).astype(self.dtype)

        def init_packed(key, _):  # random ternary codes: one layer's, or (layers > 0) a stack of them
            def one(k):
                return pallas_kernels.pack(jax.random.randint(k, (self.features, in_features), -1, 2, jnp.int8),
                                           self.kernel_backend)

            return jnp.stack([one(k) for k in jax.random.split(key, self.layers)]) if self.layers else one(key)

        w_packed = self.param("weight_packed", init_packed, None)
        scale = layer_param(self, "weight_scale", nn.initializers.constant(INIT_STD), (), jnp.float32, self.layers, layer)
        xq, s_x = quant.quantize_activations(x)
        lead = x.shape[:-1]
        xq = xq.reshape(-1, in_features)
        if self.layers:  # the kernel reads layer `layer` of the stack in place
            acc = pallas_kernels.ternary_matmul_stacked(xq, w_packed, layer, backend=self.kernel_backend)
        else:
            acc = sharding.ternary_matmul(xq, w_packed, backend=self.kernel_backend)
        acc = acc.reshape(*lead, self.features).astype(jnp.float32)
        return (acc / s_x * scale).astype(self.dtype)
