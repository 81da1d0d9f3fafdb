"""The model configuration: what the network *is* (dimensions, activation, norms, tokens), as a frozen,
validated dataclass, plus the YAML presets in ``configs/models``.

How a loaded model holds and multiplies its weights (kernel, head, scanned layers) is not part of it:
that is :class:`bitnet_jax.model.Form`. Checkpoint formats map their own configs onto this one
(:func:`bitnet_jax.io.hf.config_from_hf`, :func:`bitnet_jax.io.gguf.config_from_gguf`).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from pathlib import Path
from typing import Any, Mapping

from bitnet_jax.config._validate import Validated, build, read_yaml
from bitnet_jax.errors import ConfigError

DTYPES = ("float32", "bfloat16")
HIDDEN_ACTS = ("relu2", "silu")  # relu(x)^2 (BitNet b1.58 2B4T) | x * sigmoid(x) (1bitLLM, Llama, Falcon)
# The sub-norms' checkpoint names inside a layer: transformers' BitNet, and 1bitLLM's remote code.
BITNET_SUB_NORMS = ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
ONEBITLLM_SUB_NORMS = ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")
# Every ternary linear of a layer, by its name inside the layer.
LAYER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_BOUNDARY = r"(?:(?<=\.)|(?=\.|$))"
# Sane upper bounds, checked before anything is allocated or iterated per layer / position / token.
MAX_LAYERS = 1024
MAX_DIM = 1 << 20  # hidden, intermediate, head dimensions
MAX_HEADS = 4096
MAX_VOCAB = 1 << 24
MAX_CONTEXT = 1 << 24
MAX_ROPE_THETA = 1e12
MAX_EPS = 0.1
MAX_PATTERNS = 4096


def preset_dir() -> Path:
    """Where the YAML model presets live: ``configs/models`` in a checkout, else the installed copy."""
    checkout = Path(__file__).resolve().parents[2] / "configs" / "models"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("bitnet_jax.presets")))


@dataclasses.dataclass(frozen=True)
class ModelConfig(Validated):
    """Every field of a BitNet b1.58 family's architecture; defaults are the shipped 2B4T values.

    Family differences are fields: ``hidden_act`` (``relu2`` or ``silu``), ``sub_norms`` (the RMSNorms
    before ``o_proj`` and ``down_proj``; ``sub_norm_names`` are their checkpoint names inside a layer),
    ``tie_word_embeddings``, an explicit ``head_dim``, ``use_rms_norm`` (transformers'
    ``BitNetQuantConfig(use_rms_norm=True)``: a weighted RMSNorm with ``linear_rms_norm_eps`` on every
    ternary linear's input) and ``modules_to_not_convert`` (transformers' patterns of linears that stay
    float; ``lm_head`` must be among them, as it is when transformers fills them in).
    """

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
    sub_norms: bool = True
    sub_norm_names: tuple[str, ...] = BITNET_SUB_NORMS
    use_rms_norm: bool = False
    linear_rms_norm_eps: float = 1e-6
    modules_to_not_convert: tuple[str, ...] | None = None

    def validate(self) -> None:
        """Ranges and consistency of the dimensions, activation, norms, RoPE and token ids."""
        self.positive_int("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "max_position_embeddings")
        for key, bound in (("vocab_size", MAX_VOCAB), ("hidden_size", MAX_DIM), ("intermediate_size", MAX_DIM),
                           ("num_hidden_layers", MAX_LAYERS), ("num_attention_heads", MAX_HEADS),
                           ("num_key_value_heads", MAX_HEADS), ("max_position_embeddings", MAX_CONTEXT)):
            self.need(getattr(self, key) <= bound, key, f"must be at most {bound}")
        self.need(self.head_dim is None or 0 < self.head_dim <= MAX_DIM, "head_dim",
                  f"must be a positive integer up to {MAX_DIM} or null")
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
        self.need(self.hidden_act in HIDDEN_ACTS, "hidden_act", f"must be one of {HIDDEN_ACTS}")
        self.finite_positive("rms_norm_eps", "rope_theta", "linear_rms_norm_eps")
        for key, bound in (("rms_norm_eps", MAX_EPS), ("linear_rms_norm_eps", MAX_EPS), ("rope_theta", MAX_ROPE_THETA)):
            self.need(getattr(self, key) <= bound, key, f"must be at most {bound:g}")
        names = self.sub_norm_names
        self.need(len(names) == 2 and names[0].startswith("self_attn.") and names[1].startswith("mlp.")
                  and all(re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", n) for n in names),
                  "sub_norm_names", "must be [self_attn.NAME, mlp.NAME] (the attention and FFN sub-norms' names)")
        self._validate_not_convert()
        self.need(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}")
        for key in ("bos_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, key)
            ids = () if value is None else (value,) if isinstance(value, int) else value
            self.need(all(0 <= i < self.vocab_size for i in ids), key,
                      f"must be token id(s) inside the vocabulary [0, {self.vocab_size}) or null")

    def _validate_not_convert(self) -> None:
        patterns = self.modules_to_not_convert
        if patterns is None:
            return
        self.need(len(patterns) <= MAX_PATTERNS, "modules_to_not_convert", f"must hold at most {MAX_PATTERNS} patterns")
        for p in patterns:
            self.need(bool(p), "modules_to_not_convert", "must hold non-empty module names or patterns")
            try:
                re.compile(p)
            except re.error as e:
                raise self.fail("modules_to_not_convert", f"{p!r} is not a valid pattern ({e})") from None
        self.need(_matches("lm_head", patterns), "modules_to_not_convert",
                  "must include lm_head (without it transformers makes the head ternary, which bitnet-jax does not run)")

    def is_ternary(self, module: str) -> bool:
        """Whether the linear ``module`` (transformers name, ``model.layers.0.mlp.up_proj``) is ternary."""
        return self.modules_to_not_convert is None or not _matches(module, self.modules_to_not_convert)

    def float_linears(self, layer: int) -> frozenset[str]:
        """The linears of layer ``layer`` (names inside the layer) that ``modules_to_not_convert`` keeps float."""
        return frozenset(n for n in LAYER_LINEARS if not self.is_ternary(f"model.layers.{layer}.{n}"))

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

    @property
    def family(self) -> str:
        """A short description of the architecture family (for messages and exports)."""
        if self.sub_norms:
            return "bitnet-1bitllm" if self.sub_norm_names == ONEBITLLM_SUB_NORMS else "bitnet"
        return "llama"

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


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    """transformers' ``should_convert_module`` rule, negated: a pattern matches ``name`` from the start up
    to a module boundary (also as a regex), or as a suffix."""
    return any(re.match(rf"(?:{p}){_BOUNDARY}", name) or name.endswith(p) for p in patterns)
