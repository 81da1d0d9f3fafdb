"""Plain-XLA ternary matmul (layout ``rows4``): runs on every platform and XLA can partition it.

The packed weights are unpacked inside the jitted program and multiplied in floating point with a
float32 accumulate. That is exact: every operand is an integer of magnitude at most 128 (exact in
bfloat16 too: 8 significant bits) and every partial sum stays below 2**24 as long as
``K * 128 * 1 < 2**24`` (K < 131072), so float32 accumulation loses nothing. On CPU the operands are
float32 (XLA's float dot is an order of magnitude faster there than its int8 dot); on GPU and TPU
they are bfloat16, which runs on the tensor cores / MXU at the default precision (a float32 dot at
``HIGHEST`` precision would not). Larger K falls back to an int32 dot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.layouts import unpack_rows4

_EXACT_F32_MAX_K = (1 << 24) // 128


def operand_dtype(platform: str | None = None):
    """The float operand type of the exact dot: bfloat16 on GPU/TPU, float32 elsewhere."""
    return jnp.bfloat16 if (platform or jax.default_backend()) in ("gpu", "cuda", "rocm", "tpu") else jnp.float32


def ternary_matmul(x: jax.Array, packed: jax.Array) -> jax.Array:
    """Exact int32 ``x @ w.T`` from int8 ``x [M, K]`` and ``rows4``-packed ``w``."""
    k = x.shape[-1]
    if k <= _EXACT_F32_MAX_K:
        dtype = operand_dtype()
        precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT
        w = unpack_rows4(packed, dtype)
        acc = jnp.dot(x.astype(dtype), w.T, precision=precision, preferred_element_type=jnp.float32)
        return acc.astype(jnp.int32)
    w = unpack_rows4(packed, jnp.int8)
    return jnp.dot(x, w.T, preferred_element_type=jnp.int32)
