"""The CPU ternary kernel (pallas_kernels.cpu) against the int64 NumPy reference, and its tile16 layout."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from bitnet_jax.errors import KernelError
from pallas_kernels import cpu
from pallas_kernels.layouts import pack_tile16, unpack_tile16
from pallas_kernels.reference import ternary_matmul_reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_ext = pytest.mark.skipif(not cpu.AVAILABLE, reason="the CPU kernel extension is not built (no C++ compiler)")


def test_extension_is_built_where_a_compiler_exists():
    """A broken C++ build must fail the suite, not skip it: wherever a C++ compiler is on the machine
    (the package's setup.py builds the extension with it), the extension must have been built."""
    import shutil
    import sysconfig

    compiler = (sysconfig.get_config_var("CXX") or "c++").split()[0]
    if shutil.which(compiler) is None and shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine: the extension is optional and CPUs use the xla kernel")
    assert cpu.AVAILABLE, "a C++ compiler is installed but pallas_kernels.cpu._ternary_cpu was not built"

# (M, N, K): odd N and K, partial row groups, K not a multiple of 16, M = 1 and M past the 8-row tile;
# from M = 16 the AMX path: one 16-row tile, an odd count of 16-row tiles, an odd count of row groups
# (a pair and a single), K a multiple of 64 and not, and a long K.
SHAPES = [(1, 16, 16), (1, 7, 5), (3, 37, 50), (1, 2560, 640), (5, 64, 2560), (9, 100, 33), (130, 48, 96),
          (17, 33, 1), (16, 16, 64), (48, 80, 2560), (32, 2560, 200)]


def _random(m: int, n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.integers(-1, 2, (n, k)).astype(np.int8)
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    x[:, :1] = -128  # the extremes the int16 partial sums of the AVX2 path must survive
    return x, w


@pytest.fixture(params=cpu.supported_isas())
def isa(request):
    """Every instruction-set path this CPU can run, each forced in turn."""
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa(None)


@pytest.fixture(params=[1, 2])
def threads(request, monkeypatch):
    """The kernel's thread count (BITNET_JAX_CPU_THREADS is read at every call)."""
    monkeypatch.setenv("BITNET_JAX_CPU_THREADS", str(request.param))
    return request.param


@needs_ext
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_in_jit(shape, isa, threads):
    m, n, k = shape
    x, w = _random(m, n, k, seed=m * 1000 + n + k)
    got = jax.jit(cpu.ternary_matmul)(jnp.asarray(x), jnp.asarray(pack_tile16(w)))
    assert got.dtype == jnp.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w))


@needs_ext
def test_extreme_values_all_paths(isa):
    """All-(-128) activations against all-(+1)/(-1) weights: the largest magnitudes a row can reach."""
    k = 4000
    x = np.full((2, k), -128, np.int8)
    x[1] = 127
    w = np.concatenate([np.ones((16, k), np.int8), -np.ones((16, k), np.int8), np.zeros((3, k), np.int8)])
    got = np.asarray(jax.jit(cpu.ternary_matmul)(x, pack_tile16(w)))
    np.testing.assert_array_equal(got, ternary_matmul_reference(x, w))


@needs_ext
def test_large_m_prefill_shape():
    x, w = _random(128, 272, 2560, seed=7)
    got = jax.jit(cpu.ternary_matmul)(x, pack_tile16(w))
    np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w))


