"""Fused causal attention for long prompts on accelerators, chosen with the kernel (``Kernel.attention_fn``).

The model's own attention (``bitnet_jax.model.transformer.attend``, einsum + softmax) stays the
default and the CPU path. On GPU the prefill uses cuDNN flash attention
(``jax.nn.dot_product_attention(implementation="cudnn")``), on TPU the Pallas TPU flash-attention
kernel; both only where they compute the same function to float tolerance:

* a prompt (``T >= MIN_FUSED_T`` queries, bfloat16/float16 activations; a float32 model keeps the
  einsum path, since both fused kernels multiply in 16-bit);
* every row's queries at positions ``0 .. T-1`` -- then a query at position ``i`` sees exactly cache
  slots ``0 .. i``, the square causal mask over the first ``T`` slots, which is what the fused kernels
  compute. That is decided at run time (``lax.cond``), so any other positions (a continued prompt)
  take the model's path, exactly as before;
* the fused call compiles for these shapes on this device (checked once per shape; otherwise the
  model's path, with a :class:`~bitnet_jax.errors.KernelFallbackWarning`).

Decode (``T = 1``) always uses the model's path: it reads the cache once, which is all there is to do.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

MIN_FUSED_T = 128  # also the TPU flash kernel's block rows
FUSED_DTYPES = (jnp.bfloat16, jnp.float16)

# (q [B, T, H, D], k, v [B, T, Hkv, D]) -> [B, T, H, D], causal (query i sees keys 0..i)
CausalFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def cudnn_causal(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """cuDNN flash attention (GQA), causal over ``T`` queries and ``T`` keys."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")


def tpu_flash_causal(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """The Pallas TPU flash-attention kernel, causal; KV heads repeated for GQA."""
    from jax.experimental.pallas.ops.tpu.flash_attention import flash_attention

    groups = q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(a, groups, axis=2) for a in (k, v))
    out = flash_attention(*(a.transpose(0, 2, 1, 3) for a in (q, k, v)), causal=True, sm_scale=q.shape[-1] ** -0.5)
    return out.transpose(0, 2, 1, 3)


def starts_at_zero(q_positions: jax.Array) -> jax.Array:
    """Whether every row's queries sit at positions ``0 .. T-1`` (a scalar bool)."""
    return jnp.all(q_positions == jnp.arange(q_positions.shape[1], dtype=q_positions.dtype)[None, :])


def prefill_attention(fused: CausalFn, name: str, *, check_compiles: bool = True):
    """An ``attention_fn(q, k, v, q_positions, default)`` running ``fused`` on the first ``T`` cache
    slots when the queries are a prompt from position 0 (see the module docstring), else ``default``."""

    def attention(q, k, v, q_positions, default):
        b, t, h, d = q.shape
        if t < MIN_FUSED_T or t > k.shape[1] or q.dtype not in FUSED_DTYPES or k.dtype != q.dtype:
            return default(q, k, v, q_positions)
        head = (q, k[:, :t], v[:, :t])
        if check_compiles and _fused_error(fused, name, *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in head)):
            return default(q, k, v, q_positions)

        def run_fused(operands):
            return fused(*operands).reshape(b, t, h * d).astype(v.dtype)

        def run_default(operands):
            return default(q, k, v, q_positions)

        return jax.lax.cond(starts_at_zero(q_positions), run_fused, run_default, head)

    return attention


@functools.lru_cache(maxsize=None)
def _fused_error(fused: CausalFn, name: str, q, k, v) -> str | None:
    from pallas_kernels.kernel import compile_error, warn_fallback

    error = compile_error(fused, q, k, v)
    if error is not None:
        warn_fallback(f"{name} attention", (q.shape, k.shape), error, "the model's attention")
    return error


def for_backend(name: str):
    """The fused prefill attention a kernel backend brings (None: the model's attention)."""
    if name in ("mosaic_gpu", "triton"):
        return _ATTENTION["cudnn"]
    if name == "tpu":
        return _ATTENTION["tpu_flash"]
    return None


_ATTENTION = {
    "cudnn": prefill_attention(cudnn_causal, "cudnn"),
    "tpu_flash": prefill_attention(tpu_flash_causal, "tpu_flash"),
}
