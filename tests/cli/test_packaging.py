"""What an installed wheel holds for the command line: the example run configs (with their data) as
package data, and the extras the docs name."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_example_configs_are_package_data(tmp_path):
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    shipped = tmp_path / "bitnet_jax" / "examples"
    names = sorted(p.name for p in (ROOT / "configs" / "train").glob("*.yaml"))
    assert names and sorted(p.name for p in shipped.glob("*.yaml")) == names
    assert (shipped / "data" / "python-builtins-chat.jsonl").is_file()  # {config_dir}/data/... of finetune-default-chat


def test_installed_examples_resolve_without_a_checkout(tmp_path):
    """examples_dir() falls back to the package copy when there is no configs/train beside the package."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    probe = ("from bitnet_jax.cli.train import examples_dir, example_names; import bitnet_jax; "
             "print(bitnet_jax.__file__); print(examples_dir()); print(' '.join(example_names()))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    assert out[0].startswith(str(tmp_path)) and out[1] == str(tmp_path / "bitnet_jax" / "examples"), out
    assert "ci-tiny" in out[2].split()


def test_notebook_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0] for d in extras["notebook"]}
    assert {"jupyter", "nbconvert", "ipykernel", "matplotlib"} <= names
