"""Writing BitNet-family GGUF files with ``gguf.GGUFWriter`` (llama.cpp names and keys).

``quant`` picks the ternary encoding: ``i2_s`` (bitnet.cpp type 36, scale inside the tensor, in the
``i2_s_layout`` of the bitnet.cpp build that will read it), ``tq2_0`` / ``tq1_0`` / ``f16`` / ``f32``
(codes with ``d = 1`` or values -1/0/1, plus a float32 ``<name>.scale`` tensor). Either way the scale
is stored exactly, so a read-back gives identical codes and scales. The embedding (and an untied head)
is stored as ``embed_type``: ``auto`` (default) keeps the checkpoint's own dtype (F32 for a float32
checkpoint, BF16 for a bfloat16 one), so the file computes what the checkpoint does; ``f16`` / ``bf16``
halve a float32 embedding at the cost of rounding (docs/formats.md measures it). Norms are F32.

The architecture follows the family (:func:`choose_arch`), so that the engines compute the model's own
function: relu² with sub-norms (2B4T) -> ``bitnet-b1.58`` (bitnet.cpp); SiLU with sub-norms (1bitLLM)
-> ``bitnet`` (llama.cpp's graph computes SiLU); no sub-norms (Llama, Falcon) -> ``llama``, with q/k rows
permuted as llama.cpp's converters do. ``{arch}.hidden_activation`` is always written. The tokenizer is
written whole as ``tokenizer.huggingface.json`` (read back exactly, whatever its kind) and, for llama.cpp, as
byte-level BPE (``gpt2`` with pre ``llama-bpe`` / ``gpt-2``) or SentencePiece (``llama``), with its chat
template and BOS / EOS / EOT ids.
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
from bitnet_jax.io._atomic import atomic_output, check_output
from bitnet_jax.io._codecs import (I2S_LAYOUTS, encode_i2_s, encode_tq1_0, encode_tq2_0, llama_qk_permutation,
                                   permute_rows4, rows4_to_codes)
from bitnet_jax.io._gguf_file import I2_S
from bitnet_jax.io.checkpoint import TernaryTensor
from bitnet_jax.io.formats import EMBED_TYPES, GGUF_ARCHS, QUANTS
from bitnet_jax.io.names import by_hf

PROGRESS_BYTES = 256 << 20
_FILE_TYPE = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "tq1_0": gguf.LlamaFileType.MOSTLY_TQ1_0,
    "tq2_0": gguf.LlamaFileType.MOSTLY_TQ2_0,
    "i2_s": 40,  # bitnet.cpp's LLAMA_FTYPE_MOSTLY_I2_S (without it bitnet.cpp reports the type as guessed)
}


def choose_arch(config: ModelConfig, arch: str | None = None) -> str:
    """The GGUF architecture for ``config`` (default per family, see the module doc), checked against what
    that architecture's graph computes in llama.cpp / bitnet.cpp."""
    if config.use_rms_norm:
        raise CheckpointError("GGUF cannot hold this model: no llama.cpp / bitnet.cpp graph has the BitLinear "
                              "input RMSNorm (use_rms_norm); export it as a transformers directory")
    relu2 = config.hidden_act == "relu2"
    if arch is None:
        arch = ("bitnet-b1.58" if relu2 else "bitnet") if config.sub_norms else "llama"
    if arch not in GGUF_ARCHS:
        raise CheckpointError(f"unknown GGUF arch {arch!r}; choose one of {GGUF_ARCHS}")
    if arch == "llama" and (config.sub_norms or relu2):
        raise CheckpointError(
            "GGUF arch 'llama' computes SiLU without sub-norms, and no GGUF architecture runs "
            f"{config.hidden_act} {'with' if config.sub_norms else 'without'} sub-norms that way; "
            + ("use arch 'bitnet-b1.58' or 'bitnet'" if config.sub_norms else "this model cannot be exported to GGUF"))
    if arch != "llama" and not config.sub_norms:
        raise CheckpointError(f"GGUF arch {arch!r} has sub-norms, which this model has not: use arch 'llama'")
    if arch in ("bitnet-b1.58", "bitnet-25") and not relu2:
        raise CheckpointError(f"GGUF arch {arch!r} computes relu² in bitnet.cpp whatever the file says; this model "
                              "uses silu: use arch 'bitnet'")
    if arch != "llama" and not config.tie_word_embeddings:
        warnings.warn(f"GGUF arch {arch!r}: the engines' graphs multiply by token_embd, so an untied head "
                      "(output.weight) is ignored by bitnet.cpp and refused by llama.cpp; only bitnet-jax reads it back")
    if arch == "bitnet" and relu2:
        warnings.warn("GGUF arch 'bitnet' with hidden_activation relu2: llama.cpp builds that do not read "
                      "bitnet.hidden_activation (llama-cpp-python 0.3.x included) compute SiLU instead")
    return arch


def _add_hparams(w: gguf.GGUFWriter, cfg: ModelConfig, arch: str) -> None:
    w.add_string(f"{arch}.hidden_activation", cfg.hidden_act)
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


