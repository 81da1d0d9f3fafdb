"""The training step's pieces against NumPy written from the definitions: STE gradients, the two-stage
schedule (LR drop, weight decay off in stage 2), the full-precision switch, the f32 loss."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bitnet_jax.model.linear import PackedLinear, QATLinear
from bitnet_jax.train.step import learning_rate_schedule, make_optimizer, stage2_start, token_nll
from bitnet_jax.model import Transformer
from tests.train_helpers import tiny_config


def _np_fake_quant(x, w):
    """Dequantized activations (per-token absmax int8) and weights (absmean ternary), from the definition."""
    s_x = 127.0 / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
    xd = np.clip(np.round(x * s_x), -128, 127) / s_x
    s_w = 1.0 / max(np.abs(w).mean(), 1e-5)
    wd = np.clip(np.round(w * s_w), -1, 1) / s_w
    return xd, wd


def test_ste_gradients_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 16)).astype(np.float32)
    w = (rng.normal(size=(8, 16)) * 0.05).astype(np.float32)
    g = rng.normal(size=(3, 5, 8)).astype(np.float32)  # upstream gradient: loss = sum(y * g)
    layer = QATLinear(8)

    def loss(params, x):
        return jnp.sum(layer.apply({"params": params}, x) * g)

    gw, gx = jax.grad(loss, argnums=(0, 1))({"weight": jnp.asarray(w)}, jnp.asarray(x))
    xd, wd = _np_fake_quant(x.astype(np.float64), w.astype(np.float64))
    # forward uses the dequantized values; the STE passes gradients straight through both quantizers
    np.testing.assert_allclose(np.asarray(layer.apply({"params": {"weight": w}}, x)), xd @ wd.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw["weight"]), np.einsum("btn,btk->nk", g, xd), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gx), g @ wd, rtol=1e-4, atol=1e-5)


def test_full_precision_switch_is_a_plain_matmul():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 16)).astype(np.float32)
    w = rng.normal(size=(8, 16)).astype(np.float32)
    y = QATLinear(8, quantize=False).apply({"params": {"weight": w}}, x)
    np.testing.assert_allclose(np.asarray(y), x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)
    quantized = QATLinear(8).apply({"params": {"weight": w}}, x)
    assert not np.allclose(np.asarray(quantized), np.asarray(y), atol=1e-3)  # the switch changes something


def test_two_stage_schedule(tmp_path):
    cfg = tiny_config(tmp_path, "training.steps=100", "schedule.warmup_steps=10", "optimizer.lr=0.01",
                      "schedule.stage2_fraction=0.5", "schedule.stage2_lr_scale=0.4", "schedule.final_lr_scale=0.1")
    lr = learning_rate_schedule(cfg)
    s2 = stage2_start(cfg)
    assert s2 == 50

    def expected(t):  # written from the documented definition
        warm = min(1.0, (t + 1) / 10)
        start, length, peak = (0, 100, 0.01) if t < 50 else (50, 50, 0.004)
        p = min(max((t - start) / length, 0.0), 1.0)
        return peak * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    for t in (0, 5, 9, 10, 30, 49, 50, 75, 99):
        assert float(lr(t)) == np.float32(expected(t)) or abs(float(lr(t)) - expected(t)) < 1e-7
    assert float(lr(50)) < 0.8 * float(lr(49))  # the learning rate drops when stage 2 starts
    assert float(lr(50)) == np.float32(0.004)


def test_weight_decay_only_in_stage_one(tmp_path):
    cfg = tiny_config(tmp_path, "training.steps=4", "schedule.warmup_steps=0", "optimizer.lr=0.1",
                      "optimizer.weight_decay=0.5", "schedule.stage2_fraction=0.5", "optimizer.clip_norm=0")
    tx = make_optimizer(cfg)
    params = {"w": jnp.ones((2, 2)), "norm": jnp.ones((2,))}
    state = tx.init(params)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    lr = learning_rate_schedule(cfg)
    for t in range(4):
        before = np.asarray(params["w"])
        updates, state = tx.update(zero, state, params)
        params = optax.apply_updates(params, updates)
        # zero gradient: AdamW moves a matrix only by -lr * wd * p (decoupled decay), and only in stage 1
        want = before * (1 - float(lr(t)) * 0.5) if t < 2 else before
        np.testing.assert_allclose(np.asarray(params["w"]), want, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(params["norm"]), 1.0)  # norm gains never decay


def test_loss_is_float32_cross_entropy(tmp_path):
    cfg = tiny_config(tmp_path)
    model_cfg = cfg.model.replace(dtype="bfloat16")
    module = Transformer(model_cfg)
    windows = jnp.asarray(np.random.default_rng(0).integers(0, model_cfg.vocab_size, (2, 9)), jnp.int32)
    params = module.init(jax.random.PRNGKey(0), windows[:, :-1])["params"]
    nll = token_nll(module, params, windows)
    assert nll.dtype == jnp.float32
    logits = np.asarray(module.apply({"params": params}, windows[:, :-1])[0], dtype=np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    ref = -np.take_along_axis(logp, np.asarray(windows)[:, 1:, None], -1).mean()
    assert abs(float(nll) - ref) < 1e-4
