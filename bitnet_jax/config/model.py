"""The model configuration: what the network *is* (dimensions, activation, norms, tokens), as a frozen,
validated dataclass, plus the YAML presets in ``configs/models``.

How a loaded model holds and multiplies its weights (kernel, head, scanned layers) is not part of it:
that is :class:`bitnet_jax.model.Form`. Checkpoint formats map their own configs onto this one
(:func:`bitnet_jax.io.hf.config_from_hf`, :func:`bitnet_jax.io.gguf.config_from_gguf`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path
from typing import Any, Mapping

from bitnet_jax.config._validate import Validated, build, read_yaml
from bitnet_jax.errors import ConfigError

DTYPES = ("float32", "bfloat16")
HIDDEN_ACTS = ("relu2",)


def preset_dir() -> Path:
    """Where the YAML model presets live: ``configs/models`` in a checkout, else the installed copy."""
    checkout = Path(__file__).resolve().parents[2] / "configs" / "models"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("bitnet_jax.presets")))


@dataclasses.dataclass(frozen=True)
class ModelConfig(Validated):
    """Every field of the BitNet b1.58 (2B4T) architecture; defaults are the shipped 2B4T values."""

    vocab_size: int = 128256
    hidden_size: int = 2560
    intermediate_size: int = 6912
    num_hidden_layers: int = 30
    num_attention_heads: int = 20
    num_key_value_heads: int = 5
    head_dim: int | None = None
    hidden_act: str = "relu2"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 128000
    eos_token_id: int | tuple[int, ...] | None = 128001
    pad_token_id: int | None = None
    dtype: str = "float32"

    def validate(self) -> None:
        """Ranges and consistency of the dimensions, activation, norms, RoPE and token ids."""
        self.positive_int("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "max_position_embeddings")
        self.need(self.head_dim is None or self.head_dim > 0, "head_dim", "must be a positive integer or null")
        if self.head_dim is None:
            self.need(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                      f"must be divisible by num_attention_heads ({self.num_attention_heads}) when head_dim is not given")
        self.need(self.num_attention_heads % self.num_key_value_heads == 0, "num_attention_heads",
                  f"must be a multiple of num_key_value_heads ({self.num_key_value_heads})")
        self.need(self.head_size % 2 == 0, "head_dim", f"the head dimension ({self.head_size}) must be even for RoPE")
        for key, value in (("hidden_size", self.hidden_size), ("intermediate_size", self.intermediate_size),
                           ("num_attention_heads", self.num_attention_heads * self.head_size),
                           ("num_key_value_heads", self.num_key_value_heads * self.head_size)):
            if value % 4:
                raise self.fail(key, f"gives {value} rows or columns, which must be divisible by 4 for 2-bit packing")
        self.need(self.hidden_act in HIDDEN_ACTS, "hidden_act", f"must be one of {HIDDEN_ACTS} (BitNet b1.58)")
        self.finite_positive("rms_norm_eps", "rope_theta")
        self.need(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}")
        for key in ("bos_token_id", "pad_token_id"):
            value = getattr(self, key)
            self.need(value is None or value >= 0, key, "must be a non-negative integer or null")

    @property
    def head_size(self) -> int:
        """Per-head dimension (``head_dim`` or ``hidden_size // num_attention_heads``)."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids as a tuple (possibly empty)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None, prefix: str = "model") -> "ModelConfig":
        """Build from a mapping; unknown keys and bad values are named as ``SOURCE: model.KEY``."""
        return build(cls, data, prefix, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelConfig":
        """Load a YAML model preset file."""
        return cls.from_dict(read_yaml(path, "model config"), source=str(path))

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        """A named preset from ``configs/models`` (e.g. ``bitnet-b1.58-2b-4t``, ``tiny``)."""
        available = sorted(p.stem for p in preset_dir().glob("*.yaml"))
        if name not in available:
            raise ConfigError(f"unknown model preset {name!r}; available: {available}")
        return cls.from_yaml(preset_dir() / f"{name}.yaml")
