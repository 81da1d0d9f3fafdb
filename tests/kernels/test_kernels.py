"""Interpret-mode exactness of every ternary-matmul backend against the int64 NumPy reference, the
kernel object's dispatch (decode vs prefill by M, compile-failure fallback), and NumPy models of the
hardware-only index math."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import jax
import jax.extend
import jax.numpy as jnp

import pallas_kernels
from bitnet_jax.errors import KernelError, KernelFallbackWarning
from pallas_kernels import _tiling, cpu, tpu, xla
from pallas_kernels.gpu import mosaic as gpu_mosaic, triton as gpu_triton
from pallas_kernels.layouts import pack_rows4
from pallas_kernels.reference import ternary_matmul_reference

MODULES = {"xla": xla, "tpu": tpu, "mosaic_gpu": gpu_mosaic, "triton": gpu_triton}
PALLAS = {"tpu": tpu, "mosaic_gpu": gpu_mosaic, "triton": gpu_triton}
# (M, N, K): M through the GEMV (1, 3), decode (13), prefill (17, 130) paths; N/4 and K odd (padded),
# and an N that is not a multiple of 4 (rows4 pads it with zero rows).
SHAPES = [(1, 268, 201), (3, 132, 515), (13, 148, 389), (17, 84, 263), (130, 260, 131), (2, 66, 150)]
# 2B4T matmuls (N x K) and the M values the model runs them at.
MODEL_SHAPES = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]


def _operands(seed: int, m: int, n: int, k: int):
    rng = np.random.default_rng(seed)
    w = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    x = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    return x, w


def _check(fn, x, w, **kw):
    got = fn(jnp.asarray(x), jnp.asarray(pack_rows4(w)), **kw)
    np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w))


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


@pytest.mark.parametrize(
    "name, fn, cfg, shape",
    [
        # Mosaic GPU: 4 K splits, with and without the double-buffered code scratch
        ("mosaic split-K overlap", gpu_mosaic.ternary_matmul, gpu_mosaic.Config(bm=8, splits=4, steps=4), (5, 136, 1024)),
        ("mosaic split-K serial", gpu_mosaic.ternary_matmul, gpu_mosaic.Config(bm=8, splits=2, steps=2, overlap=False),
         (1, 264, 512)),
        # Triton: dp4a GEMV over 2 row blocks x 4 K splits; int8-dot decode with 2 splits
        ("triton gemv", gpu_triton.ternary_matmul, gpu_triton.Config(bm=2, bn=16, bk=256, splits=4, gemv=True),
         (2, 128, 1024)),
        ("triton decode", gpu_triton.ternary_matmul, gpu_triton.Config(bm=16, bn=32, bk=128, splits=2), (9, 200, 512)),
        # TPU: a ragged last row block (300 rows in blocks of 128) in decode and prefill
        ("tpu ragged decode", tpu.ternary_matmul, tpu.Config(8, 128, 1024, 8, 300, 1024, 512), (3, 1200, 1024)),
        ("tpu ragged prefill", tpu.ternary_matmul, tpu.Config(32, 128, 256, 64, 300, 512, 256), (40, 1200, 512)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_split_k_and_ragged_tiles_exact(name, fn, cfg, shape):
    x, w = _operands(abs(hash(name)) % 2**32, *shape)
    _check(fn, x, w, interpret=True, cfg=cfg)


def test_extreme_values_exact():
    """All -128 activations against all +-1 weights (largest magnitudes) through every path."""
    k = 1024
    w = np.concatenate([np.ones((4, k), np.int8), -np.ones((4, k), np.int8)])
    for m in (1, 2, 20):  # GEMV, decode, prefill
        x = np.full((m, k), -128, np.int8)
        for backend in MODULES:
            kernel = pallas_kernels.get_kernel(backend, interpret=True)
            got = kernel.matmul(jnp.asarray(x), kernel.pack(jnp.asarray(w)))
            np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w), err_msg=f"{backend} M={m}")


def test_poison_is_visible():
    """The interpret-mode output poison is really there: a raw call with an unwritten tile shows it."""
    bm, bn, bk, mp, rp, kp = 32, 128, 128, 32, 128, 128
    call = tpu.build_call(mp, rp, kp, bm, bn, bk, kernel=lambda x_ref, w_ref, o_ref: None, interpret=True)
    out = np.asarray(call(jnp.zeros((mp, kp), jnp.int8), jnp.zeros((rp, kp), jnp.uint8)))
    assert (out == np.iinfo(np.int32).max).all()


def test_dp4a_reference_matches_its_definition():
    """The interpreted stand-in for PTX ``dp4a.u32.s32``: unsigned bytes of a times signed bytes of b."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(-(2**31), 2**31, 1000, dtype=np.int64).astype(np.int32)
    c = rng.integers(-(2**20), 2**20, 1000).astype(np.int32)
    ua = a.view(np.uint8).reshape(-1, 4).astype(np.int64)  # little-endian: byte i = bits 8i+7:8i
    sb = b.view(np.int8).reshape(-1, 4).astype(np.int64)
    expected = c + (ua * sb).sum(axis=1)
    got = gpu_triton.dp4a_reference(jnp.asarray(a), jnp.asarray(b), jnp.asarray(c))
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_mosaic_hardware_index_math():
    """A NumPy model of the Mosaic GPU kernel as it runs on hardware (x tiles [bm, bk] of x, read
    through a transposed view), using the module's own block-index functions: the same tiles as the
    interpreted variant (tiles of x^T) and the exact product after ``finish``."""
    m, n, k = 3, 160, 512
    r = n // 4
    x, w = _operands(11, m, n, k)
    cfg = gpu_mosaic.decode_config(m, r, k)
    assert cfg.splits > 1 and cfg.overlap  # the split-K, double-buffered path
    mp, rp, kp = gpu_mosaic.padded_dims(m, r, k, cfg)
    xp, wp = (np.asarray(a) for a in _tiling.pad_operands(jnp.asarray(x), jnp.asarray(pack_rows4(w)), mp, rp, kp))
    bn, bm, bk = cfg.bn, cfg.bm, cfg.bk
    per = kp // bk // cfg.splits
    out = np.full((cfg.splits, 4, rp, mp), np.iinfo(np.int32).max, np.int64)
    for j in range(rp // bn):
        for s in range(cfg.splits):
            for i in range(mp // bm):
                acc = np.zeros((4, bn, bm), np.int64)
                for t in range(per):
                    wj, wk = gpu_mosaic.w_block(j, s, t, per)
                    xi, xk = gpu_mosaic.x_block(i, s, t, per, interpret=False)
                    ik, ii = gpu_mosaic.x_block(i, s, t, per, interpret=True)
                    tile = wp[wj * bn:(wj + 1) * bn, wk * bk:(wk + 1) * bk].astype(np.int64)
                    x_tile = xp[xi * bm:(xi + 1) * bm, xk * bk:(xk + 1) * bk].astype(np.int64)
                    np.testing.assert_array_equal(xp.T[ik * bk:(ik + 1) * bk, ii * bm:(ii + 1) * bm], x_tile.T)
                    for q in range(4):
                        acc[q] += ((tile >> (2 * q)) & 3) @ x_tile.T
                out[s, :, j * bn:(j + 1) * bn, i * bm:(i + 1) * bm] = acc
    assert (out != np.iinfo(np.int32).max).all()  # every partial written
    got = _tiling.finish(jnp.asarray(out.astype(np.int32)), jnp.asarray(x), r, transposed=True)
    np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w))


