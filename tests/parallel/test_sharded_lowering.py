"""Sharded inference with Pallas kernels: every kernel call inside a ``shard_map`` with the packed codes
split by input columns over ``tensor``; no float all-gather of weights.

A tiny model on 8 simulated CPU devices is lowered for ``cuda`` and ``tpu`` with the compiled (not
interpreted) kernels (``tests/lowering_worker.py``, a subprocess: the device count is fixed at start),
and read from the lowered StableHLO. The same model with the plain (not mesh-aware) kernel is the
negative control: its kernel calls must be found outside every manual computation. With libtpu, the
forward is also compiled for a virtual 8-chip v5e and the partitioner's collectives are inspected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, str(ROOT / "tests" / "lowering_worker.py")]
LIBTPU_PATH = os.environ.get("BITNET_JAX_LIBTPU_PATH", "")
HAS_LIBTPU = bool(LIBTPU_PATH) and (Path(LIBTPU_PATH) / "libtpu").is_dir()
LINEARS = 2 * 7  # the tiny preset: 2 layers of q, k, v, o, gate, up, down


def _run(*args: str, tpu: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_JAX_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), LIBTPU_PATH if tpu else "", env.get("PYTHONPATH", "")) if p)
    if tpu:
        env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"
    else:
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run(["timeout", "300", *WORKER, *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize(
    "platform, kernel, mesh",
    [
        ("cuda", "mosaic_gpu", {"tensor": 8}),
        ("cuda", "triton", {"data": 2, "tensor": 4}),
        ("tpu", "tpu", {"fsdp": 2, "tensor": 4}),
    ],
)
def test_kernel_calls_sit_inside_shard_map(platform, kernel, mesh):
    r = _run("lowered", platform, kernel, json.dumps(mesh))
    assert r["pallas_calls"] > 0, r
    assert r["outside"] == [], r["outside"]
    assert r["manual_computations"] == LINEARS
    # packed codes enter each manual computation split by input columns over `tensor` (the rules)
    assert r["codes_specs"] == ['{}, {"tensor"}'] * LINEARS, r["codes_specs"]
    assert not [t for t in r["all_gather_types"] if not t.endswith("ui8")], r["all_gather_types"]
    # negative control: the plain kernel on the same sharded parameters is found outside (or, for
    # Mosaic TPU, jax itself refuses to lower it)
    if r["plain_error"]:
        assert "shard_map" in r["plain_error"], r["plain_error"]
    else:
        assert r["plain_pallas_calls"] > 0 and r["plain_outside"], r


@pytest.mark.skipif(not HAS_LIBTPU, reason="no libtpu: scripts/install_libtpu.py DIR + BITNET_JAX_LIBTPU_PATH=DIR")
@pytest.mark.parametrize("mesh", [{"tensor": 8}, {"fsdp": 2, "tensor": 4}])
def test_compiled_for_tpu_moves_no_float_weights(mesh):
    r = _run("compiled-tpu", "v5e:2x4", json.dumps(mesh), tpu=True)
    assert r["devices"] == 8 and r["pallas_calls"] > 0
    assert r["weights_moved"] == [], r["weights_moved"]
    assert r["float_weight_gathers"] == [], r["float_weight_gathers"]
    assert r["packed_gathers"] == (LINEARS if mesh.get("fsdp", 1) > 1 else 0), r["summary"]
