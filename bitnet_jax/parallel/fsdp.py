"""FSDP for the training form: latent weights are quantized where they are stored, then gathered *packed*.

A latent ``QATLinear`` weight ``W [N, K]`` is stored split by rows over the mesh axis ``fsdp`` (and by
columns over ``tensor``; see :data:`bitnet_jax.parallel.rules.PARAM_RULES`). Gathering it as float32
before the fake quantization would move 32 bits per weight; the quantized weight needs 2. So, per
device (a ``shard_map`` over the mesh):

1. ``sum |W|`` of the local shard, summed over every shard (``psum``) -> the absmean scale of the whole
   tensor (:func:`bitnet_jax.model.quant.absmean_scale`);
2. the local shard is quantized with that scale (:func:`bitnet_jax.model.quant.quantize_weights`) and
   packed 4 codes per byte (``rows4``);
3. the ``uint8`` shards are all-gathered over ``fsdp`` and unpacked; the result is ``Wq / s_w``.

The backward pass is the straight-through estimator: the gradient of the dequantized weight is the
gradient of the latent weight, constrained back to the stored sharding (XLA turns the batch reduction
into a reduce-scatter). Values equal the unsharded :func:`bitnet_jax.model.quant.fake_quantize_weights`
up to the summation order of ``mean|W|``. :func:`weight_quantizer` is what the train step puts into the
model's :class:`~bitnet_jax.model.Form`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bitnet_jax.errors import ConfigError
from bitnet_jax.model import quant
from pallas_kernels.layouts import VALUES_PER_BYTE, pack_rows4, unpack_rows4

STORED_SPEC = PartitionSpec("fsdp", "tensor")  # latent [out, in]: the `_proj/weight` rule
GATHERED_SPEC = PartitionSpec(None, "tensor")  # rows whole after the gather, columns still split


def _gather_packed(w: jax.Array, mesh: Mesh) -> jax.Array:
    """The fake-quantized weight, whole along rows, from row shards over ``fsdp`` (see the module doc)."""
    count = w.shape[0] * w.shape[1]
    fsdp = mesh.shape["fsdp"]

    def local(shard: jax.Array) -> jax.Array:
        abs_sum = jax.lax.psum(jnp.sum(jnp.abs(shard.astype(jnp.float32))), ("fsdp", "tensor"))
        codes, s_w = quant.quantize_weights(shard, quant.absmean_scale(abs_sum, count))
        gathered = jax.lax.all_gather(pack_rows4(codes), "fsdp")  # uint8 [fsdp, rows / 4, cols]
        whole = jax.vmap(unpack_rows4)(gathered).reshape(-1, shard.shape[1])
        return whole.astype(jnp.float32) / s_w

    if w.shape[0] % (fsdp * VALUES_PER_BYTE):
        raise ConfigError(
            f"FSDP: a latent weight with {w.shape[0]} output rows cannot be split into {fsdp} packed shards "
            f"(rows must be divisible by fsdp * {VALUES_PER_BYTE} = {fsdp * VALUES_PER_BYTE})"
        )
    # check_vma=False: an all_gather result is the same on every `fsdp` device, which JAX cannot infer
    return jax.shard_map(local, mesh=mesh, in_specs=STORED_SPEC, out_specs=GATHERED_SPEC, check_vma=False)(w)


def weight_quantizer(mesh: Mesh) -> Callable[[jax.Array], jax.Array]:
    """The training form's weight fake-quantizer for ``mesh``: the plain one when ``fsdp`` is 1, else the
    packed gather above with a straight-through backward pass."""
    if mesh.shape["fsdp"] == 1:
        return quant.fake_quantize_weights
    stored = NamedSharding(mesh, STORED_SPEC)

    @jax.custom_vjp
    def fake_quantize(w: jax.Array) -> jax.Array:
        return _gather_packed(w, mesh)

    def forward(w: jax.Array):
        return fake_quantize(w), None

    def backward(_, grad: jax.Array):
        return (jax.lax.with_sharding_constraint(grad, stored),)

    fake_quantize.defvjp(forward, backward)
    return fake_quantize
