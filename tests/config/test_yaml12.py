"""The YAML loader reads YAML 1.2 scalars (``1e-3`` is a number) and refuses YAML 1.1 booleans as values."""

from __future__ import annotations

import math

import pytest

from bitnet_jax.config import parse_override
from bitnet_jax.config._validate import load_yaml_text, read_yaml
from bitnet_jax.errors import ConfigError


@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("3.0e-3", 3e-3), ("-2E+2", -200.0), (".5", 0.5), ("1.", 1.0), ("30", 30), ("-5", -5),
    ("+7", 7), ("010", 10), ("0o17", 15), ("0x1F", 31), ("true", True), ("False", False), ("null", None),
    ("~", None), ("", None), ("2020-01-01", "2020-01-01"), ("1_000", "1_000"), ('"yes"', "yes"), ("'on'", "on"),
    ("[yes, 1e-3]", ["yes", 1e-3]), ("abc", "abc"),
])
def test_yaml_1_2_scalars(text, value):
    assert load_yaml_text(f"key: {text}", "t")["key"] == value


def test_special_floats():
    data = load_yaml_text("a: .inf\nb: -.Inf\nc: .nan", "t")
    assert data["a"] == math.inf and data["b"] == -math.inf and math.isnan(data["c"])


@pytest.mark.parametrize("word", ["yes", "No", "ON", "off", "y", "N"])
def test_yaml_1_1_booleans_are_refused_naming_the_key(word, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"training:\n  steps: 3\n  quantize: {word}\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(path, "run config")
    message = str(e.value)
    assert str(path) in message and "quantize" in message and repr(word) in message and "line 3" in message


def test_set_values():
    assert parse_override("optimizer.lr=1e-3") == (["optimizer", "lr"], 1e-3)
    assert parse_override("training.quantize=false") == (["training", "quantize"], False)
    with pytest.raises(ConfigError, match="ambiguous"):
        parse_override("training.quantize=yes")
    assert parse_override("data.pattern='on'") == (["data", "pattern"], "on")
