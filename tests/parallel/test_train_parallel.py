"""Parallel training on simulated CPU devices: data / FSDP / tensor meshes, packed FSDP all-gathers,
two processes x 4 devices, collective checkpoints restored onto another mesh, a killed peer.

Every run is a subprocess (``tests/train_worker.py``): the device count is fixed when JAX starts.
Tolerances (facts sheet section 7): the first step starts from identical parameters, so only the
reduction order differs; later steps may drift a little more (Adam amplifies round-off, and a last-bit
change of ``s_w`` can flip a ternary rounding).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitnet_jax.parallel.distributed import DistributedError
from bitnet_jax.parallel.launch import child_env, free_port, launch
from bitnet_jax import from_pretrained
from bitnet_jax.train.checkpoint import RunCheckpointer
from tests.train_helpers import CI_CONFIG
from tests.train_worker import overrides

ROOT = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, str(ROOT / "tests" / "train_worker.py")]
STEPS = 4
# the default run trains on the mesh that uses every axis at once; the single-axis meshes are slow tests
MESHES = (
    pytest.param({"data": 8}, marks=pytest.mark.slow),
    pytest.param({"fsdp": 8}, marks=pytest.mark.slow),
    pytest.param({"data": 2, "fsdp": 4}, marks=pytest.mark.slow),
    {"data": 2, "fsdp": 2, "tensor": 2},
)


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITNET_JAX_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _worker(devices: int, *args: str, timeout: int = 300) -> dict:
    proc = subprocess.run(WORKER + list(args), env=_env(devices), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def _train(devices: int, run: Path, mesh: dict, max_steps: int = STEPS) -> list[dict]:
    _worker(devices, "run", str(run), str(STEPS), str(max_steps), json.dumps(mesh))
    return _metrics(run)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_close(ref: list[dict], got: list[dict], first_step_exact: bool = True) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    if first_step_exact and ref[0]["step"] == 1:
        a, b = ref[0], got[0]
        assert abs(a["loss"] - b["loss"]) < 1e-5 * a["loss"], (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * a["grad_norm"], (a, b)
    for a, b in zip(ref, got):
        assert abs(a["loss"] - b["loss"]) < 1e-3 * a["loss"], (a, b)
        assert abs(a["grad_norm"] - b["grad_norm"]) < 2e-2 * a["grad_norm"], (a, b)
        if "val_loss" in a:
            assert abs(a["val_loss"] - b["val_loss"]) < 1e-3 * a["val_loss"], (a, b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The metrics of the run on one device."""
    metrics = _train(1, tmp_path_factory.mktemp("one") / "run", {})
    assert metrics[-1]["loss"] != metrics[0]["loss"]  # it actually trained
    return metrics


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items()))
def test_mesh_matches_one_device(reference, tmp_path, mesh):
    _assert_close(reference, _train(8, tmp_path / "run", mesh))


def test_fsdp_gathers_ternary_weights_packed():
    report = _worker(8, "collectives", json.dumps({"fsdp": 8}))
    colls = report["collectives"]
    packed = [c for c in colls if c["kind"] == "all-gather" and c["dtypes"] == ["u8"] and "_proj/" in c["op"]]
    assert len(packed) == 7 * 2  # each ternary linear of both layers, once per step (2-bit codes)
    by_name = {c["op"].split("/shard_map")[0].rsplit("/", 2)[-1]: c["bytes"] for c in packed}
    assert by_name["down_proj"] == 64 * 128 // 4  # the whole packed weight [N/4, K] after the gather
    # no linear's weight travels as floats; the one float gather is the tied embedding used as the head
    assert not [c for c in colls if c["kind"] == "all-gather" and "_proj/" in c["op"] and c["dtypes"] != ["u8"]]
    float_gathers = [c for c in colls if c["kind"] == "all-gather" and set(c["dtypes"]) & {"f32", "bf16"}]
    assert sum(c["bytes"] for c in float_gathers) <= report["embed_bytes"], float_gathers
    # parameters and AdamW moments are stored split 8 ways (norm gains and counters are replicated)
    per_device = report["state_bytes_per_device"]
    assert len(per_device) == 8 and max(per_device) <= report["state_bytes"] / 8 + 16384, per_device