def _swizzle128(rows: int, cols: int) -> np.ndarray:
    """Byte offsets of an int8 [rows, 128] SMEM buffer tiled (8, 128) with the 128-byte swizzle: 16-byte
    chunk ``c // 16`` of row ``r`` lands at chunk ``(c // 16) ^ (r % 8)`` of its 1024-byte tile."""
    assert cols == 128
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return (r // 8) * 1024 + (r % 8) * 128 + (((c // 16) ^ (r % 8)) * 16) + c % 16


def test_mosaic_smem_tiles_keep_the_swizzle_pattern():
    """For every config the kernel uses at 2B4T shapes: int8 rows are exactly one 128-byte swizzle span,
    tiles are whole (8, 128) swizzle atoms, the swizzled addressing is a bijection, and every code plane
    (slot, q) of the scratch starts on an atom, so its sub-view addresses like a standalone buffer."""
    configs = {gpu_mosaic.config_for(m, n // 4, k) for n, k in MODEL_SHAPES for m in (1, 8, 16, 512)}
    assert any(c.splits > 1 for c in configs) and any(c.bm == 64 for c in configs)
    for cfg in configs:
        assert cfg.bk * np.dtype(np.int8).itemsize == cfg.swizzle == 128, cfg
        assert cfg.bn % 8 == 0 and cfg.bm % 8 == 0, cfg
        plane = _swizzle128(cfg.bn, cfg.bk)
        assert sorted(plane.ravel().tolist()) == list(range(cfg.bn * cfg.bk))
        slots = 2 if cfg.overlap else 1
        scratch = np.concatenate([(slot * 4 + q) * cfg.bn * cfg.bk + plane for slot in range(slots) for q in range(4)])
        assert sorted(scratch.ravel().tolist()) == list(range(slots * 4 * cfg.bn * cfg.bk))
        assert all((slot * 4 + q) * cfg.bn * cfg.bk % 1024 == 0 for slot in range(slots) for q in range(4))


def _pads_weights(fn, m: int, r: int, k: int) -> bool:
    """Whether tracing ``fn`` (x [M, K] int8, packed [R, K] uint8) pads -- copies -- the packed weights."""
    args = jax.ShapeDtypeStruct((m, k), jnp.int8), jax.ShapeDtypeStruct((r, k), jnp.uint8)

    def pads(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pad" and eqn.invars[0].aval.dtype == jnp.uint8:
                return True
            if any(pads(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params)):
                return True
        return False

    return pads(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("backend", sorted(PALLAS))
def test_model_shapes_read_weights_in_place_and_fill_the_gpu(backend):
    """At the 2B4T shapes no weight is padded (that would copy it on every call), and the GPU decode
    grids have at least one program per SM unless the partial-traffic cap binds."""
    module = PALLAS[backend]
    assert _pads_weights(module.ternary_matmul, 1, 67, 200)  # the check can fail: odd shapes are padded
    for n, k in MODEL_SHAPES:
        r = n // 4
        for m in (1, 8, 16, 512):
            assert not _pads_weights(module.ternary_matmul, m, r, k), (backend, m, n, k)
            cfg = module.config_for(m, r, k)
            if backend != "tpu" and m <= module.DECODE_MAX_M:
                programs = -(-r // cfg.bn) * cfg.splits
                capped = cfg.splits == _tiling.divisor_at_most(k // cfg.bk, max(1, k // (32 * cfg.bm)))
                assert programs >= _tiling.DEFAULT_CORES or capped, (backend, m, n, k, cfg)


def test_kernel_dispatches_by_m():
    """The kernel object takes its decode function up to decode_max_m rows and the prefill one above."""
    calls = []

    def tagged(tag):
        def fn(x, codes):
            calls.append((tag, x.shape[0]))
            return xla.ternary_matmul(x, codes)

        return fn

    base = pallas_kernels.get_kernel("xla")
    kernel = pallas_kernels.Kernel("t", base.layout, tagged("prefill"), decode_fn=tagged("decode"), decode_max_m=16)
    rng = np.random.default_rng(2)
    w = kernel.pack(jnp.asarray(rng.integers(-1, 2, (8, 64)), jnp.int8))
    for m in (1, 16, 17):
        x = rng.integers(-128, 128, (m, 64)).astype(np.int8)
        got = kernel.matmul(jnp.asarray(x), w)
        np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, np.asarray(kernel.unpack(w))))
    assert calls == [("decode", 1), ("decode", 16), ("prefill", 17)]
    for name, module in PALLAS.items():
        k = pallas_kernels.get_kernel(name, interpret=True)
        assert k.decode_max_m == module.DECODE_MAX_M and k.matmul_for(1) is k.decode_fn, name
        assert k.matmul_for(module.DECODE_MAX_M + 1) is k.matmul_fn, name


def test_compile_failure_falls_back_to_xla_with_one_warning():
    """A compiled (not interpreted) Pallas kernel cannot compile on a CPU host: the kernel multiplies
    through the xla kernel instead, exactly, after one one-line KernelFallbackWarning per shape."""
    x, w = _operands(4, 2, 64, 96)
    kernel = pallas_kernels.get_kernel("mosaic_gpu", interpret=False)
    packed = kernel.pack(jnp.asarray(w))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            got = jax.jit(kernel.matmul)(jnp.asarray(x), packed)
            np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w))
    fallbacks = [c for c in caught if issubclass(c.category, KernelFallbackWarning)]
    assert len(fallbacks) == 1, [str(c.message) for c in caught]
    message = str(fallbacks[0].message)
    assert "\n" not in message and "'mosaic_gpu'" in message and "xla kernel" in message
    unguarded = pallas_kernels.get_kernel("mosaic_gpu", interpret=False, guard=False)
    with pytest.raises(Exception, match="interpret"):  # what the guard caught
        jax.jit(unguarded.matmul)(jnp.asarray(x), packed)


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


def test_rows4_any_n_round_trips_through_both_layouts():
    """``pack(w, "rows4")`` takes N not divisible by 4 (zero rows appended, the true N kept)."""
    w = np.random.default_rng(1).integers(-1, 2, (13, 40)).astype(np.int8)
    rows4 = pallas_kernels.pack(w, "rows4")
    assert rows4.codes.shape == (4, 40) and rows4.shape == (13, 40)
    np.testing.assert_array_equal(pallas_kernels.unpack(rows4), w)
    np.testing.assert_array_equal(pallas_kernels.unpack(pallas_kernels.repack(rows4, "tile16")), w)
    with pytest.raises(KernelError, match="divisible by 4"):  # the checkpoint-level packer stays strict
        pack_rows4(w)


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
    """Hopper-only wgmma code goes to compute capability 9.x only; Ampere and Blackwell get Triton;
    ``$BITNET_JAX_KERNEL`` still forces a backend (then the compile guard decides per shape)."""
    from pallas_kernels import kernel as kernel_lib

    for capability, expected in (((8, 0), "triton"), ((8, 9), "triton"), ((9, 0), "mosaic_gpu"),
                                 ((9, 5), "mosaic_gpu"), ((10, 0), "triton"), ((12, 0), "triton"), (None, "triton")):
        monkeypatch.setattr(kernel_lib, "_cuda_capability", lambda c=capability: c)
        assert pallas_kernels.default_backend("cuda") == expected, capability
    monkeypatch.setattr(kernel_lib, "_cuda_capability", lambda: (10, 0))
    monkeypatch.setenv(pallas_kernels.ENV_VAR, "mosaic_gpu")
    assert pallas_kernels.select_kernel(platform="cuda").name == "mosaic_gpu"


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


def test_default_backend_that_cannot_import_falls_back(monkeypatch):
    """A platform default whose Pallas module does not import with this jax: select_kernel warns and
    returns xla; asking for it by name is a one-line KernelError."""
    import sys

    from pallas_kernels import kernel as kernel_lib

    monkeypatch.setitem(sys.modules, "pallas_kernels.gpu.mosaic", None)  # makes the import fail
    monkeypatch.setattr(kernel_lib, "_cuda_capability", lambda: (9, 0))
    monkeypatch.delenv(pallas_kernels.ENV_VAR, raising=False)
    kernel_lib._make_kernel.cache_clear()
    try:
        with pytest.warns(KernelFallbackWarning, match="'mosaic_gpu'"):
            assert pallas_kernels.select_kernel(platform="cuda").name == "xla"
        with pytest.raises(KernelError, match="not available with jax"):
            pallas_kernels.get_kernel("mosaic_gpu", interpret=False)
    finally:
        kernel_lib._make_kernel.cache_clear()