@needs_ext
def test_without_xla_thread_pool(tmp_path):
    """With XLA's multi-threaded Eigen pool disabled the kernel still runs (single-threaded) and is exact."""
    import subprocess
    import sys

    code = (
        "import numpy as np, jax\n"
        "from pallas_kernels import cpu\n"
        "from pallas_kernels.reference import ternary_matmul_reference as ref\n"
        "rng = np.random.default_rng(1)\n"
        "w = rng.integers(-1, 2, (300, 200)).astype(np.int8); x = rng.integers(-128, 128, (5, 200)).astype(np.int8)\n"
        "from pallas_kernels.layouts import pack_tile16\n"
        "assert (np.asarray(jax.jit(cpu.ternary_matmul)(x, pack_tile16(w))) == ref(x, w)).all()\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false", JAX_PLATFORMS="cpu")
    env.pop("BITNET_JAX_CPU_THREADS", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def _tile16_bytes_from_definition(w: np.ndarray) -> np.ndarray:
    """The tile16 byte stream written out loop by loop from the layout's documented definition."""
    n, k = w.shape
    kp = -(-k // 16) * 16
    c = np.ones((n, kp), np.int64)
    c[:, :k] = w.astype(np.int64) + 1
    out = []
    for g0 in range(0, n, 16):
        rows = min(16, n - g0)
        for b in range(kp // 16):
            for r in range(rows):
                for s in range(4):
                    out.append(sum(int(c[g0 + r, 16 * b + 4 * i + s]) << (2 * i) for i in range(4)))
    return np.array(out, np.uint8).reshape(n, kp // 4)


@pytest.mark.parametrize("shape", [(16, 16), (37, 50), (5, 7), (33, 32)])
def test_pack_matches_layout_definition(shape):
    w = np.random.default_rng(3).integers(-1, 2, shape).astype(np.int8)
    expected = _tile16_bytes_from_definition(w)
    np.testing.assert_array_equal(pack_tile16(w), expected)
    np.testing.assert_array_equal(np.asarray(pack_tile16(jnp.asarray(w))), expected)  # the traceable form
    np.testing.assert_array_equal(unpack_tile16(expected, shape[1]), w)


@needs_ext
def test_wrong_packed_width_is_rejected():
    with pytest.raises(KernelError, match="tile16"):
        cpu.ternary_matmul(jnp.zeros((1, 40), jnp.int8), jnp.zeros((16, 8), jnp.uint8))


@needs_ext
def test_select_picks_cpu_and_xla_stays_forceable(monkeypatch):
    monkeypatch.delenv(pallas_kernels.ENV_VAR, raising=False)
    assert pallas_kernels.default_backend("cpu") == "cpu"
    assert pallas_kernels.select_kernel("xla").name == "xla"
    x, w = _random(2, 40, 24, seed=5)
    for backend in ("cpu", "xla"):
        kernel = pallas_kernels.get_kernel(backend)
        packed = kernel.pack(jnp.asarray(w))
        np.testing.assert_array_equal(np.asarray(kernel.unpack(packed)), w)
        got = kernel.matmul(jnp.asarray(x), packed)
        np.testing.assert_array_equal(np.asarray(got), ternary_matmul_reference(x, w))
    rows4 = pallas_kernels.pack(w, "rows4")
    np.testing.assert_array_equal(pallas_kernels.repack(rows4, "tile16").codes, pack_tile16(w))


def test_missing_extension_warns_and_falls_back_to_xla():
    """Without the compiled extension: a RuntimeWarning naming it, and the dispatcher picks xla on CPU."""
    import subprocess
    import sys

    code = (
        "import sys, warnings\n"
        "sys.modules['pallas_kernels.cpu._ternary_cpu'] = None  # makes the import fail like an unbuilt tree\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import pallas_kernels, pallas_kernels.cpu\n"
        "assert any('_ternary_cpu' in str(w.message) for w in caught), [str(w.message) for w in caught]\n"
        "assert not pallas_kernels.cpu.AVAILABLE\n"
        "assert pallas_kernels.default_backend('cpu') == 'xla'\n"
        "from bitnet_jax.errors import KernelError\n"
        "try:\n"
        "    pallas_kernels.get_kernel('cpu')\n"
        "except KernelError as e:\n"
        "    assert 'not built' in str(e)\n"
        "else:\n"
        "    raise AssertionError('expected a KernelError')\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop(pallas_kernels.ENV_VAR, None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


@needs_ext
@pytest.mark.parametrize("shape", [(1, 36, 50), (5, 64, 96), (130, 48, 33)])
def test_stacked_kernel_reads_each_layer_in_place(shape, isa):
    # the scan_layers form: the whole [L, N, bytes] stack and a traced layer index
    m, n, k = shape
    layers = [_random(m, n, k, seed) for seed in range(3)]
    def stacked(layout):
        return pallas_kernels.PackedWeight(jnp.stack([pallas_kernels.pack(w, layout).codes for _, w in layers]),
                                           None, layout, (n, k))

    x = layers[0][0]
    cpu_kernel = pallas_kernels.get_kernel("cpu")
    run = jax.jit(lambda x, s, i: cpu_kernel.matmul(x, s.at_layer(i)))
    stack = stacked("tile16")
    for i, (_, w) in enumerate(layers):
        np.testing.assert_array_equal(np.asarray(run(x, stack, jnp.int32(i))), ternary_matmul_reference(x, w))
    with pytest.raises(Exception, match="layer index 3 outside a stack of 3 layers"):
        run(x, stack, jnp.int32(3)).block_until_ready()
    # other backends slice the stack: the same products
    xla_kernel = pallas_kernels.get_kernel("xla")
    xla = jax.jit(lambda x, s, i: xla_kernel.matmul(x, s.at_layer(i)))
    np.testing.assert_array_equal(np.asarray(xla(x, stacked("rows4"), jnp.int32(2))),
                                  ternary_matmul_reference(x, layers[2][1]))
