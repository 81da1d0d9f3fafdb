"""Writing BitNet b1.58 GGUF files with ``gguf.GGUFWriter`` (llama.cpp names and keys).

``quant`` picks the ternary encoding: ``i2_s`` (bitnet.cpp, arch ``bitnet-b1.58``, scale inside the
tensor), ``tq2_0`` / ``tq1_0`` / ``f16`` / ``f32`` (llama.cpp, arch ``bitnet``: codes with ``d = 1`` or
values -1/0/1, plus a float32 ``<name>.scale`` tensor). Either way the scale is stored exactly, so a
read-back gives identical codes and scales. The embedding (and an untied head) is F16 except for
``f32``; norms are F32. The tokenizer is written when it is a Llama 3 byte-level BPE.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import CheckpointError, CodecError
from bitnet_jax.io._atomic import atomic_output
from bitnet_jax.io._codecs import encode_i2_s, encode_tq1_0, encode_tq2_0, rows4_to_codes
from bitnet_jax.io._gguf_file import I2_S
from bitnet_jax.io.checkpoint import TernaryTensor
from bitnet_jax.io.formats import QUANTS
from bitnet_jax.io.names import by_hf

PROGRESS_BYTES = 256 << 20
_FILE_TYPE = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0,
    "tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0,
}


def _add_hparams(w: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_size)
    if cfg.head_size * cfg.num_attention_heads != cfg.hidden_size:
        w.add_key_length(cfg.head_size)
        w.add_value_length(cfg.head_size)


def _llama3_bpe(tokenizer: Any) -> tuple[list[str], list[str], list[int]] | None:
    """(tokens by id, merges, token types) when ``tokenizer`` is a Llama 3 byte-level BPE, else None."""
    from bitnet_jax.io.tokenizer import LLAMA3_SPLIT, TOKEN_CONTROL, TOKEN_USER_DEFINED

    spec = json.loads(tokenizer.backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    splits = [p for p in pre.get("pretokenizers", []) if p.get("type") == "Split"]
    if model.get("type") != "BPE" or len(splits) != 1 or splits[0].get("pattern", {}).get("Regex") != LLAMA3_SPLIT:
        return None
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    tokens = [""] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
        tokens[i] = tok
    types = [1] * len(tokens)
    for added in spec.get("added_tokens") or []:
        types[added["id"]] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, merges, types


def _add_tokenizer(w: gguf.GGUFWriter, tokenizer: Any, cfg: ModelConfig) -> None:
    found = _llama3_bpe(tokenizer)
    if found is None:
        warnings.warn("the tokenizer is not a Llama 3 byte-level BPE; the GGUF file gets no tokenizer metadata")
        return
    tokens, merges, types = found
    for i in range(len(tokens), cfg.vocab_size):  # llama.cpp wants one token per embedding row
        tokens.append(f"<|unused_{i}|>")
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else cfg.bos_token_id
    if bos is not None:
        w.add_bos_token_id(bos)
    eos = list(tokenizer.eos_ids or cfg.eos_token_ids)
    if eos:
        w.add_eos_token_id(eos[0])
    eot = tokenizer.token_to_id("<|eot_id|>")
    if eot is not None:
        w.add_eot_token_id(eot)
    w.add_add_bos_token(bos is not None)


def _add_ternary(w: gguf.GGUFWriter, name: str, t: TernaryTensor, quant: str) -> None:
    out, inp = t.shape
    codes = np.asarray(t.codes, dtype=np.uint8)
    if quant in ("tq2_0", "tq1_0") and inp % 256:
        raise CheckpointError(f"cannot encode tensor {name} as {quant.upper()}: rows of {inp} weights do not fill 256-weight blocks")
    try:
        if quant == "i2_s":
            w.add_tensor(name, encode_i2_s(codes, t.scale).view(np.int8), raw_shape=(out, inp), raw_dtype=I2_S)
            return
        if quant in ("tq2_0", "tq1_0"):
            raw = (encode_tq2_0 if quant == "tq2_0" else encode_tq1_0)(codes)
            w.add_tensor(name, raw.reshape(out, -1), raw_dtype=T.TQ2_0 if quant == "tq2_0" else T.TQ1_0)
        else:
            values = rows4_to_codes(codes).view(np.int8).reshape(out, inp) - np.int8(1)
            w.add_tensor(name, values.astype(np.float16 if quant == "f16" else np.float32))
    except CodecError as e:
        raise CheckpointError(f"cannot encode tensor {name} [{out}, {inp}] as {quant.upper()}: {e}") from None
    w.add_tensor(name.removesuffix(".weight") + ".scale", np.array([t.scale], dtype=np.float32))


def write_gguf(config: ModelConfig, tensors: dict[str, Any], tokenizer: Any, path: str | Path, quant: str = "i2_s") -> Path:
    """Write tensors keyed by HF names (ternary ones as :class:`TernaryTensor`) as a GGUF file, atomically."""
    if quant not in QUANTS:
        raise CheckpointError(f"unknown GGUF quant {quant!r}; choose one of {QUANTS}")
    arch = "bitnet-b1.58" if quant == "i2_s" else "bitnet"
    names = by_hf(config)
    with atomic_output(path) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name("bitnet-jax export")
        _add_hparams(w, config)
        if quant in _FILE_TYPE:
            w.add_file_type(_FILE_TYPE[quant])
        if tokenizer is not None:
            _add_tokenizer(w, tokenizer, config)
        float_type = np.float32 if quant == "f32" else np.float16
        total = 0
        for hf_name, value in tensors.items():
            name = names[hf_name].gguf
            if isinstance(value, TernaryTensor):
                _add_ternary(w, name, value, quant)
                total += value.codes.nbytes
            else:
                arr = np.asarray(value, dtype=np.float32)
                if arr.ndim == 2:  # embedding / head
                    arr = arr.astype(float_type)
                w.add_tensor(name, np.ascontiguousarray(arr))
                total += arr.nbytes
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=total > PROGRESS_BYTES)
        w.close()
    return Path(path)
