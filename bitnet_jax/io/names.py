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


def _layer_tensors(config: ModelConfig) -> tuple[tuple[str, str, tuple[int, ...], bool], ...]:
    """(HF suffix, GGUF suffix, shape, ternary) of one decoder layer's tensors, in checkpoint order."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_size
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return (
        ("input_layernorm", "attn_norm", (d,), False),
        ("self_attn.q_proj", "attn_q", (q, d), True),
        ("self_attn.k_proj", "attn_k", (kv, d), True),
        ("self_attn.v_proj", "attn_v", (kv, d), True),
        ("self_attn.o_proj", "attn_output", (d, q), True),
        ("self_attn.attn_sub_norm", "attn_sub_norm", (q,), False),
        ("post_attention_layernorm", "ffn_norm", (d,), False),
        ("mlp.gate_proj", "ffn_gate", (f, d), True),
        ("mlp.up_proj", "ffn_up", (f, d), True),
        ("mlp.down_proj", "ffn_down", (d, f), True),
        ("mlp.ffn_sub_norm", "ffn_sub_norm", (f,), False),
    )


def tensor_names(config: ModelConfig) -> Iterator[TensorName]:
    """Every tensor of a model with ``config``: embedding, layers, final norm, and an untied head."""
    vocab, d = config.vocab_size, config.hidden_size
    yield TensorName("model.embed_tokens.weight", ("embed_tokens",), "token_embd.weight", (vocab, d), False)
    for i in range(config.num_hidden_layers):
        for hf, gguf, shape, ternary in _layer_tensors(config):
            path = (f"layers_{i}", *hf.split("."))
            yield TensorName(f"model.layers.{i}.{hf}.weight", path if ternary else (*path, "weight"),
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
