"""The two forms of the bias-free ternary linear layer ``y = x W^T``, over one quantization module.

* :class:`QATLinear` -- the training form: a latent float32 ``weight [out, in]``, both quantizers applied
  as fake quantization with the straight-through estimator (differentiable). ``weight_quantizer`` is
  injected (default :func:`~bitnet_jax.model.quant.fake_quantize_weights`; :mod:`bitnet_jax.parallel`
  passes one that gathers FSDP shards as packed codes), and so is ``activation_quantizer`` (default
  :func:`~bitnet_jax.model.quant.fake_quantize_activations`; the train step blends both in during a
  quantization warm-up); ``quantize=False`` is the same architecture in full precision, for comparison runs.
* :class:`PackedLinear` -- the inference form: ``weight_packed`` (a :class:`~pallas_kernels.PackedWeight`
  in the kernel's layout) and ``weight_scale`` (the multiplicative dequantization scale ``1 / s_w``);
  activations quantized to int8, an exact int32 product by the injected :class:`~pallas_kernels.Kernel`,
  then the rescale ``acc / s_x * weight_scale``.

Both take ``input_norm_eps``: when set, the input first goes through a weighted RMSNorm ``rms_norm``
(transformers' ``BitNetQuantConfig(use_rms_norm=True)``), before the activations are quantized.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bitnet_jax.model import quant
from bitnet_jax.model.layers import RMSNorm
from pallas_kernels import Kernel

INIT_STD = 0.02


def input_norm(x: jax.Array, eps: float | None, dtype: Any) -> jax.Array:
    """The BitLinear-internal RMSNorm ``rms_norm`` of a linear's input (identity when ``eps`` is None)."""
    return x if eps is None else RMSNorm(x.shape[-1], eps, dtype, name="rms_norm")(x)


class QATLinear(nn.Module):
    """Latent float weights, fake-quantized weights and activations (straight-through gradients)."""

    features: int
    dtype: Any = jnp.float32
    quantize: bool = True
    weight_quantizer: Callable[[jax.Array], jax.Array] = quant.fake_quantize_weights
    activation_quantizer: Callable[[jax.Array], jax.Array] = quant.fake_quantize_activations
    input_norm_eps: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = input_norm(x, self.input_norm_eps, self.dtype)
        w = self.param("weight", nn.initializers.normal(INIT_STD), (self.features, x.shape[-1]), jnp.float32)
        if self.quantize:
            x, w = self.activation_quantizer(x), self.weight_quantizer(w)
        xd, wd = x.astype(self.dtype), w.astype(self.dtype)
        return jnp.einsum("...k,nk->...n", xd, wd, preferred_element_type=jnp.float32).astype(self.dtype)


class PackedLinear(nn.Module):
    """Packed 2-bit ternary weights and one scale; int8 activations; the product by ``kernel``."""

    features: int
    kernel: Kernel
    dtype: Any = jnp.float32
    input_norm_eps: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = input_norm(x, self.input_norm_eps, self.dtype)
        k = x.shape[-1]

        def init_codes():  # random ternary codes (real weights come from a checkpoint)
            w = jax.random.randint(self.make_rng("params"), (self.features, k), -1, 2, jnp.int8)
            return self.kernel.pack(w)

        # a variable, not self.param: a scanned model hands in a view of the whole [L, ...] stack, whose
        # shape differs from one layer's (see bitnet_jax.model.scan)
        w = self.variable("params", "weight_packed", init_codes).value
        scale = self.param("weight_scale", nn.initializers.constant(INIT_STD), (), jnp.float32)
        xq, s_x = quant.quantize_activations(x)
        acc = self.kernel.matmul(xq.reshape(-1, k), w)
        acc = acc.reshape(*x.shape[:-1], self.features).astype(jnp.float32)
        return (acc / s_x * scale).astype(self.dtype)
