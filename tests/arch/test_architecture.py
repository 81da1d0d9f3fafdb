"""Architecture rules of the code base, checked on the source: every exception class is a BitNetError
defined in ``bitnet_jax/errors.py``, and nothing under ``bitnet_jax/model/`` carries device logic."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import bitnet_jax
import pallas_kernels
from bitnet_jax.errors import BitNetError

ROOT = Path(__file__).resolve().parents[2]
MESH_AXES = {"data", "fsdp", "tensor"}


def _modules(package) -> list:
    names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return [importlib.import_module(n) for n in names if not n.endswith("__main__")]


def test_every_exception_class_is_a_bitnet_error_from_errors_py():
    found = []
    for module in _modules(bitnet_jax) + _modules(pallas_kernels):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith(("bitnet_jax", "pallas_kernels")):
                found.append(cls)
                assert issubclass(cls, BitNetError), f"{cls.__module__}.{cls.__name__} is not a BitNetError"
                assert cls.__module__ == "bitnet_jax.errors", f"{cls.__name__} is defined in {cls.__module__}"
    assert BitNetError in found and len(set(found)) >= 8


def _device_logic(path: Path) -> list[str]:
    """Imports of jax.sharding / shard_map calls / mesh axis names / CPU mentions in one source file."""
    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            bad += [f"imports {n}" for n in names if "sharding" in n or "parallel" in n or n.endswith("cpu")]
        elif isinstance(node, ast.Attribute) and node.attr in ("shard_map", "with_sharding_constraint", "device_count",
                                                              "devices", "default_backend", "set_mesh"):
            bad.append(f"uses .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in MESH_AXES:
                bad.append(f"names mesh axis {node.value!r}")
            if "cpu" in node.value.lower().split() or node.value.lower() == "cpu":
                bad.append(f"mentions {node.value!r}")
    return bad


def test_model_code_has_no_device_logic():
    problems = {p.name: _device_logic(p) for p in sorted((ROOT / "bitnet_jax" / "model").glob("*.py"))}
    assert problems and {k: v for k, v in problems.items() if v} == {}


def test_the_device_logic_check_can_fail(tmp_path):
    sample = tmp_path / "bad.py"
    sample.write_text("from jax.sharding import PartitionSpec\nimport jax\nx = jax.shard_map\nspec = ('tensor',)\n")
    assert len(_device_logic(sample)) == 3
