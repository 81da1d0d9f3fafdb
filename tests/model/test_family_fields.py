"""The model under each family field, in both forms: a training-form (latent) model and the packed model
its export loads to compute the same logits, and a NumPy forward written from the definition checks the
new pieces (SiLU, no sub-norms, the BitLinear input RMSNorm, a float linear)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import random_model

from bitnet_jax import forward, from_pretrained, save_pretrained

TOKENS = [[1, 7, 300, 42, 5, 99]]
FIELDS = {
    "silu-no-subnorms-untied": dict(hidden_act="silu", sub_norms=False, tie_word_embeddings=False),
    "use_rms_norm": dict(use_rms_norm=True, linear_rms_norm_eps=1e-6),
    "float-linear": dict(modules_to_not_convert=("lm_head", "model.layers.1.mlp.up_proj")),
    "head_dim": dict(head_dim=32),
}


def _rms(x, w, eps):
    return w * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)


def _ternary(w):
    s = 1.0 / max(np.mean(np.abs(w)), 1e-5)
    return np.clip(np.round(w * s), -1, 1) / s


def numpy_forward(cfg, params, tokens):
    """The training-form model from the definition (float64 NumPy)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    x = p["embed_tokens"][np.asarray(tokens)]
    t, hd, heads, kv = x.shape[1], cfg.head_size, cfg.num_attention_heads, cfg.num_key_value_heads
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * inv
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    act = {"silu": lambda v: v / (1 + np.exp(-v)), "relu2": lambda v: np.maximum(v, 0) ** 2}[cfg.hidden_act]

    def rope(v):
        return v * cos[None, :, None] + np.concatenate([-v[..., hd // 2:], v[..., : hd // 2]], -1) * sin[None, :, None]

    for i in range(cfg.num_hidden_layers):
        lp = p[f"layers_{i}"]
        floats = cfg.float_linears(i)

        def lin(h, group, name):
            node = lp[group][name]
            if f"{group}.{name}" in floats:
                return h @ node["weight"].T
            if "rms_norm" in node:
                h = _rms(h, node["rms_norm"]["weight"], cfg.linear_rms_norm_eps)
            s = 127.0 / np.maximum(np.abs(h).max(-1, keepdims=True), 1e-5)
            return (np.clip(np.round(h * s), -128, 127) / s) @ _ternary(node["weight"]).T

        h = _rms(x, lp["input_layernorm"]["weight"], cfg.rms_norm_eps)
        q = rope(lin(h, "self_attn", "q_proj").reshape(1, t, heads, hd))
        k = rope(lin(h, "self_attn", "k_proj").reshape(1, t, kv, hd)).repeat(heads // kv, 2)
        v = lin(h, "self_attn", "v_proj").reshape(1, t, kv, hd).repeat(heads // kv, 2)
        scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(hd) + np.triu(np.full((t, t), -np.inf), 1)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        att = np.einsum("bhts,bshd->bthd", probs / probs.sum(-1, keepdims=True), v).reshape(1, t, heads * hd)
        if cfg.sub_norms:
            att = _rms(att, lp["self_attn"]["attn_sub_norm"]["weight"], cfg.rms_norm_eps)
        x = x + lin(att, "self_attn", "o_proj")
        h = _rms(x, lp["post_attention_layernorm"]["weight"], cfg.rms_norm_eps)
        m = act(lin(h, "mlp", "gate_proj")) * lin(h, "mlp", "up_proj")
        if cfg.sub_norms:
            m = _rms(m, lp["mlp"]["ffn_sub_norm"]["weight"], cfg.rms_norm_eps)
        x = x + lin(m, "mlp", "down_proj")
    x = _rms(x, p["norm"]["weight"], cfg.rms_norm_eps)
    return x @ (p["embed_tokens"] if cfg.tie_word_embeddings else p["lm_head"]).T


def _perturb_norms(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        if "norm" in jax.tree_util.keystr(path) else np.asarray(a), params)


@pytest.mark.parametrize("field", FIELDS)
def test_training_form_matches_the_definition_and_its_export(field, tmp_path):
    latent = random_model("tiny", seed=2, packed=False, vocab_size=320, **FIELDS[field])
    latent = latent.__class__(latent.config, _perturb_norms(latent.params, 2), form=latent.form)
    ref = numpy_forward(latent.config, latent.params, TOKENS)
    mine = np.asarray(forward(latent, TOKENS))
    assert np.mean(np.all(np.abs(mine - ref) <= 1e-4, -1)) >= 0.6, np.abs(mine - ref).max()
    packed = from_pretrained(save_pretrained(latent, tmp_path / "m"))
    assert packed.config.replace(head_dim=None) == latent.config.replace(head_dim=None)
    assert packed.config.head_size == latent.config.head_size
    got = np.asarray(forward(packed, TOKENS))
    assert np.mean(np.all(np.abs(got - ref) <= 1e-4, -1)) >= 0.6, np.abs(got - ref).max()
