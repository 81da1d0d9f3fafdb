"""The device-side timing helpers and scripts/device_check.py, run here on the CPU (tiny sizes): the
script must run as-is on a lent accelerator, so every section is exercised on the host."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pallas_kernels import timing

ROOT = Path(__file__).resolve().parents[2]


def _event(plane, start, dur, module="jit_prog", run_id=None):
    stats = {"hlo_module": module}
    if run_id is not None:
        stats["run_id"] = run_id
    return (plane, "Stream #1", "kernel", start, dur, stats)


def test_per_call_times_come_from_device_events_of_the_module():
    events = [
        _event("/device:GPU:0", 0, 10, run_id=1), _event("/device:GPU:0", 5, 10, run_id=1),  # overlap: 15 ns
        _event("/device:GPU:0", 100, 7, run_id=2),
        _event("/device:GPU:0", 50, 1000, module="jit_flush_l2", run_id=3),  # another program
        _event("/host:CPU", 0, 99999, run_id=1),  # host records never count when the device has some
    ]
    assert timing.per_call_ns(events, "jit_prog", 2) == ([15.0, 7.0], "device")


def test_per_call_times_split_at_gaps_without_run_ids_and_fall_back_to_host():
    events = [_event("/device:TPU:0", s, 4, module="", run_id=None) for s in (0, 2, 50, 52)]
    events = [(p, l, "jit_prog(7)", s, d, {}) for p, l, _, s, d, _ in events]  # TPU "XLA Modules" names
    assert timing.per_call_ns(events, "jit_prog", 2) == ([6.0, 6.0], "device")
    host = [_event("/host:CPU", 0, 3, run_id=9)]
    assert timing.per_call_ns(host, "jit_prog", 1) == ([3.0], "host")
    assert timing.per_call_ns(host, "jit_other", 1) == ([], "none")


def test_device_times_on_this_host():
    import jax.numpy as jnp

    x = jnp.ones((64, 64))
    out = timing.device_times([("square_a", lambda a: a @ a, [x]), ("double_a", lambda a: a + a, [x])],
                              calls=3, flush_bytes=1 << 20, warmup=1)
    assert set(out) == {"square_a", "double_a"}
    for r in out.values():
        assert r["time_us"] > 0 and r["source"] in ("device", "host") and r["calls"] == 3


def test_device_check_runs_every_section(tmp_path):
    """The whole script on the CPU with a tiny shape and the tiny preset: one JSON with every section."""
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "device_check.py"), "--shapes", "128x128", "--m", "1", "--quick",
           "--preset", "tiny", "--calls", "2", "--out", str(out), "--copy-to", str(tmp_path / "copy")]
    proc = subprocess.run(["timeout", "600", *cmd], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert (tmp_path / "copy" / out.name).exists()
    assert record["env"]["platform"] == "cpu" and record["env"]["commit"] and record["env"]["jax"]
    assert record["ceilings"]["copy"]["GBps"] > 0
    kernels = [r for r in record["kernels"] if "error" not in r]
    assert {r["backend"] for r in kernels} >= {"xla"}
    for r in kernels:
        assert r["exact_vs_xla"] and r["exact_vs_numpy_rows"] and r["time_us"] > 0 and r["bf16_dot_time_us"] > 0
    (gen,) = record["generate"]
    assert "error" not in gen and gen["new_tokens"][0] < gen["new_tokens"][1], gen
    assert record["notes"] == [], record["notes"]
    assert "wrote" in proc.stdout
