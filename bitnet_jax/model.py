"""The BitNet b1.58 decoder (the 2B4T architecture) as pure Flax linen modules.

Per layer (pre-norm)::

    h   = x + o_proj(attn_sub_norm(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))))
    out = h + down_proj(ffn_sub_norm(relu(gate_proj(m))^2 * up_proj(m)))

with ``n = input_layernorm(x)`` and ``m = post_attention_layernorm(h)``; then a final ``norm`` and the
(tied or separate) float head. Module and parameter names follow transformers' ``BitNetForCausalLM`` so
that checkpoint names map one to one.

The attention works on an optional static-shape KV cache: ``cache[i] = {"k", "v"}`` of shape
``[B, S, kv_heads, head_dim]``. New keys are written at each row's own start position, and a query at
position ``p`` attends to cache slots ``j <= p``. Slots are absolute positions, so prompts of different
lengths in one batch need no padding mask: a row's slots past its prompt are overwritten by its own
generated tokens before any real query can reach them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax import head as head_lib, sharding
from bitnet_jax.config import ModelConfig
from bitnet_jax.layers import BitLinear, RMSNorm, apply_rope

KVCache = Any  # per layer [{"k", "v"}] (unrolled) or {"k": [L, ...], "v": [L, ...]} (scan_layers)


def activation_dtype(config: ModelConfig) -> Any:
    """The jnp dtype activations are computed in."""
    return jnp.dtype(config.dtype)


def init_cache(config: ModelConfig, batch: int, length: int, stacked: bool = False) -> KVCache:
    """An empty KV cache: one ``{"k", "v"}`` pair of ``[batch, length, kv_heads, head_dim]`` per layer,
    or (``stacked``, for ``scan_layers`` models) one pair of ``[layers, batch, ...]`` stacks."""
    shape = (batch, length, config.num_key_value_heads, config.head_size)
    dtype = activation_dtype(config)
    if stacked:
        shape = (config.num_hidden_layers, *shape)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.num_hidden_layers)]


def stack_layers(params: dict, num_layers: int) -> dict:
    """Unrolled parameters (``layers_0 .. layers_{L-1}``) as the stacks of a ``scan_layers`` model."""
    per_layer = [params[f"layers_{i}"] for i in range(num_layers)]
    rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *per_layer)
    return {**rest, "layers": {"layer": stacked}}


def unstack_layers(params: dict) -> dict:
    """Inverse of :func:`stack_layers`."""
    stacked = params["layers"]["layer"]
    num_layers = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    rest = {k: v for k, v in params.items() if k != "layers"}
    return {**rest, **{f"layers_{i}": jax.tree_util.tree_map(lambda x: x[i], stacked) for i in range(num_layers)}}


def _write_rows(cache: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """Write ``new [B, T, ...]`` into ``cache [B, S, ...]`` at each row's own ``start [B]``."""

    def one_row(c, n, s):
        return jax.lax.dynamic_update_slice_in_dim(c, n, s, axis=0)

    return jax.vmap(one_row)(cache, new.astype(cache.dtype), start)


def _write_layer_rows(stack: jax.Array, new: jax.Array, layer: jax.Array, start: jax.Array) -> jax.Array:
    """Write ``new [B, T, ...]`` into layer ``layer`` of ``stack [L, B, S, ...]`` at each row's ``start [B]``.

    One ``dynamic_update_slice`` per row (B is static): XLA updates the stack in place, where a
    batched update (a scatter) would copy the whole stack in every layer of the scan.
    """
    new = new.astype(stack.dtype)
    for b in range(new.shape[0]):
        index = (layer, jnp.int32(b), start[b]) + (jnp.int32(0),) * (new.ndim - 2)
        stack = jax.lax.dynamic_update_slice(stack, new[b][None, None], index)
    return stack


