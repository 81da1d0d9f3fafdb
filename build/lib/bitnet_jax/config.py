"""The model configuration: a frozen, validated dataclass plus YAML presets and HF config mapping."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from bitnet_jax.errors import ConfigError



def preset_dir() -> Path:
    """Where the YAML model presets live: ``configs/models`` in a checkout, else the installed copy."""
    checkout = Path(__file__).resolve().parent.parent / "configs" / "models"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("bitnet_jax.presets")))

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
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

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim <= 0):
            raise ConfigError(f"ModelConfig.head_dim must be a positive integer or None, got {self.head_dim!r}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"ModelConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}) when head_dim is not given"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"ModelConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_size % 2:
            raise ConfigError(f"ModelConfig head dimension must be even for RoPE, got {self.head_size}")
        for name, value in (
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("q_proj outputs", self.num_attention_heads * self.head_size),
            ("k_proj outputs", self.num_key_value_heads * self.head_size),
        ):
            if value % 4:
                raise ConfigError(f"ModelConfig {name} ({value}) must be divisible by 4 for 2-bit packing")
        if self.hidden_act != "relu2":
            raise ConfigError(f"ModelConfig.hidden_act must be 'relu2' (BitNet b1.58), got {self.hidden_act!r}")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise ConfigError(f"ModelConfig.rms_norm_eps must be a positive number, got {self.rms_norm_eps!r}")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            raise ConfigError(f"ModelConfig.rope_theta must be a positive number, got {self.rope_theta!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ConfigError(f"ModelConfig.tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"ModelConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"ModelConfig.{name} must be a non-negative integer or None, got {value!r}")

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

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON/YAML friendly)."""
        d = dataclasses.asdict(self)
        if isinstance(d["eos_token_id"], tuple):
            d["eos_token_id"] = list(d["eos_token_id"])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "ModelConfig":
        """Build from a mapping, rejecting unknown keys with an error naming ``source``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping of ModelConfig fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown ModelConfig field(s) {unknown}; known fields: {sorted(known)}")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelConfig":
        """Load a YAML model preset file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read model config ({e})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({e})") from None
        return cls.from_dict(data or {}, source=str(path))

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        """A named preset from ``configs/models`` (e.g. ``bitnet-b1.58-2b-4t``, ``tiny``)."""
        path = preset_dir() / f"{name}.yaml"
        if not path.is_file():
            available = sorted(p.stem for p in preset_dir().glob("*.yaml"))
            raise ConfigError(f"unknown model preset {name!r}; available: {available}")
        return cls.from_yaml(path)

    @classmethod
    def from_hf_config(cls, hf: Mapping[str, Any], source: str = "config.json") -> "ModelConfig":
        """Map a transformers ``BitNetConfig`` dict (``config.json``) onto a ModelConfig."""
        model_type = hf.get("model_type")
        if model_type != "bitnet":
            raise ConfigError(f"{source}: unsupported model_type {model_type!r} (expected 'bitnet')")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"{source}: unsupported rope type {rope_type!r} (only 'default' RoPE is supported)")
        theta = hf.get("rope_theta", rope.get("rope_theta", 500000.0))
        if hf.get("attention_bias"):
            raise ConfigError(f"{source}: attention_bias=true is not part of BitNet b1.58 and is not supported")
        fields = dict(
            vocab_size=hf.get("vocab_size", 128256),
            hidden_size=hf.get("hidden_size", 2560),
            intermediate_size=hf.get("intermediate_size", 6912),
            num_hidden_layers=hf.get("num_hidden_layers", 30),
            num_attention_heads=hf.get("num_attention_heads", 20),
            num_key_value_heads=hf.get("num_key_value_heads") or hf.get("num_attention_heads", 20),
            head_dim=hf.get("head_dim"),
            hidden_act=hf.get("hidden_act", "relu2"),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )
        try:
            return cls(**fields)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_config(self) -> dict[str, Any]:
        """The transformers ``BitNetConfig`` dict for this config (without quantization_config)."""
        return {
            "architectures": ["BitNetForCausalLM"],
            "model_type": "bitnet",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_size,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_bias": False,
            "torch_dtype": self.dtype,
        }


def load_hf_config_file(path: Path) -> dict[str, Any]:
    """Read a ``config.json`` with an error naming the file when it is missing or malformed."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data
