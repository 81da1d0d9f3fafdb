"""The one name map: every tensor of a model by its transformers name, parameter path and GGUF name.

:func:`tensor_names` lists, for a :class:`~bitnet_jax.config.ModelConfig`, every tensor a checkpoint
holds: its Hugging Face name (``model.layers.0.self_attn.q_proj.weight``), its place in the parameter
tree of :class:`bitnet_jax.model.Transformer` (``("layers_0", "self_attn", "q_proj")`` for a ternary
linear, whose leaves are ``weight_packed`` / ``weight_scale`` packed or ``weight`` latent; the full
path for a float tensor), its llama.cpp GGUF name (``blk.0.attn_q.weight``), its shape and whether it
is ternary. Every reader and writer goes through it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

from bitnet_jax.config import ModelConfig

TERNARY_LEAVES = ("weight_packed", "weight_scale")  # a packed linear's parameters
LATENT_LEAF = "weight"  # a training-form linear's parameter


@dataclasses.dataclass(frozen=True)
class TensorName:
    """One tensor of a model under each of its names."""

    hf: str
    path: tuple[str, ...]
    gguf: str
    shape: tuple[int, ...]
    ternary: bool


# (HF name inside a layer, parameter path inside the layer, GGUF suffix) of each ternary linear.
_LINEARS = (
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
)
# The parameter paths of the two sub-norms (their checkpoint names come from ``config.sub_norm_names``).
SUB_NORM_PATHS = (("self_attn", "attn_sub_norm"), ("mlp", "ffn_sub_norm"))
LINEAR_NORM = "rms_norm"  # transformers' BitLinear-internal RMSNorm (use_rms_norm): <linear>.rms_norm.weight


def _layer_tensors(config: ModelConfig) -> tuple[tuple[str, tuple[str, ...], str, tuple[int, ...], str], ...]:
    """(HF suffix, parameter path, GGUF suffix, shape, kind) of one decoder layer's tensors, in checkpoint
    order; kind is ``linear`` (ternary unless ``modules_to_not_convert`` says otherwise), ``norm``, or
    ``linear_norm`` (the input norm a ternary linear has with ``use_rms_norm``)."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_size
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes = {"attn_q": (q, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, q),
              "ffn_gate": (f, d), "ffn_up": (f, d), "ffn_down": (d, f)}
    out = []

    def linear(hf: str, gguf: str) -> None:
        out.append((hf, tuple(hf.split(".")), gguf, shapes[gguf], "linear"))
        if config.use_rms_norm:
            out.append((f"{hf}.{LINEAR_NORM}", (*hf.split("."), LINEAR_NORM), f"{gguf}.{LINEAR_NORM}",
                        (shapes[gguf][1],), "linear_norm"))

    def sub_norm(which: int, size: int) -> None:
        if config.sub_norms:
            gguf = SUB_NORM_PATHS[which][1]
            out.append((config.sub_norm_names[which], SUB_NORM_PATHS[which], gguf, (size,), "norm"))

    out.append(("input_layernorm", ("input_layernorm",), "attn_norm", (d,), "norm"))
    for hf, gguf in _LINEARS[:3]:
        linear(hf, gguf)
    sub_norm(0, q)  # applied before o_proj; listed after q/k/v as checkpoints order it
    linear(*_LINEARS[3])
    out.append(("post_attention_layernorm", ("post_attention_layernorm",), "ffn_norm", (d,), "norm"))
    for hf, gguf in _LINEARS[4:]:
        linear(hf, gguf)
    sub_norm(1, f)
    return tuple(out)


def tensor_names(config: ModelConfig) -> Iterator[TensorName]:
    """Every tensor of a model with ``config``: embedding, layers, final norm, and an untied head.

    A linear listed in ``modules_to_not_convert`` is a float tensor (its path ends in ``weight``).
    """
    vocab, d = config.vocab_size, config.hidden_size
    yield TensorName("model.embed_tokens.weight", ("embed_tokens",), "token_embd.weight", (vocab, d), False)
    layer = _layer_tensors(config)
    for i in range(config.num_hidden_layers):
        for hf, path, gguf, shape, kind in layer:
            owner = hf.removesuffix(f".{LINEAR_NORM}") if kind == "linear_norm" else hf
            converted = kind != "norm" and config.is_ternary(f"model.layers.{i}.{owner}")
            if kind == "linear_norm" and not converted:
                continue  # a float linear has no BitLinear input norm
            ternary = kind == "linear" and converted
            full = (f"layers_{i}", *path)
            yield TensorName(f"model.layers.{i}.{hf}.weight", full if ternary else (*full, "weight"),
                             f"blk.{i}.{gguf}.weight", shape, ternary)
    yield TensorName("model.norm.weight", ("norm", "weight"), "output_norm.weight", (d,), False)
    if not config.tie_word_embeddings:
        yield TensorName("lm_head.weight", ("lm_head",), "output.weight", (vocab, d), False)


def by_hf(config: ModelConfig) -> dict[str, TensorName]:
    """The tensors of ``config`` keyed by transformers name."""
    return {t.hf: t for t in tensor_names(config)}


def by_gguf(config: ModelConfig) -> dict[str, TensorName]:
    """The tensors of ``config`` keyed by GGUF name."""
    return {t.gguf: t for t in tensor_names(config)}


def ternary_tensors(config: ModelConfig) -> Iterator[TensorName]:
    """The ternary linears of ``config``."""
    return (t for t in tensor_names(config) if t.ternary)


def get_node(tree: dict, path: tuple[str, ...]):
    """``tree[path[0]][path[1]]...``."""
    for key in path:
        tree = tree[key]
    return tree


def set_node(tree: dict, path: tuple[str, ...], value) -> None:
    """Set ``tree[path...] = value``, creating the intermediate dicts."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
