"""BitNet b1.58 quantization: absmean ternary weights, per-token absmax int8 activations, STE.

Definitions (BitNet b1.58; facts sheet section 2):

* weights, per tensor: ``s_w = 1 / max(mean|W|, 1e-5)``, ``Wq = clip(round(W * s_w), -1, 1)``;
* activations, per token (last axis): ``s_x = 127 / max(max|x|, 1e-5)``,
  ``xq = clip(round(x * s_x), -128, 127)``;
* ``round`` is round-half-to-even; the layer output is ``(xq @ Wq.T) / (s_x * s_w)``.

Quantizers compute in float32 whatever the input dtype. The straight-through estimator passes the
gradient of the dequantized value to the latent value unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.layout import pack_rows4, unpack_rows4

WEIGHT_EPS = 1e-5
ACT_EPS = 1e-5
ACT_QMAX = 127.0
ACT_QMIN = -128.0


def weight_scale(w: jax.Array) -> jax.Array:
    """The absmean quantization scale ``s_w = 1 / max(mean|W|, 1e-5)`` (float32 scalar)."""
    return 1.0 / jnp.maximum(jnp.mean(jnp.abs(w.astype(jnp.float32))), WEIGHT_EPS)


def quantize_weights(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Ternary int8 weights and their scale ``s_w``: ``Wq = clip(round(W * s_w), -1, 1)``."""
    s = weight_scale(w)
    wq = jnp.clip(jnp.round(w.astype(jnp.float32) * s), -1, 1).astype(jnp.int8)
    return wq, s


def activation_scale(x: jax.Array) -> jax.Array:
    """Per-token absmax scale ``s_x = 127 / max(max|x|, 1e-5)`` over the last axis (float32, keepdims)."""
    amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return ACT_QMAX / jnp.maximum(amax, ACT_EPS)


def quantize_activations(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Int8 activations and their per-token scale: ``xq = clip(round(x * s_x), -128, 127)``."""
    s = activation_scale(x)
    xq = jnp.clip(jnp.round(x.astype(jnp.float32) * s), ACT_QMIN, ACT_QMAX).astype(jnp.int8)
    return xq, s


def straight_through(latent: jax.Array, quantized: jax.Array) -> jax.Array:
    """Forward ``quantized``, backward identity to ``latent`` (the straight-through estimator)."""
    return latent + jax.lax.stop_gradient(quantized.astype(latent.dtype) - latent)


def fake_quantize_weights(w: jax.Array) -> jax.Array:
    """Dequantized ternary weights ``Wq / s_w`` with a straight-through gradient."""
    wq, s = quantize_weights(w)
    return straight_through(w, wq.astype(jnp.float32) / s)


def fake_quantize_activations(x: jax.Array) -> jax.Array:
    """Dequantized int8 activations ``xq / s_x`` with a straight-through gradient."""
    xq, s = quantize_activations(x)
    return straight_through(x, xq.astype(jnp.float32) / s)


def pack_ternary(wq: jax.Array) -> jax.Array:
    """Pack ternary ``[N, K]`` weights into the 2-bit ``uint8 [N // 4, K]`` layout of HF checkpoints."""
    return pack_rows4(wq)


def unpack_ternary(packed: jax.Array, dtype=jnp.int8) -> jax.Array:
    """Inverse of :func:`pack_ternary`."""
    return unpack_rows4(packed, dtype)
