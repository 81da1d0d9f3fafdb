"""Interpret-mode exactness of every ternary-matmul backend against the int64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import pallas_kernels
from pallas_kernels import gpu_mosaic, gpu_triton, tpu, xla
from pallas_kernels.reference import ternary_matmul_reference

MODULES = {"xla": xla, "tpu": tpu, "mosaic_gpu": gpu_mosaic, "triton": gpu_triton}
# (M, N, K): decode and prefill sizes; N/4 and K not multiples of any block (padded), and exact fits.
SHAPES = [(1, 264, 200), (70, 256, 384)]


def _operands(seed: int, m: int, n: int, k: int):
    rng = np.random.default_rng(seed)
    w = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    return x, w


def test_backends_listed():
    assert set(pallas_kernels.BACKENDS) == set(MODULES)
    for name, module in MODULES.items():
        assert module.LAYOUT == "rows4", name


@pytest.mark.parametrize("backend", sorted(MODULES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_interpret_matches_reference(backend, shape):
    seed = abs(hash((backend, shape))) % 2**32  # fresh inputs per case
    x, w = _operands(seed, *shape)
    packed = pallas_kernels.pack(jnp.asarray(w), backend)
    got = pallas_kernels.ternary_matmul(jnp.asarray(x), packed, backend=backend, interpret=True)
    assert got.dtype == jnp.int32 and got.shape == (shape[0], shape[1])
    np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w))


def test_extreme_values_exact():
    """All -128 activations against all +-1 weights: the largest magnitudes stay exact in int32."""
    k = 384
    x = np.full((2, k), -128, np.int8)
    w = np.concatenate([np.ones((4, k), np.int8), -np.ones((4, k), np.int8)])
    for backend in MODULES:
        got = pallas_kernels.ternary_matmul(jnp.asarray(x), pallas_kernels.pack(jnp.asarray(w), backend),
                                            backend=backend, interpret=True)
        np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w), err_msg=backend)


def test_poison_is_visible():
    """The interpret-mode output poison is really there: a raw call with an unwritten tile shows it."""
    bm, bn, bk, mp, rp, kp = 32, 128, 128, 32, 128, 128
    call = tpu.build_call(mp, rp, kp, bm, bn, bk, kernel=lambda x_ref, w_ref, o_ref: None, interpret=True)
    out = np.asarray(call(jnp.zeros((mp, kp), jnp.int8), jnp.zeros((rp, kp), jnp.uint8)))
    assert (out == np.iinfo(np.int32).max).all()


def test_wrong_operands_raise_clear_errors():
    x = jnp.zeros((2, 128), jnp.int8)
    with pytest.raises(ValueError, match="rows4"):
        tpu.ternary_matmul(x, jnp.zeros((4, 64), jnp.uint8), interpret=True)
    with pytest.raises(TypeError, match="int8"):
        pallas_kernels.ternary_matmul(x.astype(jnp.int32), jnp.zeros((4, 128), jnp.uint8), backend="tpu")


def test_resolve_backend(monkeypatch):
    monkeypatch.delenv(pallas_kernels.ENV_VAR, raising=False)
    assert pallas_kernels.resolve_backend(platform="cpu") == "xla"
    assert pallas_kernels.resolve_backend(platform="tpu") == "tpu"
    assert pallas_kernels.resolve_backend("triton", platform="tpu") == "triton"
    monkeypatch.setenv(pallas_kernels.ENV_VAR, "mosaic_gpu")
    assert pallas_kernels.resolve_backend() == "mosaic_gpu"
    assert pallas_kernels.resolve_backend("xla") == "xla"
    monkeypatch.setenv(pallas_kernels.ENV_VAR, "cublas")
    with pytest.raises(ValueError, match="BITNET_JAX_KERNEL"):
        pallas_kernels.resolve_backend()


def test_repack_rows4_is_identity_for_every_backend():
    codes = np.random.default_rng(0).integers(0, 3, size=(8, 16)).astype(np.uint8)
    for backend in MODULES:
        assert pallas_kernels.repack_rows4(codes, backend) is codes


def test_model_logits_identical_through_every_backend():
    """Whole-model logits (tiny preset, packed) are bit-identical through every backend (interpret)."""
    from bitnet_jax.config import ModelConfig
    from bitnet_jax.model import Transformer

    cfg = ModelConfig.preset("tiny")
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, size=(1, 5)), jnp.int32)
    params = Transformer(cfg, packed=True, kernel_backend="xla").init(jax.random.key(0), tokens)
    logits = {}
    for backend in MODULES:
        out, _ = Transformer(cfg, packed=True, kernel_backend=backend).apply(params, tokens)
        logits[backend] = np.asarray(out)
    assert np.isfinite(logits["xla"]).all() and np.abs(logits["xla"]).max() > 0
    for backend, value in logits.items():
        np.testing.assert_array_equal(value, logits["xla"], err_msg=backend)