def test_two_processes_checkpoint_collectively_and_resume_on_four_devices(reference, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    run = tmp_path / "run"
    sets = [a for o in overrides(run, STEPS, {"data": 2, "fsdp": 4}) for a in ("--set", o)]
    # the user's command: `bitnet-jax launch -n 2 --devices-per-process 4 -- bitnet-jax train ...`
    train_cmd = [sys.executable, "-m", "bitnet_jax.cli", "train", str(CI_CONFIG), *sets, "--max-steps", "2",
                 "--export", str(tmp_path / "exported")]
    launch(train_cmd, 2, devices_per_process=4, timeout=300, init_timeout=60, heartbeat_timeout=30)
    ckpt = RunCheckpointer(run, keep=10)
    assert ckpt.all_steps() == [2]  # written by both processes together
    ckpt.close()
    _assert_close(reference[:2], _metrics(run))
    exported = from_pretrained(tmp_path / "exported")  # written once, by process 0
    assert exported.config.num_hidden_layers == 2 and exported.tokenizer is not None
    # resume the 8-device checkpoint on 2 processes x 2 devices with another mesh (a collective read)
    launch(WORKER + ["run", str(run), str(STEPS), str(STEPS), json.dumps({"fsdp": 4})], 2, devices_per_process=2,
           timeout=300, init_timeout=60, heartbeat_timeout=30)
    _assert_close(reference, _metrics(run))


@pytest.mark.slow  # the default run covers a dead peer (tests/parallel/test_scaleout.py) and a killed run's resume
def test_killed_peer_ends_training_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    port = free_port()
    args = ["run", str(run), "1000", "1000", json.dumps({"fsdp": 4})]
    logs = [open(tmp_path / f"process{i}.log", "w") for i in (0, 1)]
    procs = [  # `timeout` leads its own process group: killpg reaches the Python process under it
        subprocess.Popen(["timeout", "240"] + WORKER + args,
                         env=child_env(i, 2, port, 2, init_timeout=60, heartbeat_timeout=3, base=_env(2)),
                         stdout=logs[i], stderr=subprocess.STDOUT, start_new_session=True)
        for i in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 180
        while not (run / "checkpoints" / "4").is_dir():  # two complete checkpoints (steps 2, 4)
            assert time.monotonic() < deadline and procs[0].poll() is None, "training did not get going"
            time.sleep(0.2)
        killed_at = time.monotonic()
        os.killpg(procs[1].pid, signal.SIGKILL)
        code = procs[0].wait(timeout=120)
        elapsed = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for log in logs:
            log.close()
    assert code not in (0, 124), code  # the survivor failed by itself, not by the outer `timeout`
    assert elapsed < 60, elapsed  # measured: aborted (SIGABRT) about 3 s (the heartbeat timeout) after the kill
    assert "stopped sending heartbeats" in (tmp_path / "process0.log").read_text(errors="replace")
    ckpt = RunCheckpointer(run, keep=1000)
    latest = ckpt.latest_step()
    assert latest is not None and latest >= 4
    params = ckpt.restore_params(latest)  # the last complete checkpoint is intact
    ckpt.close()
    assert params["embed_tokens"].shape[1] == 64


def test_mesh_errors_name_the_config_key(tmp_path):
    from tests.train_helpers import tiny_config
    from bitnet_jax.errors import ConfigError
    from bitnet_jax.train.loop import train

    with pytest.raises(ConfigError, match=r"mesh: .*'fsdp': 2.*1 devices are not divisible by the fixed axes"):
        train(tiny_config(tmp_path / "a", "mesh.fsdp=2"), quiet=True)
    with pytest.raises(ConfigError, match=r"mesh.fsdp: must be a positive integer or -1, got 0"):
        tiny_config(tmp_path / "b", "mesh.fsdp=0")
    with pytest.raises(ConfigError, match=r"mesh.devices: unknown key"):
        tiny_config(tmp_path / "c", "mesh.devices=2")
