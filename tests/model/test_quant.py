"""Quantizers and 2-bit packing against NumPy references written from the BitNet b1.58 definition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from bitnet_jax.errors import KernelError
from bitnet_jax.model import quant
from bitnet_jax.model.linear import PackedLinear, QATLinear
from pallas_kernels import layouts


def np_weight_quant(w):
    """absmean: s = 1/max(mean|W|, 1e-5); Wq = clip(round_half_even(W*s), -1, 1)."""
    w = w.astype(np.float32)
    s = np.float32(1) / max(np.float32(np.mean(np.abs(w), dtype=np.float64)), np.float32(1e-5))
    return np.clip(np.round(w * s), -1, 1).astype(np.int8), s


def np_act_quant(x):
    """absmax per token: s = 127/max(max|x|, 1e-5); xq = clip(round_half_even(x*s), -128, 127)."""
    x = x.astype(np.float32)
    s = np.float32(127) / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), np.float32(1e-5))
    return np.clip(np.round(x * s), -128, 127).astype(np.int8), s


def np_pack_rows4(w):
    """Bit-by-bit packing from the layout's definition: byte [r, c] holds rows r + q*R in bits 2q+1:2q."""
    n, k = w.shape
    r_count = n // 4
    out = np.zeros((r_count, k), np.uint8)
    for q in range(4):
        for r in range(r_count):
            for c in range(k):
                out[r, c] |= np.uint8((int(w[q * r_count + r, c]) + 1) << (2 * q))
    return out


@pytest.mark.parametrize("shape", [(8, 16), (64, 40), (12, 7)])
def test_weight_quant_matches_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    w = rng.normal(0, 0.05, shape).astype(np.float32)
    wq, s = quant.quantize_weights(jnp.asarray(w))
    ref_q, ref_s = np_weight_quant(w)
    np.testing.assert_allclose(float(s), ref_s, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(wq), ref_q)
    assert set(np.unique(ref_q)) == {-1, 0, 1}


def test_weight_quant_zero_tensor_uses_eps():
    wq, s = quant.quantize_weights(jnp.zeros((4, 4)))
    assert float(s) == pytest.approx(1e5)
    assert not np.asarray(wq).any()


def test_round_half_to_even():
    # mean|W| = 1 so s_w = 1: W*s hits exact halves, which must round to even
    w = np.array([[0.5, -0.5, 1.5, -1.5, 1.0, 1.0, 1.0, 1.0]], np.float32)
    w = w / np.mean(np.abs(w))
    wq, _ = quant.quantize_weights(jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(wq), np_weight_quant(w)[0])
    # activations: max|x| = 127 gives s = 1, so 2.5 -> 2 and 3.5 -> 4, -0.5 -> -0
    x = np.array([[127.0, 2.5, 3.5, -0.5, -2.5]], np.float32)
    xq, _ = quant.quantize_activations(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(xq), [[127, 2, 4, 0, -2]])


@pytest.mark.parametrize("shape", [(3, 17), (2, 5, 64)])
def test_activation_quant_matches_numpy(shape):
    rng = np.random.default_rng(7)
    x = (rng.normal(0, 3, shape) * rng.uniform(0.01, 10, shape[:-1] + (1,))).astype(np.float32)
    x[..., 0] = 0.0
    xq, s = quant.quantize_activations(jnp.asarray(x))
    ref_q, ref_s = np_act_quant(x)
    np.testing.assert_allclose(np.asarray(s), ref_s, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(xq), ref_q)


def test_activation_quant_all_zero_row():
    xq, s = quant.quantize_activations(jnp.zeros((2, 8)))
    assert not np.asarray(xq).any()
    np.testing.assert_allclose(np.asarray(s), 127 / 1e-5)


def test_straight_through_gradients_are_identity():
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(0, 0.1, (8, 12)), jnp.float32)
    x = jnp.asarray(rng.normal(0, 1, (3, 12)), jnp.float32)
    g = jnp.asarray(rng.normal(0, 1, (8, 12)), jnp.float32)
    grad_w = jax.grad(lambda w_: jnp.sum(quant.fake_quantize_weights(w_) * g))(w)
    np.testing.assert_allclose(np.asarray(grad_w), np.asarray(g), rtol=0, atol=0)
    grad_x = jax.grad(lambda x_: jnp.sum(quant.fake_quantize_activations(x_) * x_.shape[0]))(x)
    np.testing.assert_allclose(np.asarray(grad_x), np.full(x.shape, 3.0), rtol=0, atol=0)
    # the forward values are the dequantized ones
    ref_q, ref_s = np_weight_quant(np.asarray(w))
    np.testing.assert_allclose(np.asarray(quant.fake_quantize_weights(w)), ref_q / ref_s, rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 3), (16, 9), (8, 1)])
def test_pack_matches_bitwise_definition_and_roundtrips(shape):
    rng = np.random.default_rng(shape[0])
    w = rng.integers(-1, 2, shape).astype(np.int8)
    packed = layouts.pack_rows4(jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(packed), np_pack_rows4(w))
    np.testing.assert_array_equal(np.asarray(layouts.unpack_rows4(packed)), w)
    # NumPy inputs take the NumPy path and agree
    np.testing.assert_array_equal(layouts.pack_rows4(w), np_pack_rows4(w))


def test_pack_rejects_rows_not_divisible_by_four():
    with pytest.raises(KernelError, match="divisible by 4"):
        layouts.pack_rows4(np.zeros((6, 4), np.int8))
    # the layout-level packer pads with zero rows instead and keeps the true N
    w = np.random.default_rng(0).integers(-1, 2, (6, 4)).astype(np.int8)
    packed = pallas_kernels.pack(w, "rows4")
    assert packed.shape == (6, 4) and packed.codes.shape == (2, 4)
    np.testing.assert_array_equal(pallas_kernels.unpack(packed), w)


def np_bitlinear(x, w):
    """Reference layer output (xq @ Wq.T) / (s_x * s_w) in float64 from the definition."""
    wq, s_w = np_weight_quant(w)
    xq, s_x = np_act_quant(x)
    return (xq.astype(np.int64) @ wq.astype(np.int64).T) / (s_x.astype(np.float64) * np.float64(s_w))


@pytest.mark.parametrize("backend", pallas_kernels.BACKENDS)
def test_bitlinear_forms_agree_with_reference(backend):
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.05, (24, 40)).astype(np.float32)
    x = rng.normal(0, 1, (2, 5, 40)).astype(np.float32)
    ref = np_bitlinear(x.reshape(-1, 40), w).reshape(2, 5, 24)
    train_out = QATLinear(24).apply({"params": {"weight": jnp.asarray(w)}}, jnp.asarray(x))
    kernel = pallas_kernels.get_kernel(backend)
    wq, s_w = quant.quantize_weights(jnp.asarray(w))
    packed_params = {"weight_packed": kernel.pack(wq), "weight_scale": 1.0 / s_w}
    infer_out = PackedLinear(24, kernel).apply({"params": packed_params}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(train_out), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(infer_out), ref, rtol=1e-5, atol=1e-5)


def test_bitlinear_training_form_is_differentiable():
    rng = np.random.default_rng(4)
    w = jnp.asarray(rng.normal(0, 0.05, (8, 16)), jnp.float32)
    x = jnp.asarray(rng.normal(0, 1, (3, 16)), jnp.float32)
    layer = QATLinear(8)
    grad = jax.grad(lambda w_: jnp.sum(layer.apply({"params": {"weight": w_}}, x) ** 2))(w)
    assert np.all(np.isfinite(np.asarray(grad))) and np.abs(np.asarray(grad)).sum() > 0
