"""Full-precision training of the BitNet architecture: BitLinear without its two quantizers.

The core ``BitLinear`` (``packed=False``) always fake-quantizes. For ``training.quantize: false`` the
run applies the model inside :func:`full_precision`, a Flax method interceptor that replaces each
latent ``BitLinear`` call by the plain product ``x W^T`` over the *same* ``weight`` parameter, so the
parameter tree (and checkpoints) are identical to a quantized run's.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import flax.linen as nn
import jax.numpy as jnp

from bitnet_jax.layers import INIT_STD, BitLinear


def _plain_bitlinear(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, BitLinear) or module.packed or context.method_name != "__call__":
        return next_fun(*args, **kwargs)
    x = args[0]
    w = module.param("weight", nn.initializers.normal(INIT_STD), (module.features, x.shape[-1]), jnp.float32)
    out = jnp.einsum("...k,nk->...n", x.astype(module.dtype), w.astype(module.dtype), preferred_element_type=jnp.float32)
    return out.astype(module.dtype)


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Within this context, latent ``BitLinear`` layers compute ``x W^T`` without quantization."""
    with nn.intercept_methods(_plain_bitlinear):
        yield
