"""``scan_layers``: one compiled layer body run over stacked layer weights, in one place.

A scanned model's parameters hold every ``layers_i`` subtree stacked along a new leading axis under
``layers`` (:func:`stack_layers` / :func:`unstack_layers` convert). The layer loop is a ``lax.scan``
over the layer index; each step applies the ordinary :class:`~bitnet_jax.model.transformer.DecoderLayer`
to :func:`layer_view` of the stack: small tensors (norms, scales) are indexed, packed weights are passed
whole with the layer index (:meth:`pallas_kernels.PackedWeight.at_layer`), so a kernel that can reads the
layer's codes in place instead of copying them every step. The stacked KV cache rides in the carry and
each layer writes its own slice in place (:class:`~bitnet_jax.model.cache.LayerCache`). Same numbers as
unrolled layers, a fraction of the compiled code.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax._memory import release_host_memory
from bitnet_jax.errors import ConfigError
from bitnet_jax.model.cache import LayerCache
from pallas_kernels import PackedWeight

LAYERS = "layers"


def _is_packed(x: Any) -> bool:
    return isinstance(x, PackedWeight)


def layers_alike(params: dict, num_layers: int) -> bool:
    """Whether every ``layers_i`` subtree of unrolled ``params`` holds the same parameters (stackable)."""
    return len({jax.tree_util.tree_structure(params.get(f"layers_{i}")) for i in range(num_layers)}) == 1


def stack_layers(params: dict, num_layers: int, consume: bool = False) -> dict:
    """Unrolled parameters (``layers_0 .. layers_{L-1}``) as the stacks of a ``scan_layers`` model (NumPy).

    ``consume=True`` takes the layers out of ``params`` and drops each layer's array as soon as its
    stack is built, so the weights exist twice only one stack at a time (a loader's peak memory).
    """
    if not layers_alike(params, num_layers):
        raise ConfigError("scan_layers needs every layer to hold the same parameters; these layers differ "
                          "(modules_to_not_convert keeps a linear float in some layers only): load without scan_layers")
    per_layer = [params[f"layers_{i}"] for i in range(num_layers)]
    rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
    treedef = jax.tree_util.tree_structure(per_layer[0])
    leaves = [jax.tree_util.tree_leaves(layer) for layer in per_layer]
    del per_layer
    if consume:
        for i in range(num_layers):
            del params[f"layers_{i}"]
    stacks = []
    for j in range(treedef.num_leaves):
        stacks.append(np.stack([np.asarray(layer[j]) for layer in leaves]))
        if consume:
            for layer in leaves:
                layer[j] = None
            release_host_memory()  # the layers' arrays sat on the heap: hand their pages back now
    return {**rest, LAYERS: jax.tree_util.tree_unflatten(treedef, stacks)}


def unstack_layers(params: dict) -> dict:
    """Inverse of :func:`stack_layers`."""
    stacked = params[LAYERS]
    num_layers = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != LAYERS}
    return {**rest, **{f"layers_{i}": jax.tree_util.tree_map(lambda x: x[i], stacked) for i in range(num_layers)}}


def layer_view(stacked: Any, layer: jax.Array) -> Any:
    """Layer ``layer``'s parameters: small tensors indexed, packed weights as in-place views of the stack."""
    return jax.tree_util.tree_map(
        lambda x: x.at_layer(layer) if _is_packed(x) else jax.lax.dynamic_index_in_dim(x, layer, keepdims=False),
        stacked,
        is_leaf=_is_packed,
    )


def init_stacked(init_one: Callable[[jax.Array], Any], key: jax.Array, num_layers: int) -> Any:
    """Stacked parameters of ``num_layers`` freshly initialised layers (``init_one(key) -> params``)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[init_one(k) for k in jax.random.split(key, num_layers)])


def scan_layers(apply_layer: Callable, stacked: Any, x: jax.Array, cache: Any, num_layers: int):
    """Run ``apply_layer(params, x, layer_cache) -> (x, layer_cache)`` over the layers of ``stacked``.

    ``cache`` is a stacked ``{"k", "v"}`` (or None); returns ``(x, cache)``.
    """

    def body(carry, layer):
        h, kv = carry
        view = None if kv is None else LayerCache(kv["k"], kv["v"], layer)
        h, view = apply_layer(layer_view(stacked, layer), h, view)
        return (h, None if view is None else {"k": view.k, "v": view.v}), None

    (x, cache), _ = jax.lax.scan(body, (x, cache), jnp.arange(num_layers, dtype=jnp.int32))
    return x, cache
