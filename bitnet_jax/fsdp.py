"""FSDP for the training form: latent weights are quantized where they are stored, then gathered *packed*.

A latent ``BitLinear`` weight ``W [N, K]`` is stored split by rows over the mesh axis ``fsdp`` (and by
columns over ``tensor``; see :data:`bitnet_jax.sharding.PARAM_RULES`). Gathering it as float32 before
the fake quantization would move 32 bits per weight; the quantized weight needs 2. So, per device
(a ``shard_map`` over the mesh of the enclosing ``jax.set_mesh`` context):

1. ``sum |W|`` of the local shard, summed over every shard (``psum``) -> the absmean scale
   ``s_w = 1 / max(mean|W|, 1e-5)`` of the whole tensor, as :func:`bitnet_jax.quant.weight_scale`;
2. the local shard is quantized, ``clip(round(W * s_w), -1, 1)``, and packed 4 codes per byte
   (``rows4``, :func:`pallas_kernels.layout.pack_rows4`);
3. the ``uint8`` shards are all-gathered over ``fsdp`` and unpacked; the result is ``Wq / s_w``.

The backward pass is the straight-through estimator: the gradient of the dequantized weight is the
gradient of the latent weight, constrained back to the stored sharding (XLA turns the batch reduction
into a reduce-scatter). Values equal the unsharded :func:`bitnet_jax.quant.fake_quantize_weights` up to
the summation order of ``mean|W|``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from bitnet_jax import quant, sharding
from bitnet_jax.errors import ConfigError
from pallas_kernels.layout import VALUES_PER_BYTE, pack_rows4, unpack_rows4

STORED_SPEC = PartitionSpec("fsdp", "tensor")  # latent [out, in]: the `_proj/weight` rule
GATHERED_SPEC = PartitionSpec(None, "tensor")  # rows whole after the gather, columns still split


def _gather_packed(w: jax.Array, mesh) -> jax.Array:
    """The fake-quantized weight, whole along rows, from row shards over ``fsdp`` (see the module doc)."""
    count = w.shape[0] * w.shape[1]
    fsdp = mesh.shape["fsdp"]

    def local(shard: jax.Array) -> jax.Array:
        abs_sum = jax.lax.psum(jnp.sum(jnp.abs(shard.astype(jnp.float32))), ("fsdp", "tensor"))
        s_w = 1.0 / jnp.maximum(abs_sum / count, quant.WEIGHT_EPS)
        codes = jnp.clip(jnp.round(shard.astype(jnp.float32) * s_w), -1, 1).astype(jnp.int8)
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


@jax.custom_vjp
def _fsdp_fake_quantize(w: jax.Array) -> jax.Array:
    return _gather_packed(w, sharding.active_mesh())


def _forward(w: jax.Array):
    return _fsdp_fake_quantize(w), None


def _backward(_, grad: jax.Array):
    return (jax.lax.with_sharding_constraint(grad, STORED_SPEC),)


_fsdp_fake_quantize.defvjp(_forward, _backward)


def fake_quantize_weights(w: jax.Array) -> jax.Array:
    """:func:`bitnet_jax.quant.fake_quantize_weights`, gathering packed codes when ``fsdp`` splits ``w``.

    Outside a ``jax.set_mesh`` context, or on a mesh whose ``fsdp`` axis has size 1, it is the plain
    fake quantizer (XLA partitions it by itself).
    """
    mesh = sharding.active_mesh()
    if mesh is None or mesh.shape["fsdp"] == 1:
        return quant.fake_quantize_weights(w)
    return _fsdp_fake_quantize(w)
