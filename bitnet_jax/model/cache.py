"""The static-shape KV cache: one ``{"k", "v"}`` pair of ``[B, S, kv_heads, head_dim]`` per layer, or (for
a ``scan_layers`` model) one pair of ``[L, B, S, kv_heads, head_dim]`` stacks.

Slots are absolute positions: new keys are written at each row's own start position and a query at
position ``p`` attends to slots ``j <= p``, so prompts of different lengths share a batch without a
padding mask (a row's slots past its prompt are overwritten by its own tokens before a real query
reaches them). Writes are one ``dynamic_update_slice`` per row, which XLA performs in place (a batched
scatter would copy the cache).

A cache may hold more rows than the batch that runs on it: rows ``[0, B)`` serve the batch's ``B`` rows and
the rest are neither read nor written, so a serving engine steps its busy leading slots on the whole cache
without slicing it out and writing it back (which copies every slot).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from bitnet_jax.config import ModelConfig

KVCache = Any  # [{"k", "v"}] per layer (unrolled) or {"k": [L, ...], "v": [L, ...]} (scan_layers)


def init_cache(config: ModelConfig, batch: int, length: int, stacked: bool = False) -> KVCache:
    """An empty KV cache for ``batch`` rows of ``length`` slots (``stacked`` for a scan_layers model)."""
    shape = (batch, length, config.num_key_value_heads, config.head_size)
    dtype = jnp.dtype(config.dtype)
    if stacked:
        shape = (config.num_hidden_layers, *shape)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.num_hidden_layers)]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerCache:
    """One layer's view of the cache: its own ``k``/``v`` arrays, or a stack and the ``layer`` to use."""

    k: jax.Array
    v: jax.Array
    layer: Any = None

    def write(self, k_new: jax.Array, v_new: jax.Array, start: jax.Array) -> "LayerCache":
        """Write ``[B, T, ...]`` keys and values at each row's own ``start [B]`` (in place)."""
        return dataclasses.replace(self, k=self._write(self.k, k_new, start), v=self._write(self.v, v_new, start))

    def _write(self, cache: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
        new = new.astype(cache.dtype)
        lead = () if self.layer is None else (self.layer,)
        for b in range(new.shape[0]):  # B is static: one in-place update per row
            index = (*lead, jnp.int32(b), start[b]) + (jnp.int32(0),) * (new.ndim - 2)
            cache = jax.lax.dynamic_update_slice(cache, new[b][(None,) * (len(lead) + 1)], index)
        return cache

    def read(self, rows: int | None = None) -> tuple[jax.Array, jax.Array]:
        """This layer's ``k, v [B, S, kv_heads, head_dim]``: the first ``rows`` rows when given."""
        return self._read(self.k, rows), self._read(self.v, rows)

    def _read(self, cache: jax.Array, rows: int | None) -> jax.Array:
        if self.layer is None:
            return cache if rows is None or rows >= cache.shape[0] else cache[:rows]
        # one slice of the stack: this layer's first rows only (indexing the layer first would copy every row)
        rows = cache.shape[1] if rows is None else min(rows, cache.shape[1])
        start = (self.layer,) + (jnp.int32(0),) * (cache.ndim - 1)
        return jax.lax.dynamic_slice(cache, start, (1, rows, *cache.shape[2:]))[0]
