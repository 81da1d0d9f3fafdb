"""BitNet b1.58 quantization: absmean ternary weights, per-token absmax int8 activations, STE.

Definitions (BitNet b1.58; facts sheet section 2):

* weights, per tensor: ``s_w = 1 / max(mean|W|, 1e-5)``, ``Wq = clip(round(W * s_w), -1, 1)``;
* activations, per token (last axis): ``s_x = 127 / max(max|x|, 1e-5)``,
  ``xq = clip(round(x * s_x), -128, 127)``;
* ``round`` is round-half-to-even; the layer output is ``(xq @ Wq.T) / (s_x * s_w)``.

Quantizers compute in float32 whatever the input dtype and work on NumPy and JAX arrays alike (the
loaders quantize latent checkpoints in NumPy with the same functions). The straight-through estimator
passes the gradient of the dequantized value to the latent value unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

WEIGHT_EPS = 1e-5
ACT_EPS = 1e-5
ACT_QMAX = 127.0
ACT_QMIN = -128.0


def _xp(a: Any):
    return np if isinstance(a, np.ndarray) else jnp


def absmean_scale(abs_sum: Any, count: int) -> Any:
    """``s_w = 1 / max(sum|W| / count, 1e-5)`` from a (possibly all-reduced) ``sum|W|``."""
    xp = _xp(abs_sum)
    return 1.0 / xp.maximum(abs_sum / count, xp.float32(WEIGHT_EPS))


def weight_scale(w: Any) -> Any:
    """The absmean quantization scale ``s_w = 1 / max(mean|W|, 1e-5)`` (float32 scalar)."""
    xp = _xp(w)
    return absmean_scale(xp.sum(xp.abs(w.astype(xp.float32))), w.size).astype(xp.float32)


def quantize_weights(w: Any, s_w: Any = None) -> tuple[Any, Any]:
    """Ternary int8 weights and their scale: ``Wq = clip(round(W * s_w), -1, 1)``.

    ``s_w`` defaults to :func:`weight_scale` of ``w`` itself; pass it when ``w`` is one shard of a larger
    tensor whose scale was computed over the whole (FSDP). This is the one latent -> ternary function.
    """
    xp = _xp(w)
    s = weight_scale(w) if s_w is None else s_w
    wq = xp.clip(xp.round(w.astype(xp.float32) * s), -1, 1).astype(xp.int8)
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