def attend(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array) -> jax.Array:
    """Causal GQA attention of ``q [B, T, H, D]`` over ``k, v [B, S, Hkv, D]`` (slot j visible if j <= pos)."""
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    visible = jnp.arange(k.shape[1])[None, None, :] <= q_positions[:, :, None]  # [B, T, S]
    scores = jnp.where(visible[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h * d).astype(v.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and the BitNet ``attn_sub_norm`` before ``o_proj``.

    With ``layers > 0`` (scanned layers) the weights and the cache ``{"k", "v"}`` are stacks over layers
    and ``layer`` picks this layer's.
    """

    config: ModelConfig
    packed: bool = False
    kernel_backend: str | None = None
    quantize: bool = True
    layers: int = 0

    @nn.compact
    def __call__(self, x, positions, layer_cache=None, layer=None):
        cfg = self.config
        dtype = activation_dtype(cfg)
        b, t, _ = x.shape
        hd = cfg.head_size

        def proj(name, features, inputs):
            linear = BitLinear(features, self.packed, dtype, self.kernel_backend, self.quantize, self.layers, name=name)
            return linear(inputs, layer)

        q = proj("q_proj", cfg.num_attention_heads * hd, x).reshape(b, t, cfg.num_attention_heads, hd)
        k = proj("k_proj", cfg.num_key_value_heads * hd, x).reshape(b, t, cfg.num_key_value_heads, hd)
        v = proj("v_proj", cfg.num_key_value_heads * hd, x).reshape(b, t, cfg.num_key_value_heads, hd)
        q = apply_rope(q, positions, cfg.rope_theta)
        k = apply_rope(k, positions, cfg.rope_theta)
        if layer_cache is not None:
            start = positions[:, 0]
            if self.layers:  # write the new rows straight into the stacked cache, then read this layer's
                layer_cache = {"k": _write_layer_rows(layer_cache["k"], k, layer, start),
                               "v": _write_layer_rows(layer_cache["v"], v, layer, start)}
                k, v = (jax.lax.dynamic_index_in_dim(layer_cache[n], layer, keepdims=False) for n in ("k", "v"))
            else:
                layer_cache = {"k": _write_rows(layer_cache["k"], k, start), "v": _write_rows(layer_cache["v"], v, start)}
                k, v = layer_cache["k"], layer_cache["v"]
        out = attend(q, k, v, positions)
        out = RMSNorm(cfg.num_attention_heads * hd, cfg.rms_norm_eps, dtype, self.layers, name="attn_sub_norm")(out, layer)
        return proj("o_proj", cfg.hidden_size, out), layer_cache


class MLP(nn.Module):
    """The gated feed-forward block: ``down(ffn_sub_norm(relu(gate(x))^2 * up(x)))``."""

    config: ModelConfig
    packed: bool = False
    kernel_backend: str | None = None
    quantize: bool = True
    layers: int = 0

    @nn.compact
    def __call__(self, x, layer=None):
        cfg = self.config
        dtype = activation_dtype(cfg)

        def proj(name, features, inputs):
            linear = BitLinear(features, self.packed, dtype, self.kernel_backend, self.quantize, self.layers, name=name)
            return linear(inputs, layer)

        gate = jnp.square(jax.nn.relu(proj("gate_proj", cfg.intermediate_size, x)))
        hidden = gate * proj("up_proj", cfg.intermediate_size, x)
        hidden = RMSNorm(cfg.intermediate_size, cfg.rms_norm_eps, dtype, self.layers, name="ffn_sub_norm")(hidden, layer)
        return proj("down_proj", cfg.hidden_size, hidden)


class DecoderLayer(nn.Module):
    """One pre-norm transformer layer."""

    config: ModelConfig
    packed: bool = False
    kernel_backend: str | None = None
    quantize: bool = True
    layers: int = 0

    @nn.compact
    def __call__(self, x, positions, layer_cache=None, layer=None):
        cfg = self.config
        dtype = activation_dtype(cfg)
        parts = (cfg, self.packed, self.kernel_backend, self.quantize, self.layers)
        n = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, self.layers, name="input_layernorm")(x, layer)
        attn_out, layer_cache = Attention(*parts, name="self_attn")(n, positions, layer_cache, layer)
        h = x + attn_out
        m = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, self.layers, name="post_attention_layernorm")(h, layer)
        return h + MLP(*parts, name="mlp")(m, layer), layer_cache


class ScannedLayer(nn.Module):
    """One step of the layer loop of a ``scan_layers`` model: carry ``(x, positions, cache, layer)``; the
    stacked cache rides in the carry so each layer updates its slice in place."""

    config: ModelConfig
    kernel_backend: str | None = None

    @nn.compact
    def __call__(self, carry, _):
        x, positions, cache, layer = carry
        cfg = self.config
        x, cache = DecoderLayer(cfg, True, self.kernel_backend, True, cfg.num_hidden_layers, name="layer")(
            x, positions, cache, layer
        )
        return (x, positions, cache, layer + 1), None


class Transformer(nn.Module):
    """The BitNet b1.58 causal LM.

    ``__call__(tokens [B, T], positions [B, T] | None, cache | None, logit_index [B] | None)`` returns
    ``(float32 logits, cache)``: logits ``[B, T, vocab]``, or ``[B, 1, vocab]`` at ``logit_index`` only.
    Layers are unrolled by default: each layer's weights are separate arrays (the names of HF
    checkpoints) and each layer is compiled on its own. ``scan_layers=True`` (packed inference) runs one
    compiled layer body in a ``scan``: every parameter of ``layers_i`` is row ``i`` of a stack under
    ``layers/layer`` (:func:`stack_layers`), the cache is :func:`init_cache` with ``stacked=True``, and
    the kernel reads each layer's codes from the stack in place. Same numbers, a fraction of the
    compiled code (on CPU about 4 MB less resident memory per layer).
    """

    config: ModelConfig
    packed: bool = False
    kernel_backend: str | None = None
    quantize: bool = True
    scan_layers: bool = False

    @nn.compact
    def __call__(self, tokens, positions=None, cache: KVCache | None = None, logit_index=None):
        cfg = self.config
        dtype = activation_dtype(cfg)
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        embedding = self.param(
            "embed_tokens", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.hidden_size), jnp.float32
        )
        scales = self.variables.get("params", {}).get  # int8 head tables come with per-row scales
        x = sharding.constrain_batch(head_lib.embed(embedding, tokens, scales("embed_scales")).astype(dtype))
        if self.scan_layers:  # one compiled layer body; weights and cache are stacks indexed by the layer
            if not self.packed:
                raise ValueError("Transformer: scan_layers is an inference mode (packed=True)")
            scan = nn.scan(ScannedLayer, variable_broadcast="params", split_rngs={"params": False},
                           length=cfg.num_hidden_layers)
            (x, _, new_cache, _), _ = scan(cfg, self.kernel_backend, name="layers")(
                (x, positions, cache, jnp.int32(0)), None
            )
        else:
            new_cache = [] if cache is not None else None
            for i in range(cfg.num_hidden_layers):
                layer = DecoderLayer(cfg, self.packed, self.kernel_backend, self.quantize, name=f"layers_{i}")
                x, layer_cache = layer(x, positions, None if cache is None else cache[i])
                if cache is not None:
                    new_cache.append(layer_cache)
        x = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, name="norm")(x)
        if logit_index is not None:
            x = jnp.take_along_axis(x, logit_index[:, None, None], axis=1)
        if cfg.tie_word_embeddings:
            head, head_scales = embedding, scales("embed_scales")
        else:
            head = self.param("lm_head", nn.initializers.normal(0.02), (cfg.vocab_size, cfg.hidden_size), jnp.float32)
            head_scales = scales("lm_head_scales")
        # the C++ head kernels have no gradient: the training form keeps the XLA dot
        logits = head_lib.project(x, head, head_scales, self.kernel_backend if self.packed else "xla")
        return logits, new_cache
