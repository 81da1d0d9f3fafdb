"""The head kernels (pallas_kernels.cpu.head_*) and bitnet_jax.model.head against NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitnet_jax.errors import ConfigError
from bitnet_jax.model import head as head_lib
from pallas_kernels import cpu, get_kernel

needs_ext = pytest.mark.skipif(not cpu.AVAILABLE, reason="the CPU kernel extension is not built")
SHAPES = [(1, 5, 7), (1, 37, 64), (3, 37, 50), (5, 130, 200), (6, 9, 2560)]  # (M, V, D): odd, tails, M tiles


@pytest.fixture(params=cpu.supported_isas() or ["none"])
def isa(request):
    """Every instruction-set path this CPU can run, each forced in turn."""
    if request.param != "none":
        cpu.set_isa(request.param)
    yield request.param
    if request.param != "none":
        cpu.set_isa(None)


@needs_ext
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_int8_head_is_exact(shape, isa):
    m, v, d = shape
    rng = np.random.default_rng(v + d)
    x = rng.integers(-128, 128, (m, d)).astype(np.int8)
    t = rng.integers(-127, 128, (v, d)).astype(np.int8)
    x[0, :] = -128  # extremes: the AVX2 sign trick and the VNNI +128 offset must both stay exact
    t[0, :] = -127
    got = jax.jit(cpu.head_int8)(x, t)
    np.testing.assert_array_equal(np.asarray(got), x.astype(np.int64) @ t.astype(np.int64).T)


@needs_ext
@pytest.mark.parametrize("table_dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float_head_matches_float64(shape, table_dtype, isa):
    m, v, d = shape
    rng = np.random.default_rng(m + v + d)
    x = rng.standard_normal((m, d)).astype(np.float32)
    t = jnp.asarray(rng.standard_normal((v, d)).astype(np.float32)).astype(table_dtype)
    ref = x.astype(np.float64) @ np.asarray(t.astype(jnp.float32), np.float64).T
    got = np.asarray(jax.jit(cpu.head_float)(jnp.asarray(x), t))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.sqrt(d))


def test_quantize_table_definition():
    t = np.array([[0.5, -1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.5, -0.75, 2.9]], np.float32)
    codes, scale = head_lib.quantize_table(t)
    np.testing.assert_allclose(scale, [1.0 / 127, 1.0, 3.0 / 127], rtol=1e-6)
    np.testing.assert_array_equal(codes[0], [64, -127, 32, 0])  # 63.5 rounds half to even
    np.testing.assert_array_equal(codes[1], [0, 0, 0, 0])
    np.testing.assert_array_equal(codes[2], [127, 64, -32, 123])  # 63.5 -> 64, -31.75 -> -32, 122.77 -> 123
    assert codes.dtype == np.int8 and np.abs(codes).max() <= 127


@pytest.mark.parametrize("backend", ["cpu", "xla"])
def test_project_int8_matches_definition(backend):
    if backend == "cpu" and not cpu.AVAILABLE:
        pytest.skip("the CPU kernel extension is not built")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 40)).astype(np.float32)
    codes, scale = head_lib.quantize_table(rng.standard_normal((29, 40)).astype(np.float32))
    # reference: per-token absmax int8 of x (round half even), exact integer product, both scales
    x2 = x.reshape(-1, 40).astype(np.float64)
    s_x = 127.0 / np.maximum(np.abs(x2).max(axis=1, keepdims=True), 1e-5)
    xq = np.clip(np.rint(x2 * s_x), -128, 127)
    ref = (xq @ codes.astype(np.float64).T) * scale[None, :] / s_x
    got = head_lib.project(jnp.asarray(x), jnp.asarray(codes), jnp.asarray(scale), get_kernel(backend))
    np.testing.assert_allclose(np.asarray(got).reshape(-1, 29), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "xla"])
def test_project_exact_matches_einsum(backend):
    if backend == "cpu" and not cpu.AVAILABLE:
        pytest.skip("the CPU kernel extension is not built")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 48)).astype(np.float32)
    t = rng.standard_normal((33, 48)).astype(np.float32)
    got = head_lib.project(jnp.asarray(x), jnp.asarray(t), None, get_kernel(backend))
    np.testing.assert_allclose(np.asarray(got), np.einsum("btd,vd->btv", x.astype(np.float64), t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny", "tiny-untied"])
def test_model_with_int8_head_runs_and_stays_close(preset):
    """The int8 head changes logits by quantization noise only (tied: the embedding lookup uses it too)."""
    from conftest import random_model

    from bitnet_jax.inference.generate import forward

    model = random_model(preset)
    tokens = np.arange(1, 17, dtype=np.int32)[None, :]
    exact = np.asarray(forward(model, tokens))
    int8 = head_lib.with_int8_head(model)
    table = "embed_tokens" if model.config.tie_word_embeddings else "lm_head"
    assert int8.params[table].dtype == jnp.int8 and int8.form.head == "int8"
    assert ("embed_scales" in int8.params) == model.config.tie_word_embeddings
    quantized = np.asarray(forward(int8, tokens))
    assert quantized.shape == exact.shape
    rel = np.abs(quantized - exact).max() / np.abs(exact).max()
    assert 0 < rel < 0.05


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_quantize_table_chunks_match_one_pass(dtype):
    """Row chunking (the table is quantized QUANTIZE_ROWS rows at a time) changes no code or scale."""
    rng = np.random.default_rng(2)
    rows = 2 * head_lib.QUANTIZE_ROWS + 5
    table = np.array(jnp.asarray(rng.standard_normal((rows, 24)).astype(np.float32)).astype(dtype))
    table[7] = 0.0
    t = table.astype(np.float32)
    amax = np.abs(t).max(axis=1)
    scale = np.where(amax > 0, amax / 127, 1.0).astype(np.float32)
    ref = np.clip(np.rint(t / scale[:, None]), -127, 127).astype(np.int8)
    codes, got_scale = head_lib.quantize_table(table)
    np.testing.assert_array_equal(codes, ref)
    np.testing.assert_array_equal(got_scale, scale)


def test_quantize_head_params_rejects_bad_trees(tiny_model):
    params = head_lib.quantize_head_params(tiny_model.params, True)
    with pytest.raises(ConfigError, match="already int8"):
        head_lib.quantize_head_params(params, True)
    with pytest.raises(ConfigError, match="no 'lm_head'"):
        head_lib.quantize_head_params(tiny_model.params, False)
    with pytest.raises(ConfigError, match="2-D"):
        head_lib.quantize_table(np.zeros(5, np.float32))


def test_with_int8_head_keeps_the_model_and_needs_packed_form(tiny_model):
    from conftest import random_model

    int8 = head_lib.with_int8_head(tiny_model)
    assert int8.config is tiny_model.config and int8.params["embed_tokens"].dtype == jnp.int8
    assert tiny_model.params["embed_tokens"].dtype != jnp.int8  # the original is untouched
    with pytest.raises(ConfigError, match="training"):
        head_lib.with_int8_head(random_model("tiny", packed=False))
    with pytest.raises(ConfigError, match="already int8"):
        head_lib.with_int8_head(int8)
