"""Interpret-mode exactness of every ternary-matmul backend against the int64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import pallas_kernels
from pallas_kernels import cpu, tpu, xla
from pallas_kernels.gpu import mosaic as gpu_mosaic, triton as gpu_triton
from bitnet_jax.errors import KernelError
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
    assert set(pallas_kernels.BACKENDS) == set(MODULES) | {"cpu"}  # cpu: tests/kernels/test_cpu_kernel.py
    if cpu.AVAILABLE:
        assert pallas_kernels.get_kernel("cpu").layout.name == "tile16"
    for name in MODULES:
        assert pallas_kernels.get_kernel(name).layout.name == "rows4", name


@pytest.mark.parametrize("backend", sorted(MODULES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_interpret_matches_reference(backend, shape):
    seed = abs(hash((backend, shape))) % 2**32  # fresh inputs per case
    x, w = _operands(seed, *shape)
    kernel = pallas_kernels.get_kernel(backend, interpret=True)
    got = kernel.matmul(jnp.asarray(x), kernel.pack(jnp.asarray(w)))
    assert got.dtype == jnp.int32 and got.shape == (shape[0], shape[1])
    np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w))


def test_extreme_values_exact():
    """All -128 activations against all +-1 weights: the largest magnitudes stay exact in int32."""
    k = 384
    x = np.full((2, k), -128, np.int8)
    w = np.concatenate([np.ones((4, k), np.int8), -np.ones((4, k), np.int8)])
    for backend in MODULES:
        kernel = pallas_kernels.get_kernel(backend, interpret=True)
        got = kernel.matmul(jnp.asarray(x), kernel.pack(jnp.asarray(w)))
        np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w), err_msg=backend)


def test_poison_is_visible():
    """The interpret-mode output poison is really there: a raw call with an unwritten tile shows it."""
    bm, bn, bk, mp, rp, kp = 32, 128, 128, 32, 128, 128
    call = tpu.build_call(mp, rp, kp, bm, bn, bk, kernel=lambda x_ref, w_ref, o_ref: None, interpret=True)
    out = np.asarray(call(jnp.zeros((mp, kp), jnp.int8), jnp.zeros((rp, kp), jnp.uint8)))
    assert (out == np.iinfo(np.int32).max).all()


def test_wrong_operands_raise_clear_errors():
    x = jnp.zeros((2, 128), jnp.int8)
    with pytest.raises(KernelError, match="rows4"):
        tpu.ternary_matmul(x, jnp.zeros((4, 64), jnp.uint8), interpret=True)
    kernel = pallas_kernels.get_kernel("tpu", interpret=True)
    w = kernel.pack(jnp.zeros((4, 128), jnp.int8))
    with pytest.raises(KernelError, match="int8"):
        kernel.matmul(x.astype(jnp.int32), w)
    with pytest.raises(KernelError, match="K=64"):
        kernel.matmul(jnp.zeros((2, 64), jnp.int8), w)


def test_weight_packed_for_another_kernel_is_refused():
    """A weight carries its layout: multiplying it by a kernel of another layout is an error, not garbage."""
    w = np.random.default_rng(0).integers(-1, 2, (16, 32)).astype(np.int8)
    tile16 = pallas_kernels.pack(w, "tile16")
    with pytest.raises(KernelError, match="layout 'tile16' cannot be multiplied by kernel 'xla'"):
        pallas_kernels.get_kernel("xla").matmul(jnp.zeros((1, 32), jnp.int8), tile16)
    with pytest.raises(KernelError, match="PackedWeight"):
        pallas_kernels.get_kernel("xla").matmul(jnp.zeros((1, 32), jnp.int8), tile16.codes)
    rows4 = pallas_kernels.repack(tile16, "rows4")
    assert pallas_kernels.repack(rows4, "rows4") is rows4  # same layout: nothing to do
    np.testing.assert_array_equal(pallas_kernels.unpack(rows4), w)
    got = pallas_kernels.get_kernel("xla").matmul(jnp.ones((1, 32), jnp.int8), rows4)
    np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(np.ones((1, 32), np.int8), w))


def test_select_kernel(monkeypatch):
    monkeypatch.delenv(pallas_kernels.ENV_VAR, raising=False)
    assert pallas_kernels.default_backend("cpu") == ("cpu" if cpu.AVAILABLE else "xla")
    assert pallas_kernels.default_backend("tpu") == "tpu"
    assert pallas_kernels.select_kernel("triton").name == "triton"
    monkeypatch.setenv(pallas_kernels.ENV_VAR, "mosaic_gpu")
    assert pallas_kernels.select_kernel().name == "mosaic_gpu"
    assert pallas_kernels.select_kernel("xla").name == "xla"
    monkeypatch.setenv(pallas_kernels.ENV_VAR, "cublas")
    with pytest.raises(KernelError, match="BITNET_JAX_KERNEL"):
        pallas_kernels.select_kernel()
    # one object per choice: equal selections reuse the same compiled programs
    monkeypatch.delenv(pallas_kernels.ENV_VAR)
    assert pallas_kernels.select_kernel("xla") is pallas_kernels.get_kernel("xla")


def test_cuda_capability_ranges(monkeypatch):
    """Hopper-only wgmma code goes to compute capability 9.x only; Ampere and Blackwell get Triton."""
    from pallas_kernels import kernel as kernel_lib

    for capability, expected in (((8, 0), "triton"), ((9, 0), "mosaic_gpu"), ((9, 5), "mosaic_gpu"),
                                 ((10, 0), "triton"), ((12, 0), "triton"), (None, "triton")):
        monkeypatch.setattr(kernel_lib, "_cuda_capability", lambda c=capability: c)
        assert pallas_kernels.default_backend("cuda") == expected, capability


def test_model_logits_identical_through_every_backend():
    """Whole-model logits (tiny preset, packed) are bit-identical through every backend (interpret)."""
    from bitnet_jax.config import ModelConfig
    from bitnet_jax.model import Form, Transformer

    cfg = ModelConfig.preset("tiny")
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, size=(1, 5)), jnp.int32)
    params = Transformer(cfg, Form(kernel=pallas_kernels.get_kernel("xla"))).init(jax.random.key(0), tokens)
    logits = {}
    for backend in MODULES:  # all four share the rows4 layout, so the same parameters serve every one
        form = Form(kernel=pallas_kernels.get_kernel(backend, interpret=True))
        out, _ = Transformer(cfg, form).apply(params, tokens)
        logits[backend] = np.asarray(out)
    assert np.isfinite(logits["xla"]).all() and np.abs(logits["xla"]).max() > 0
    for backend, value in logits.items():
        np.testing.assert_array_equal(value, logits["xla"], err_msg=backend)
