"""Compile checks without accelerators: GPU kernels (decode and prefill paths at every 2B4T matmul
shape) lowered for cuda, the TPU kernels and the TPU flash attention compiled for TPU topologies
through libtpu; each check must also REJECT a deliberately illegal variant.

Every check runs ``python -m pallas_kernels.compile_check`` in a subprocess (an LLVM abort inside
Mosaic would otherwise kill pytest).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# libtpu in this environment, or installed aside (scripts/install_libtpu.py DIR; BITNET_JAX_LIBTPU_PATH=DIR)
LIBTPU_PATH = os.environ.get("BITNET_JAX_LIBTPU_PATH", "")
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None or (
    bool(LIBTPU_PATH) and (Path(LIBTPU_PATH) / "libtpu").is_dir()
)
needs_libtpu = pytest.mark.skipif(
    not HAS_LIBTPU, reason="no libtpu: pip install '.[tpu]', or scripts/install_libtpu.py DIR + BITNET_JAX_LIBTPU_PATH=DIR"
)


def _check(*args: str) -> subprocess.CompletedProcess:
    paths = [str(ROOT), LIBTPU_PATH, os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    # The pytest process may itself have loaded libtpu (and hold its lockfile) when importing jax.
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pallas_kernels.compile_check", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.parametrize("kernel", ["mosaic_gpu", "triton"])
def test_gpu_kernel_lowers_for_cuda(kernel):
    r = _check("cuda", kernel)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize(
    "kernel, variant, message",
    [
        ("mosaic_gpu", "bad_tile", "WGMMA requires m and n to be multiples of 64"),
        ("mosaic_gpu", "bad_swizzle", "Swizzle 128 requires"),
        ("mosaic_gpu", "bad_decode_tile", "exceeds available shared memory"),
        ("triton", "non_pow2_tile", "power of 2"),
        ("triton", "non_pow2_gemv", "power of 2"),
    ],
)
def test_cuda_lowering_rejects_illegal_variant(kernel, variant, message):
    r = _check("cuda", kernel, "--illegal", variant)
    assert r.returncode != 0 and message in r.stderr, r.stdout + r.stderr[-3000:]


@needs_libtpu
@pytest.mark.parametrize("topology", ["v5e:2x2", "v6e:2x2"])
def test_tpu_kernel_compiles(topology):
    r = _check("tpu", topology)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


@needs_libtpu
@pytest.mark.parametrize(
    "variant, message",
    [
        ("int8_arith", "Mosaic failed to compile TPU kernel"),  # rejected by the real libtpu compiler
        ("bad_block", "divisible by 8 and 128"),  # rejected by the Pallas TPU tiling check
        ("bad_decode_block", "divisible by 8 and 128"),  # decode blocks neither 128-aligned nor full
    ],
)
def test_tpu_compile_rejects_illegal_variant(variant, message):
    r = _check("tpu", "v5e:2x2", "--illegal", variant)
    assert r.returncode != 0 and message in r.stderr, r.stdout + r.stderr[-3000:]


@needs_libtpu
@pytest.mark.parametrize("topology", ["v5e:2x2", "v6e:2x2"])
def test_tpu_flash_attention_compiles(topology):
    r = _check("tpu-attention", topology)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


@needs_libtpu
def test_tpu_attention_compile_rejects_illegal_variant():
    r = _check("tpu-attention", "v5e:2x2", "--illegal", "short_block")
    assert r.returncode != 0 and "block_q=128 should be smaller" in r.stderr, r.stdout + r.stderr[-3000:]
