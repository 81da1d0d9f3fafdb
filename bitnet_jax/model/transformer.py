"""The BitNet b1.58 decoder (every family: 2B4T, 1bitLLM, Llama-architecture ternary models) as pure
Flax linen modules.

Per layer (pre-norm)::

    h   = x + o_proj(attn_sub_norm(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))))
    out = h + down_proj(ffn_sub_norm(act(gate_proj(m)) * up_proj(m)))

with ``n = input_layernorm(x)``, ``m = post_attention_layernorm(h)`` and ``act`` the config's
``hidden_act`` (``relu2``: relu(x)^2, or ``silu``); then a final ``norm`` and the (tied or separate)
float head. The sub-norms exist when ``config.sub_norms`` (BitNet, 1bitLLM) and are left out otherwise
(Llama, Falcon3, Falcon-E). With ``config.use_rms_norm`` every ternary linear normalizes its own input
first; a linear that ``config.modules_to_not_convert`` names stays a float linear. Module and parameter names follow transformers' ``BitNetForCausalLM`` so
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
from bitnet_jax.errors import ConfigError
from bitnet_jax.model import head as head_lib, scan
from bitnet_jax.model.cache import KVCache, LayerCache
from bitnet_jax.model.form import Form
from bitnet_jax.model.layers import ACTIVATIONS, RMSNorm, apply_rope
from bitnet_jax.model.linear import PackedLinear, QATLinear
from pallas_kernels import get_kernel


def linear(form: Form, cfg: ModelConfig, features: int, dtype: Any, name: str, floats: frozenset[str]) -> nn.Module:
    """The linear layer ``name`` (e.g. ``self_attn.q_proj``) in the form's shape: packed (inference) or
    latent (training) ternary, or a plain float linear when it is one of ``floats``."""
    module = name.rsplit(".", 1)[-1]
    if name in floats:
        return QATLinear(features, dtype, quantize=False, name=module)
    eps = cfg.linear_rms_norm_eps if cfg.use_rms_norm else None
    if form.packed:
        return PackedLinear(features, form.kernel, dtype, eps, name=module)
    return QATLinear(features, dtype, form.quantize, form.weight_quantizer, form.activation_quantizer, eps, name=module)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array,
           segment_ids: jax.Array | None = None) -> jax.Array:
    """Causal GQA attention of ``q [B, T, H, D]`` over ``k, v [B, S, Hkv, D]`` (slot j visible if j <= pos).

    With ``segment_ids [B, T]`` (packed rows of several documents, no cache: ``S == T``) query ``t`` sees
    slot ``j`` iff ``j <= t`` and both belong to the same segment; positions then restart per document
    and only drive RoPE.
    """
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * (d**-0.5)
    if segment_ids is None:
        visible = jnp.arange(k.shape[1])[None, None, :] <= q_positions[:, :, None]  # [B, T, S]
    else:
        causal = jnp.arange(k.shape[1])[None, :] <= jnp.arange(t)[:, None]  # [T, S]
        visible = causal[None] & (segment_ids[:, :, None] == segment_ids[:, None, :])
    scores = jnp.where(visible[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, h * d).astype(v.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and (BitNet) the ``attn_sub_norm`` before ``o_proj``."""

    config: ModelConfig
    form: Form
    floats: frozenset[str] = frozenset()  # this layer's float linears (modules_to_not_convert)

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, cache: LayerCache | None = None, segment_ids=None):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        b, t, _ = x.shape
        hd, heads, kv_heads = cfg.head_size, cfg.num_attention_heads, cfg.num_key_value_heads

        def proj(name: str, features: int) -> nn.Module:
            return linear(self.form, cfg, features, dtype, f"self_attn.{name}", self.floats)

        q = proj("q_proj", heads * hd)(x).reshape(b, t, heads, hd)
        k = proj("k_proj", kv_heads * hd)(x).reshape(b, t, kv_heads, hd)
        v = proj("v_proj", kv_heads * hd)(x).reshape(b, t, kv_heads, hd)
        q, k = apply_rope(q, positions, cfg.rope_theta), apply_rope(k, positions, cfg.rope_theta)
        if cache is not None:
            cache = cache.write(k, v, positions[:, 0])
            k, v = cache.read(rows=b)  # a cache may hold more rows than the batch (serving slots)
        if self.form.packed and segment_ids is None:  # the kernel's attention (fused where the platform has one)
            out = self.form.kernel.attend(q, k, v, positions, attend)
        else:
            out = attend(q, k, v, positions, segment_ids)
        if cfg.sub_norms:
            out = RMSNorm(heads * hd, cfg.rms_norm_eps, dtype, name="attn_sub_norm")(out)
        return proj("o_proj", cfg.hidden_size)(out), cache


