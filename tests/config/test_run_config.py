"""Run configs: parsing, overrides, and clear errors (naming the key) that write nothing."""

from __future__ import annotations

import sys

import pytest
import yaml

from bitnet_jax.errors import ConfigError
from bitnet_jax.config import config_from_dict, load_config, parse_override
from tests.train_helpers import CI_CONFIG, ROOT, tiny_config


def test_committed_configs_load():
    for path in sorted((ROOT / "configs" / "train").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.training.steps > 0
        assert config_from_dict(cfg.to_dict()) == cfg  # the saved form reads back to the same config


def test_stdlib_placeholder_resolves_to_running_interpreter():
    import sysconfig

    cfg = load_config(CI_CONFIG)
    assert [str(p) for p in cfg.data.resolved_paths()] == [sysconfig.get_paths()["stdlib"]]


def test_overrides_are_parsed_as_yaml(tmp_path):
    cfg = tiny_config(tmp_path, "optimizer.lr=0.5", "training.quantize=false")
    assert cfg.optimizer.lr == 0.5 and cfg.training.quantize is False
    assert parse_override("data.paths=[a, b]") == (["data", "paths"], ["a", "b"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("training.stepz=3", "training.stepz"),
        ("training.steps=ten", "training.steps"),
        ("training.quantize=1", "training.quantize"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("training.batch_size=5", "training.batch_size"),  # not a multiple of grad_accum=2
        ("model.hidden_size=63", "hidden_size"),
        ("model.colour=red", "colour"),
    ],
)
def test_bad_values_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_config(tmp_path / "run", override)


def test_unknown_section(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"trainin": {"steps": 3}}))
    with pytest.raises(ConfigError, match="trainin") as e:
        load_config(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "override, key",
    [("training.stepz=3", "training.stepz"), ("training.steps=x", "training.steps"), ("data.paths=[/no/such/dir]", "data.paths")],
)
def test_cli_bad_config_writes_nothing(tmp_path, capsys, override, key):
    from bitnet_jax.cli import main

    run = tmp_path / "run"
    rc = main(["train", str(CI_CONFIG), "--set", f"checkpoint.dir={run}", "--set", override])
    assert rc == 2
    assert key in capsys.readouterr().err
    assert not run.exists()


def test_scripts_train_forwards_to_cli(tmp_path):
    import subprocess

    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), str(CI_CONFIG), "--set", "optimizer.nope=1",
         "--set", f"checkpoint.dir={run}"],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and "optimizer.nope" in proc.stderr
    assert not run.exists()
