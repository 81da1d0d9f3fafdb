"""The shipped fine-tuning configs parse; the 2B4T-bf16 recipe builds its mesh on 8 simulated devices and
compiles one step for a tiny variant; the run-config keys it uses are validated with errors naming them;
the committed memory figures say what the docs say."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bitnet_jax.config import config_from_dict, load_config
from bitnet_jax.errors import ConfigError
from tests.train_helpers import ROOT

RECIPE = ROOT / "configs" / "train" / "finetune-2b4t-bf16.yaml"
MEMORY = ROOT / "benchmarks" / "results" / "train_memory_2b4t_fsdp8.json"

COMPILE = r"""
import json, sys
from bitnet_jax.config import load_config
from bitnet_jax.parallel.rules import make_mesh
from bitnet_jax.train.step import abstract_batch, abstract_state, make_optimizer, make_train_step
tiny = ["model.preset=tiny", "data.seq_len=64", "training.batch_size=16", "training.grad_accum=2"]
cfg = load_config(sys.argv[1], tiny)
model_cfg = cfg.model.replace(dtype=cfg.training.compute_dtype)
mesh = make_mesh(cfg.mesh)
tx = make_optimizer(cfg)
steps = [make_train_step(cfg, model_cfg, tx, mesh, warmup=w).lower(abstract_state(cfg, model_cfg, tx, mesh),
         abstract_batch(cfg, mesh)).compile() for w in (False, True)]
print("RESULT" + json.dumps({"mesh": dict(mesh.shape), "remat": cfg.training.remat, "dtype": model_cfg.dtype,
                             "compiled": len(steps)}))
"""


def test_recipes_parse():
    recipe = load_config(RECIPE)
    assert recipe.init.from_ == "microsoft/bitnet-b1.58-2B-4T-bf16" and recipe.model.hidden_size == 2560
    assert (recipe.training.remat, recipe.training.compute_dtype, recipe.mesh.fsdp) == ("nothing_saveable", "bfloat16", 8)
    example = load_config(ROOT / "configs" / "train" / "finetune-default-chat.yaml")
    assert example.model is None and example.data.paths[0].endswith("configs/train/data/python-builtins-chat.jsonl")
    assert config_from_dict(example.to_dict()) == example and config_from_dict(recipe.to_dict()) == recipe


@pytest.mark.slow  # the default run parses every recipe (above) and trains on an 8-device mesh (tests/parallel)
def test_2b4t_recipe_compiles_a_tiny_variant_on_8_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", COMPILE, str(RECIPE)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT", 1)[1])
    assert result == {"mesh": {"data": 1, "fsdp": 8, "tensor": 1}, "remat": "nothing_saveable", "dtype": "bfloat16",
                      "compiled": 2}


@pytest.mark.parametrize("raw, message", [
    ({"init": {"from": ""}}, r"init.from: must be a path or hub id"),
    ({"init": {"from": "x", "kind": "zip"}}, r"init.kind: must be one of"),
    ({"init": {"from_": "x"}}, r"init.from_: unknown key"),
    ({"init": {"from": "x"}, "tokenizer": {"path": "t.json"}}, r"tokenizer.path: must be null with init.from"),
    ({"data": {"format": "csv"}}, r"data.format: must be one of"),
    ({"data": {"packing": "greedy"}}, r"data.packing: must be one of"),
    ({"data": {"format": "hf", "paths": ["a", "b"]}}, r"data.paths: format hf reads one dataset"),
    ({"training": {"remat": "full"}}, r"training.remat: must be one of"),
    ({"training": {"quant_warmup_steps": -1}}, r"training.quant_warmup_steps: must be >= 0"),
    ({"training": {"quantize": False, "quant_warmup_steps": 5}}, r"training.quant_warmup_steps: needs training.quantize"),
    ({"export": {"formats": ["onnx"]}}, r"export.formats: each must be one of"),
    ({"logging": {"samples": "hi"}}, r"logging.samples: expected a list of str"),
])
def test_new_keys_are_validated(raw, message):
    data = {"data": {"paths": ["x.jsonl"], **raw.pop("data", {})}, **raw}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, source="run.yaml")


def test_committed_memory_figures():
    m = json.loads(MEMORY.read_text())
    assert m["model"]["hidden_size"] == 2560 and m["model"]["num_hidden_layers"] == 30
    assert m["devices"] == 8 and m["mesh"]["fsdp"] == 8 and m["seq_len"] == 4096
    by = {r["remat"]: r for r in m["results"]}
    assert set(by) >= {"none", "nothing_saveable"}
    for r in by.values():
        b = r["bytes_per_device"]
        assert r["peak_bytes_per_device"] == b["argument"] + b["output"] - b["alias"] + b["temp"]
    assert by["nothing_saveable"]["peak_bytes_per_device"] < by["none"]["peak_bytes_per_device"]
    assert by["nothing_saveable"]["fits_80gb"] == (by["nothing_saveable"]["peak_bytes_per_device"] < 80e9)
    doc = (ROOT / "docs" / "scaling.md").read_text()
    assert f"{by['nothing_saveable']['peak_gb_per_device']:.1f} GB" in doc
