"""End-to-end training on a tiny config: loss falls, resume is bit-identical (also after SIGKILL),
metrics are logged, and the exported packed directory matches the trained latent weights."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from bitnet_jax.train.checkpoint import RunCheckpointer
from bitnet_jax.train.loop import train
from tests.train_helpers import ROOT, tiny_config


def _params(run_dir, step=None):
    ckpt = RunCheckpointer(run_dir, keep=10)
    try:
        return ckpt.restore_params(ckpt.latest_step() if step is None else step)
    finally:
        ckpt.close()


def _assert_identical(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    final = train(tiny_config(run), quiet=True)
    return run, final


def test_loss_falls_and_metrics_logged(straight_run):
    run, final = straight_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] - 0.15, losses
    assert losses[-1] < math.log(512) - 0.15  # below the uniform-guess loss
    assert all(set(r) >= {"step", "loss", "lr", "tokens_per_s"} for r in records if "loss" in r)
    vals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in vals] == [6, 12]
    assert math.isclose(vals[-1]["val_ppl"], math.exp(vals[-1]["val_loss"]), rel_tol=1e-9)
    assert final["final_step"] == 12
    ckpt = RunCheckpointer(run, keep=10)
    assert ckpt.all_steps() == [8, 12]  # keep: 2
    meta = ckpt.restore_meta(12)
    ckpt.close()
    assert meta["data_position"] == 12 and meta["config"]["training"]["steps"] == 12
    assert (run / "config.yaml").is_file() and (run / "tokenizer.json").is_file()


def test_resume_is_bit_identical(straight_run, tmp_path):
    run, _ = straight_run
    train(tiny_config(tmp_path), max_steps=5, quiet=True)  # stops (and checkpoints) at step 5
    train(tiny_config(tmp_path), quiet=True)
    _assert_identical(_params(tmp_path, 12), _params(run, 12))
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no duplicated records after resume


def test_resume_with_changed_config_is_refused(straight_run, tmp_path):
    from bitnet_jax.errors import ConfigError

    run, _ = straight_run
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(ConfigError, match="optimizer.lr"):
        train(tiny_config(run, "optimizer.lr=0.1"), quiet=True)
    assert sorted(p.name for p in run.rglob("*")) == before


def test_sigkill_then_resume_is_bit_identical(straight_run, tmp_path):
    """Kill a training process with SIGKILL (possibly mid-checkpoint), resume, compare with the straight run."""
    run, _ = straight_run
    code = (
        "import sys; from tests.train_helpers import tiny_config; from bitnet_jax.train.loop import train; "
        "train(tiny_config(sys.argv[1], 'checkpoint.every=1'), quiet=True)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env)
    ckpt_dir = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.is_dir() else []
        if len(done) >= 2:  # a few steps in: kill it wherever it is now
            time.sleep(float(np.random.default_rng().uniform(0.0, 0.5)))
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill landed"
    ckpt = RunCheckpointer(tmp_path, keep=10)
    killed_at = ckpt.latest_step()
    ckpt.close()
    assert killed_at is not None and 2 <= killed_at < 12, f"the kill did not land mid-run (step {killed_at})"
    train(tiny_config(tmp_path, "checkpoint.every=1"), quiet=True)
    _assert_identical(_params(tmp_path, 12), _params(run, 12))


def test_export_matches_trained_weights(straight_run, tmp_path):
    import bitnet_jax
    from bitnet_jax.inference import perplexity
    from bitnet_jax.train.export import export_run

    run, final = straight_run
    out = export_run(run, tmp_path / "model")
    hf = json.loads((out / "config.json").read_text())
    assert hf["quantization_config"] == {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"
    }
    tensors = load_file(str(out / "model.safetensors"))
    latent = _params(run, 12)
    w = np.asarray(latent["layers_1"]["mlp"]["down_proj"]["weight"], dtype=np.float64)
    codes = tensors["model.layers.1.mlp.down_proj.weight"]
    # unpack rows4 from its definition: byte [r, c] holds rows r, R+r, 2R+r, 3R+r in bit pairs 1:0 .. 7:6
    planes = [((codes >> (2 * j)) & 3).astype(np.int64) - 1 for j in range(4)]
    wq = np.concatenate(planes, axis=0)
    mean = np.abs(w).mean()
    np.testing.assert_array_equal(wq, np.clip(np.round(w / mean), -1, 1))
    np.testing.assert_allclose(tensors["model.layers.1.mlp.down_proj.weight_scale"], [mean], rtol=1e-5)
    # the packed model computes the training form's loss on the same windows (exact integer products
    # vs fake quantization in float: round-off, and the odd int8 rounding tie, apart)
    import jax.numpy as jnp

    from bitnet_jax.train.step import make_module, token_nll

    model = bitnet_jax.from_pretrained(out)
    assert model.tokenizer is not None and model.config.bos_token_id == model.tokenizer.token_to_id("<|endoftext|>")
    val = np.asarray(np.memmap(run / "val.tokens", dtype=np.uint16, mode="r")[: 4 * 32 + 1], np.int32)
    windows = np.stack([val[i * 32 : i * 32 + 33] for i in range(4)])
    nll, count = perplexity(model, val.tolist(), seq_len=32)  # the same four 33-token windows
    reference = float(token_nll(make_module(model.config), latent, jnp.asarray(windows)))
    assert count == 4 * 32 and math.isfinite(nll)
    assert abs(nll - reference) < 1e-3, (nll, reference)


def test_perplexity_cli(straight_run, tmp_path, capsys):
    from bitnet_jax.cli import main
    from bitnet_jax.train.export import export_run

    run, _ = straight_run
    out = export_run(run, tmp_path / "model")
    text = tmp_path / "t.py"
    text.write_text("def add(a, b):\n    return a + b\n" * 20)
    assert main(["perplexity", "--model", str(out), "--seq-len", "32", str(text)]) == 0
    line = capsys.readouterr().out
    assert "perplexity" in line
    ppl = float(line.split("perplexity:")[1])
    assert 1.0 < ppl < 512
