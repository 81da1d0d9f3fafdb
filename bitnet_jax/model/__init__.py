"""The model: the BitNet b1.58 decoder as Flax linen modules over explicit parameter pytrees.

:class:`Transformer` is the network (:mod:`~bitnet_jax.model.transformer`, readable top to bottom);
:class:`Form` says how its weights are held (packed for a :class:`~pallas_kernels.Kernel`, or latent for
training); :class:`BitNetModel` is a loaded model. Quantization is :mod:`~bitnet_jax.model.quant`, the
two linear forms :mod:`~bitnet_jax.model.linear`, the head :mod:`~bitnet_jax.model.head`, the KV cache
:mod:`~bitnet_jax.model.cache`, scanned layers :mod:`~bitnet_jax.model.scan`. Nothing here knows about
devices or meshes: :mod:`bitnet_jax.parallel` wraps the kernel and fills the form's hooks.
"""

from bitnet_jax.model.cache import KVCache, init_cache
from bitnet_jax.model.form import BitNetModel, Form
from bitnet_jax.model.head import with_head_screen, with_int8_head
from bitnet_jax.model.scan import stack_layers, unstack_layers
from bitnet_jax.model.transformer import Transformer

__all__ = [
    "BitNetModel",
    "Form",
    "KVCache",
    "Transformer",
    "init_cache",
    "stack_layers",
    "unstack_layers",
    "with_head_screen",
    "with_int8_head",
]
