"""The BitNet b1.58 decoder (the 2B4T architecture) as pure Flax linen modules.

Per layer (pre-norm)::

    h   = x + o_proj(attn_sub_norm(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))))
    out = h + down_proj(ffn_sub_norm(relu(gate_proj(m))^2 * up_proj(m)))

with ``n = input_layernorm(x)`` and ``m = post_attention_layernorm(h)``; then a final ``norm`` and the
(tied or separate) float head. Module and parameter names follow transformers' ``BitNetForCausalLM`` so
that checkpoint names map one to one. Every ``*_proj`` is a ternary linear in the form the model's
:class:`~bitnet_jax.model.Form` says (:mod:`bitnet_jax.model.linear`); attention reads and writes the
static-shape KV cache of :mod:`bitnet_jax.model.cache`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bitnet_jax.config import ModelConfig
from bitnet_jax.model import head as head_lib, scan
from bitnet_jax.model.cache import KVCache, LayerCache
from bitnet_jax.model.form import Form
from bitnet_jax.model.layers import RMSNorm, apply_rope
from bitnet_jax.model.linear import PackedLinear, QATLinear
from pallas_kernels import get_kernel


def linear(form: Form, features: int, dtype: Any, name: str) -> nn.Module:
    """The ternary linear layer ``name`` in the form's shape: packed (inference) or latent (training)."""
    if form.packed:
        return PackedLinear(features, form.kernel, dtype, name=name)
    return QATLinear(features, dtype, form.quantize, form.weight_quantizer, name=name)


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
    """Grouped-query self-attention with RoPE and the BitNet ``attn_sub_norm`` before ``o_proj``."""

    config: ModelConfig
    form: Form

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, cache: LayerCache | None = None):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        b, t, _ = x.shape
        hd, heads, kv_heads = cfg.head_size, cfg.num_attention_heads, cfg.num_key_value_heads
        q = linear(self.form, heads * hd, dtype, "q_proj")(x).reshape(b, t, heads, hd)
        k = linear(self.form, kv_heads * hd, dtype, "k_proj")(x).reshape(b, t, kv_heads, hd)
        v = linear(self.form, kv_heads * hd, dtype, "v_proj")(x).reshape(b, t, kv_heads, hd)
        q, k = apply_rope(q, positions, cfg.rope_theta), apply_rope(k, positions, cfg.rope_theta)
        if cache is not None:
            cache = cache.write(k, v, positions[:, 0])
            k, v = cache.read()
        out = self.form.kernel.attend(q, k, v, positions, attend) if self.form.packed else attend(q, k, v, positions)
        out = RMSNorm(heads * hd, cfg.rms_norm_eps, dtype, name="attn_sub_norm")(out)
        return linear(self.form, cfg.hidden_size, dtype, "o_proj")(out), cache


class MLP(nn.Module):
    """The gated feed-forward block: ``down(ffn_sub_norm(relu(gate(x))^2 * up(x)))``."""

    config: ModelConfig
    form: Form

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        gate = jnp.square(jax.nn.relu(linear(self.form, cfg.intermediate_size, dtype, "gate_proj")(x)))
        hidden = gate * linear(self.form, cfg.intermediate_size, dtype, "up_proj")(x)
        hidden = RMSNorm(cfg.intermediate_size, cfg.rms_norm_eps, dtype, name="ffn_sub_norm")(hidden)
        return linear(self.form, cfg.hidden_size, dtype, "down_proj")(hidden)


class DecoderLayer(nn.Module):
    """One pre-norm transformer layer."""

    config: ModelConfig
    form: Form

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, cache: LayerCache | None = None):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        n = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, name="input_layernorm")(x)
        attn_out, cache = Attention(cfg, self.form, name="self_attn")(n, positions, cache)
        h = x + attn_out
        m = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, name="post_attention_layernorm")(h)
        return h + MLP(cfg, self.form, name="mlp")(m), cache


class Transformer(nn.Module):
    """The BitNet b1.58 causal LM.

    ``__call__(tokens [B, T], positions [B, T] | None, cache | None, logit_index [B] | None)`` returns
    ``(float32 logits, cache)``: logits ``[B, T, vocab]``, or ``[B, 1, vocab]`` at ``logit_index`` only.
    Layers are unrolled (``layers_0 ..``, the names of HF checkpoints) unless ``form.scan_layers``
    (:mod:`bitnet_jax.model.scan`).
    """

    config: ModelConfig
    form: Form = Form()

    def _table(self, name: str) -> tuple[jax.Array, jax.Array | None]:
        """A [vocab, hidden] table: float, or (int8 head) codes with their per-row scales."""
        cfg = self.config
        shape = (cfg.vocab_size, cfg.hidden_size)
        head_name, scales_name = head_lib.table_names(cfg.tie_word_embeddings)
        if self.form.head == "int8" and name == head_name:  # the table the head multiplies by
            codes = self.param(name, nn.initializers.zeros, shape, jnp.int8)
            return codes, self.param(scales_name, nn.initializers.ones, (cfg.vocab_size,), jnp.float32)
        return self.param(name, nn.initializers.normal(0.02), shape, jnp.float32), None

    @nn.compact
    def __call__(self, tokens, positions=None, cache: KVCache | None = None, logit_index=None):
        cfg, form, dtype = self.config, self.form, jnp.dtype(self.config.dtype)
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        embedding, embed_scales = self._table("embed_tokens")
        x = form.shard_batch(head_lib.embed(embedding, tokens, embed_scales).astype(dtype))
        if form.scan_layers:
            layer = DecoderLayer(cfg, form, parent=None)
            stacked = self.variable(
                "params", scan.LAYERS,
                lambda: scan.init_stacked(lambda k: layer.init(k, x, positions)["params"], self.make_rng("params"),
                                          cfg.num_hidden_layers),
            ).value

            def apply_layer(params, h, layer_cache):
                return layer.apply({"params": params}, h, positions, layer_cache)

            x, new_cache = scan.scan_layers(apply_layer, stacked, x, cache, cfg.num_hidden_layers)
        else:
            new_cache = None if cache is None else []
            for i in range(cfg.num_hidden_layers):
                view = None if cache is None else LayerCache(cache[i]["k"], cache[i]["v"])
                x, view = DecoderLayer(cfg, form, name=f"layers_{i}")(x, positions, view)
                if cache is not None:
                    new_cache.append({"k": view.k, "v": view.v})
        x = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, name="norm")(x)
        if logit_index is not None:
            x = jnp.take_along_axis(x, logit_index[:, None, None], axis=1)
        head, head_scales = (embedding, embed_scales) if cfg.tie_word_embeddings else self._table("lm_head")
        # the training form's head is a plain (differentiable) XLA dot
        kernel = form.kernel if form.packed else get_kernel("xla")
        return head_lib.project(x, head, head_scales, kernel), new_cache
