"""The format-neutral checkpoint every loader produces, and its conversion to a parameter pytree.

A loader (HF safetensors, GGUF, ...) returns a :class:`Checkpoint`: a :class:`ModelConfig` plus tensors
keyed by their transformers names (``model.layers.0.self_attn.q_proj.weight``). Ternary linears arrive
(under their ``.weight`` name) as :class:`TernaryTensor` (2-bit codes in the ``rows4`` layout, one multiplicative scale); everything
else as float arrays. :func:`checkpoint_to_params` checks every name and shape against the config and
builds the packed parameter tree of :class:`bitnet_jax.model.Transformer`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

import pallas_kernels
from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import CheckpointError

ATTN_PROJS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class TernaryTensor:
    """A ternary weight ``[out, in]`` kept packed: ``rows4`` codes ``uint8 [out // 4, in]`` and ``scale``.

    ``scale`` multiplies the integer product (it is ``1 / s_w``, about ``mean|W|``).
    """

    codes: np.ndarray
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        """The unpacked ``[out, in]`` shape."""
        return (self.codes.shape[0] * 4, self.codes.shape[1])


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What a loader read: config, tensors by HF name, optional tokenizer, and where it came from."""

    config: ModelConfig
    tensors: dict[str, Any]
    source: str
    tokenizer: Any = None


def ternary_linears(config: ModelConfig) -> Iterator[tuple[str, tuple[int, int]]]:
    """(HF name prefix, [out, in] shape) of every ternary linear in the model."""
    hd = config.head_size
    d, f = config.hidden_size, config.intermediate_size
    shapes = {
        "q_proj": (config.num_attention_heads * hd, d),
        "k_proj": (config.num_key_value_heads * hd, d),
        "v_proj": (config.num_key_value_heads * hd, d),
        "o_proj": (d, config.num_attention_heads * hd),
        "gate_proj": (f, d),
        "up_proj": (f, d),
        "down_proj": (d, f),
    }
    for i in range(config.num_hidden_layers):
        for p in ATTN_PROJS:
            yield f"model.layers.{i}.self_attn.{p}", shapes[p]
        for p in MLP_PROJS:
            yield f"model.layers.{i}.mlp.{p}", shapes[p]


def float_tensors(config: ModelConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) of every non-ternary tensor: embedding, norms and an untied head."""
    yield "model.embed_tokens.weight", (config.vocab_size, config.hidden_size)
    yield "model.norm.weight", (config.hidden_size,)
    if not config.tie_word_embeddings:
        yield "lm_head.weight", (config.vocab_size, config.hidden_size)
    for i in range(config.num_hidden_layers):
        yield f"model.layers.{i}.input_layernorm.weight", (config.hidden_size,)
        yield f"model.layers.{i}.post_attention_layernorm.weight", (config.hidden_size,)
        yield f"model.layers.{i}.self_attn.attn_sub_norm.weight", (config.num_attention_heads * config.head_size,)
        yield f"model.layers.{i}.mlp.ffn_sub_norm.weight", (config.intermediate_size,)


def hf_name_to_param_path(name: str) -> tuple[str, ...]:
    """``model.layers.3.mlp.up_proj.weight`` -> ``("layers_3", "mlp", "up_proj", "weight")``."""
    if name == "model.embed_tokens.weight":
        return ("embed_tokens",)
    if name == "lm_head.weight":
        return ("lm_head",)
    parts = name.removeprefix("model.").split(".")
    if parts[0] == "layers":
        parts = [f"layers_{parts[1]}", *parts[2:]]
    return tuple(parts)


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def checkpoint_to_params(ckpt: Checkpoint, kernel_backend: str | None = None) -> dict:
    """Validate a checkpoint against its config and build the packed-form parameter tree (NumPy leaves)."""
    config, tensors, src = ckpt.config, dict(ckpt.tensors), ckpt.source
    if config.tie_word_embeddings and "lm_head.weight" in tensors:
        tensors.pop("lm_head.weight")  # a tied head stored explicitly is the embedding again
    params: dict = {}
    expected = set()
    for name, shape in ternary_linears(config):
        expected.add(name + ".weight")
        t = tensors.get(name + ".weight")
        if t is None:
            raise CheckpointError(f"{src}: missing tensor {name}.weight")
        if not isinstance(t, TernaryTensor):
            raise CheckpointError(f"{src}: tensor {name}.weight is not a ternary weight")
        if t.shape != shape:
            raise CheckpointError(f"{src}: tensor {name}.weight has shape {t.shape}, expected {shape}")
        if not (np.isfinite(t.scale) and t.scale > 0):
            raise CheckpointError(f"{src}: tensor {name} has an invalid scale {t.scale!r} (must be finite and > 0)")
        invalid = pallas_kernels.layout.invalid_code_count(t.codes)
        if invalid:
            raise CheckpointError(f"{src}: tensor {name}.weight holds {invalid} invalid 2-bit code(s) (3)")
        path = hf_name_to_param_path(name + ".weight")[:-1]
        codes = pallas_kernels.repack_rows4(np.ascontiguousarray(t.codes, dtype=np.uint8), kernel_backend)
        _set(params, path + ("weight_packed",), codes)
        _set(params, path + ("weight_scale",), np.float32(t.scale))
    for name, shape in float_tensors(config):
        expected.add(name)
        t = tensors.get(name)
        if t is None:
            raise CheckpointError(f"{src}: missing tensor {name}")
        if isinstance(t, TernaryTensor):
            raise CheckpointError(f"{src}: tensor {name} must be a float tensor, found a ternary one")
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{src}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        arr = np.asarray(t, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise CheckpointError(f"{src}: tensor {name} holds non-finite values")
        _set(params, hf_name_to_param_path(name), arr)
    extra = sorted(set(tensors) - expected)
    if extra:
        shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
        raise CheckpointError(f"{src}: unexpected tensor(s) not part of this model config: {shown}")
    return params


def random_checkpoint(config: ModelConfig, seed: int = 0, source: str = "random") -> Checkpoint:
    """A checkpoint of random ternary weights (uniform over -1/0/+1) for benchmarks and examples.

    Built layer by layer in NumPy, so even the 2B4T shape needs no more memory than its packed size
    plus the float embedding.
    """
    rng = np.random.default_rng(seed)
    tensors: dict[str, Any] = {}
    for name, (out_f, in_f) in ternary_linears(config):
        w = rng.integers(-1, 2, (out_f, in_f), dtype=np.int8)
        tensors[name + ".weight"] = TernaryTensor(pallas_kernels.pack_rows4(w), scale=float(1.0 / np.sqrt(in_f)))
    for name, shape in float_tensors(config):
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, np.float32)
        else:
            tensors[name] = rng.normal(0.0, 0.02, shape).astype(np.float32)
    return Checkpoint(config=config, tensors=tensors, source=source)
