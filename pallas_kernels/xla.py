"""Plain-XLA ternary matmul (layout ``rows4``): runs on every platform and XLA can partition it.

The packed weights are unpacked inside the jitted program and multiplied in float32. That is exact:
every operand is an integer of magnitude at most 128 and every partial sum stays below 2**24 as long as
``K * 128 * 1 < 2**24`` (K < 131072), so float32 accumulation loses nothing, and XLA's float dot is an
order of magnitude faster than its int8 dot on CPU. Larger K falls back to an int32 dot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.layouts import unpack_rows4

_EXACT_F32_MAX_K = (1 << 24) // 128


def ternary_matmul(x: jax.Array, packed: jax.Array) -> jax.Array:
    """Exact int32 ``x @ w.T`` from int8 ``x [M, K]`` and ``rows4``-packed ``w``."""
    k = x.shape[-1]
    if k <= _EXACT_F32_MAX_K:
        w = unpack_rows4(packed, jnp.float32)
        acc = jnp.dot(
            x.astype(jnp.float32),
            w.T,
            precision=jax.lax.Precision.HIGHEST,
            preferred_element_type=jnp.float32,
        )
        return acc.astype(jnp.int32)
    w = unpack_rows4(packed, jnp.int8)
    return jnp.dot(x, w.T, preferred_element_type=jnp.int32)