def _byte_level_bpe(tokenizer: Any) -> tuple[list[str], list[str], list[int], str] | None:
    """(tokens by id, merges, token types, llama.cpp pre-tokenizer name) when ``tokenizer`` is a byte-level
    BPE, else None: ``llama-bpe`` for the Llama 3 split, ``gpt-2`` for the GPT-2 regex of a ``ByteLevel``
    pre-tokenizer (the bundled model's), ``default`` for any other split."""
    from bitnet_jax.io.tokenizer import LLAMA3_SPLIT, TOKEN_CONTROL, TOKEN_USER_DEFINED

    spec = json.loads(tokenizer.backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        return None
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if not any(p.get("type") == "ByteLevel" for p in steps):
        return None
    splits = [p for p in steps if p.get("type") == "Split"]
    if len(splits) == 1 and splits[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
        name = "llama-bpe"
    elif not splits and len(steps) == 1 and steps[0].get("use_regex", True):
        name = "gpt-2"
    else:
        name = "default"
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    tokens = [""] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
        tokens[i] = tok
    types = [1] * len(tokens)
    for added in spec.get("added_tokens") or []:
        types[added["id"]] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, merges, types, name


def _sentencepiece(tokenizer: Any) -> tuple[list[str], list[float], list[int]] | None:
    """(pieces, scores, token types) when ``tokenizer`` is a SentencePiece-style byte-fallback BPE, else None.

    Scores are the SentencePiece ones when the tokenizer came from a SentencePiece source, otherwise
    ``-id`` (SentencePiece BPE scores fall with the id, so merges keep their order).
    """
    from bitnet_jax.io.tokenizer import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN

    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    pieces = [""] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
        pieces[i] = tok
    scores = getattr(tokenizer, "scores", None)
    scores = [float(x) for x in scores] if scores is not None else [-float(i) for i in range(len(pieces))]
    specials = {a["content"] for a in spec.get("added_tokens") or [] if a.get("special")}
    unk = model.get("unk_token")
    types = [TOKEN_UNKNOWN if p == unk else TOKEN_CONTROL if p in specials else
             TOKEN_BYTE if len(p) == 6 and p.startswith("<0x") and p.endswith(">") else TOKEN_NORMAL for p in pieces]
    return pieces, scores, types


def _add_tokenizer(w: gguf.GGUFWriter, tokenizer: Any, cfg: ModelConfig) -> None:
    """The tokenizer as ``tokenizer.huggingface.json`` (the whole ``tokenizers`` JSON, which bitnet-jax reads
    back exactly) and, for a byte-level or SentencePiece BPE, as ``tokenizer.ggml.*`` for llama.cpp; then the
    chat template and the BOS / EOS / EOT ids."""
    w.add_string(gguf.Keys.Tokenizer.HF_JSON, tokenizer.backend.to_str())
    bpe = _byte_level_bpe(tokenizer)
    spm = None if bpe is not None else _sentencepiece(tokenizer)
    if bpe is not None or spm is not None:
        tokens, types = (bpe[0], bpe[2]) if bpe else (spm[0], spm[2])
        scores = spm[1] if spm else None
        for i in range(len(tokens), cfg.vocab_size):  # llama.cpp wants one token per embedding row
            tokens.append(f"<|unused_{i}|>" if bpe else f"<unused_{i}>")
            types.append(gguf.TokenType.UNUSED)
            if scores is not None:
                scores.append(-1e9)
        if bpe:
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre(bpe[3])
            w.add_token_merges(bpe[1])
        else:
            w.add_tokenizer_model("llama")
            w.add_token_scores(scores)
        w.add_token_list(tokens)
        w.add_token_types(types)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else cfg.bos_token_id
    if bos is not None:
        w.add_bos_token_id(bos)
    eos = list(tokenizer.eos_ids or cfg.eos_token_ids)
    if eos:
        w.add_eos_token_id(eos[0])
    eot = tokenizer.token_to_id("<|eot_id|>")
    if eot is None:
        turn = [i for i in tokenizer.end_of_turn_ids() if i not in eos[:1]] if hasattr(tokenizer, "end_of_turn_ids") else []
        eot = turn[0] if turn else (eos[0] if eos else None)
    if eot is not None:
        w.add_eot_token_id(eot)
    w.add_add_bos_token(bos is not None)


def _add_ternary(w: gguf.GGUFWriter, name: str, t: TernaryTensor, quant: str, i2_s_layout: str) -> None:
    out, inp = t.shape
    codes = np.asarray(t.codes, dtype=np.uint8)
    try:
        if quant == "i2_s":
            w.add_tensor(name, encode_i2_s(codes, t.scale, i2_s_layout).view(np.int8), raw_shape=(out, inp),
                         raw_dtype=I2_S)
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


def _check_rows(config: ModelConfig, tensors: dict[str, Any], names: dict, quant: str, i2_s_layout: str) -> None:
    """Refuse TQ1_0 / TQ2_0 for rows that do not fill 256-weight blocks (before anything is written), naming
    the alternatives; one warning when I2_S rows are not a multiple of bitnet.cpp's kernel block."""
    ternary = [(names[k].gguf, v.shape) for k, v in tensors.items() if isinstance(v, TernaryTensor)]
    if quant in ("tq2_0", "tq1_0"):
        bad = [(n, shape) for n, shape in ternary if shape[1] % 256]
        if bad:
            name, (out, inp) = bad[0]
            raise CheckpointError(
                f"cannot encode tensor {name} [{out}, {inp}] as {quant.upper()}"
                + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                + f": the format packs whole 256-weight blocks and llama.cpp reads no padded rows, so rows of {inp} "
                "weights cannot be stored; use --quant i2_s (bitnet.cpp, and bitnet-jax) or f16, or a transformers "
                "directory")
    if quant == "i2_s":
        block = I2S_LAYOUTS[i2_s_layout] or 128
        bad = [(n, shape) for n, shape in ternary if shape[1] % block]
        if bad:
            warnings.warn(f"{len(bad)} tensors (first {bad[0][0]}) have rows of {bad[0][1][1]} weights, not a multiple "
                          f"of {block}: bitnet.cpp's I2_S kernels cannot run this file; bitnet-jax reads it back "
                          "exactly (for llama.cpp use --quant f16)", stacklevel=3)


def _llama_rows(config: ModelConfig, name: str) -> np.ndarray | None:
    """The converters' q/k row permutation for GGUF arch ``llama`` (None for other tensors)."""
    part = name.rsplit(".", 2)[-2]
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(part)
    if heads is None:
        return None
    rows = (config.num_attention_heads if part == "attn_q" else config.num_key_value_heads) * config.head_size
    return llama_qk_permutation(rows, heads)


def _embedding(arr: Any, embed_type: str) -> tuple[np.ndarray, Any]:
    """(array to write, raw GGML type or None) of a 2-D float tensor stored as ``embed_type``."""
    if embed_type == "auto":
        name = np.dtype(getattr(arr, "dtype", np.float32)).name
        embed_type = {"bfloat16": "bf16", "float16": "f16"}.get(name, "f32")
    x = np.asarray(arr, dtype=np.float32)
    if embed_type == "f32":
        return x, None
    if embed_type == "f16":
        return x.astype(np.float16), None
    import ml_dtypes

    bits = np.ascontiguousarray(x.astype(ml_dtypes.bfloat16)).view(np.uint8)  # round to nearest even
    return bits, T.BF16


def write_gguf(config: ModelConfig, tensors: dict[str, Any], tokenizer: Any, path: str | Path, quant: str = "i2_s",
               arch: str | None = None, i2_s_layout: str = "x86", embed_type: str = "auto",
               overwrite: bool = False) -> Path:
    """Write tensors keyed by HF names (ternary ones as :class:`TernaryTensor`) as a GGUF file, atomically.

    ``arch`` defaults per family (:func:`choose_arch`); ``i2_s_layout`` (``x86``, ``arm``, ``x86-1x4``)
    is the code layout of the bitnet.cpp build that will read an ``i2_s`` file; ``embed_type`` (``auto``,
    ``f32``, ``f16``, ``bf16``) the storage of the embedding and an untied head.
    """
    if quant not in QUANTS:
        raise CheckpointError(f"unknown GGUF quant {quant!r}; choose one of {QUANTS}")
    if embed_type not in EMBED_TYPES:
        raise CheckpointError(f"unknown embedding type {embed_type!r}; choose one of {EMBED_TYPES}")
    if i2_s_layout not in I2S_LAYOUTS:
        raise CheckpointError(f"unknown I2_S layout {i2_s_layout!r}; choose one of {tuple(I2S_LAYOUTS)}")
    arch = choose_arch(config, arch)
    names = by_hf(config)
    _check_rows(config, tensors, names, quant, i2_s_layout)
    check_output(path, "gguf", overwrite)  # before any work
    with atomic_output(path, kind="gguf", overwrite=overwrite) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name("bitnet-jax export")
        _add_hparams(w, config, arch)
        if quant in _FILE_TYPE:
            w.add_file_type(_FILE_TYPE[quant])
        if tokenizer is not None:
            _add_tokenizer(w, tokenizer, config)
        total = 0
        for hf_name, value in tensors.items():
            name = names[hf_name].gguf
            perm = _llama_rows(config, name) if arch == "llama" else None
            if isinstance(value, TernaryTensor):
                if perm is not None:
                    value = TernaryTensor(permute_rows4(value.codes, perm), value.scale)
                _add_ternary(w, name, value, quant, i2_s_layout)
                total += value.codes.nbytes
            else:
                raw = None
                arr = value if np.asarray(value).ndim == 2 else np.asarray(value, dtype=np.float32)
                if perm is not None:  # a q/k projection kept float (modules_to_not_convert)
                    arr = np.asarray(arr)[perm]
                if np.asarray(arr).ndim == 2:  # embedding / head (and float-kept projections)
                    arr, raw = _embedding(arr, embed_type)
                w.add_tensor(name, np.ascontiguousarray(arr), raw_dtype=raw)
                total += arr.nbytes
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=total > PROGRESS_BYTES)
        w.close()
    return Path(path)