class MLP(nn.Module):
    """The gated feed-forward block: ``down(ffn_sub_norm(act(gate(x)) * up(x)))`` (sub-norm when the config has one)."""

    config: ModelConfig
    form: Form
    floats: frozenset[str] = frozenset()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)

        def proj(name: str, features: int) -> nn.Module:
            return linear(self.form, cfg, features, dtype, f"mlp.{name}", self.floats)

        gate = ACTIVATIONS[cfg.hidden_act](proj("gate_proj", cfg.intermediate_size)(x))
        hidden = gate * proj("up_proj", cfg.intermediate_size)(x)
        if cfg.sub_norms:
            hidden = RMSNorm(cfg.intermediate_size, cfg.rms_norm_eps, dtype, name="ffn_sub_norm")(hidden)
        return proj("down_proj", cfg.hidden_size)(hidden)


class DecoderLayer(nn.Module):
    """One pre-norm transformer layer; ``floats`` are its linears that stay float (modules_to_not_convert)."""

    config: ModelConfig
    form: Form
    floats: frozenset[str] = frozenset()

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, cache: LayerCache | None = None, segment_ids=None):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        n = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, name="input_layernorm")(x)
        attn_out, cache = Attention(cfg, self.form, self.floats, name="self_attn")(n, positions, cache, segment_ids)
        h = x + attn_out
        m = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, name="post_attention_layernorm")(h)
        return h + MLP(cfg, self.form, self.floats, name="mlp")(m), cache


class Transformer(nn.Module):
    """The BitNet b1.58 causal LM (any family).

    ``__call__(tokens [B, T], positions [B, T] | None, cache | None, logit_index [B] | None,
    segment_ids [B, T] | None, hidden=False)`` returns ``(float32 logits, cache)``: logits ``[B, T, vocab]``,
    or ``[B, 1, vocab]`` at ``logit_index`` only (``hidden=True``: the final normed hidden states instead). ``segment_ids`` (training on packed rows, no cache) keeps
    attention inside each document of a row (:func:`attend`).
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
    def __call__(self, tokens, positions=None, cache: KVCache | None = None, logit_index=None, segment_ids=None,
                 hidden: bool = False):
        cfg, form, dtype = self.config, self.form, jnp.dtype(self.config.dtype)
        b, t = tokens.shape
        if segment_ids is not None and cache is not None:
            raise ConfigError("segment_ids (packed training rows) cannot be combined with a KV cache")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        embedding, embed_scales = self._table("embed_tokens")
        x = form.shard_batch(head_lib.embed(embedding, tokens, embed_scales).astype(dtype))
        layer_class = form.layer_transform(DecoderLayer)
        if form.scan_layers:
            floats = {cfg.float_linears(i) for i in range(cfg.num_hidden_layers)}
            if len(floats) > 1:
                raise ConfigError("scan_layers needs every layer to have the same float linears; "
                                  "modules_to_not_convert differs between layers (load without scan_layers)")
            layer = layer_class(cfg, form, floats.pop(), parent=None)
            stacked = self.variable(
                "params", scan.LAYERS,
                lambda: scan.init_stacked(lambda k: layer.init(k, x, positions)["params"], self.make_rng("params"),
                                          cfg.num_hidden_layers),
            ).value

            def apply_layer(params, h, layer_cache):
                return layer.apply({"params": params}, h, positions, layer_cache, segment_ids)

            x, new_cache = scan.scan_layers(apply_layer, stacked, x, cache, cfg.num_hidden_layers)
        else:
            new_cache = None if cache is None else []
            for i in range(cfg.num_hidden_layers):
                view = None if cache is None else LayerCache(cache[i]["k"], cache[i]["v"])
                x, view = layer_class(cfg, form, cfg.float_linears(i), name=f"layers_{i}")(x, positions, view, segment_ids)
                if cache is not None:
                    new_cache.append({"k": view.k, "v": view.v})
        x = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, name="norm")(x)
        if logit_index is not None:
            x = jnp.take_along_axis(x, logit_index[:, None, None], axis=1)
        if hidden:  # the normed hidden states: the caller applies the head itself (the greedy screen)
            return x, new_cache
        head, head_scales = (embedding, embed_scales) if cfg.tie_word_embeddings else self._table("lm_head")
        # the training form's head is a plain (differentiable) XLA dot
        kernel = form.kernel if form.packed else get_kernel("xla")
        return head_lib.project(x, head, head_scales, kernel), new_cache
