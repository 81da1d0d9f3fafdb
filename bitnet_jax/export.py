"""``save_pretrained``: write a model as a transformers directory or a GGUF file (atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from bitnet_jax.checkpoint import TernaryTensor, checkpoint_to_params, hf_name_to_param_path, ternary_linears
from bitnet_jax.errors import CheckpointError
from bitnet_jax.loading import BitNetModel, read_checkpoint
from bitnet_jax.quant import quantize_weights
import pallas_kernels
from bitnet_jax.model import unstack_layers
from pallas_kernels.layout import pack_rows4

FORMATS = ("hf", "gguf")


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def packed_params(model: BitNetModel) -> dict:
    """The packed parameter tree of ``model`` as NumPy with ``rows4`` codes (whatever the kernel layout);
    a training-form model is quantized (absmean) first."""
    params = jax.tree_util.tree_map(np.asarray, jax.device_get(model.params))
    if model.scan_layers:
        params = unstack_layers(params)
    if model.packed:
        for name, (_, in_f) in ternary_linears(model.config):
            node = _get(params, hf_name_to_param_path(name + ".weight")[:-1])
            ternary = pallas_kernels.unpack(node["weight_packed"], in_f, model.kernel_backend)
            node["weight_packed"] = np.asarray(pack_rows4(ternary))
        return params
    for name, _ in ternary_linears(model.config):
        node = _get(params, hf_name_to_param_path(name + ".weight")[:-1])
        wq, s_w = quantize_weights(node.pop("weight"))
        node["weight_packed"] = np.asarray(pack_rows4(np.asarray(wq)))
        node["weight_scale"] = np.float32(1.0 / float(s_w))
    return params


def model_tensors(model: BitNetModel) -> dict[str, Any]:
    """Every tensor of ``model`` by transformers name; ternary linears as :class:`TernaryTensor`."""
    params = packed_params(model)
    cfg = model.config
    out: dict[str, Any] = {"model.embed_tokens.weight": np.asarray(params["embed_tokens"], np.float32)}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = np.asarray(params["lm_head"], np.float32)
    out["model.norm.weight"] = np.asarray(params["norm"]["weight"], np.float32)
    from bitnet_jax.checkpoint import float_tensors

    for name, _ in float_tensors(cfg):
        out.setdefault(name, np.asarray(_get(params, hf_name_to_param_path(name)), np.float32))
    for name, _ in ternary_linears(cfg):
        node = _get(params, hf_name_to_param_path(name + ".weight")[:-1])
        out[name + ".weight"] = TernaryTensor(np.asarray(node["weight_packed"], np.uint8), float(node["weight_scale"]))
    return out


def save_pretrained(model: BitNetModel, path: str | Path, format: str = "hf", quant: str | None = None) -> Path:
    """Save ``model`` as a transformers directory (``format="hf"``) or a GGUF file (``format="gguf"``).

    ``quant`` (GGUF only): ``i2_s`` (default, bitnet.cpp), ``tq2_0``, ``tq1_0``, ``f16`` or ``f32``.
    Writes go to a temporary name first, then are renamed into place.
    """
    if format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}; choose one of {FORMATS}")
    if format == "hf":
        if quant not in (None, "i2_s", "packed"):
            raise CheckpointError(f"quant={quant!r} applies to GGUF only (HF directories are always 2-bit packed)")
        from bitnet_jax.hf import write_hf_checkpoint

        return write_hf_checkpoint(
            BitNetModel(model.config, packed_params(model), model.tokenizer, packed=True, kernel_backend="xla"), path
        )
    from bitnet_jax.gguf_write import write_gguf

    return write_gguf(model.config, model_tensors(model), model.tokenizer, path, quant or "i2_s")


def convert(src: str | Path, dst: str | Path, to: str | None = None, quant: str | None = None) -> Path:
    """Convert a checkpoint between formats without touching an accelerator (``to`` from ``dst``'s suffix)."""
    if to is None:
        to = "gguf" if str(dst).endswith(".gguf") else "hf"
    ckpt = read_checkpoint(src)
    params = checkpoint_to_params(ckpt, kernel_backend="xla")
    return save_pretrained(BitNetModel(ckpt.config, params, ckpt.tokenizer, kernel_backend="xla"), dst, to, quant)
