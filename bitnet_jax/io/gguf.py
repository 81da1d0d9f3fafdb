"""BitNet b1.58 GGUF checkpoints of every family -> :class:`Checkpoint`.

Architectures: ``bitnet`` (upstream llama.cpp, 1bitLLM conversions: sub-norms; FFN activation from
``bitnet.hidden_activation``, SiLU when absent, as upstream decides), ``bitnet-b1.58`` and ``bitnet-25``
(bitnet.cpp: relu², sub-norms) and ``llama`` holding ternary tensors (Llama3-8B-1.58, Falcon3, Falcon-E:
SiLU, no sub-norms; the converters' q/k row permutation is undone; an ``output`` tensor is an untied head).

Tensor types: F32, F16, BF16 (floats; a ternary linear stored as floats must hold ``{-s, 0, s}``),
TQ1_0 / TQ2_0 (llama.cpp) and I2_S (bitnet.cpp, type 36). A ternary linear's scale is the product of
its encoding's scale (TQ block ``d``, I2_S float, the float magnitude ``s``) and an optional
``<name>.scale`` tensor (upstream llama.cpp). Ternary weights stay 2-bit packed; the file is
memory-mapped and checked (see :mod:`bitnet_jax.io._gguf_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from gguf import GGMLQuantizationType as T
from tqdm import tqdm

from bitnet_jax._memory import release_pages
from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import CheckpointError, CodecError, ConfigError
from bitnet_jax.io._codecs import codes_to_rows4, decode_i2_s, decode_tq, llama_qk_permutation, permute_rows4
from bitnet_jax.io._gguf_file import I2_S, GGUFFile, TensorInfo, open_gguf
from bitnet_jax.io.checkpoint import Checkpoint, TernaryTensor
from bitnet_jax.io.names import by_gguf

ARCHS = ("bitnet", "bitnet-b1.58", "bitnet-25", "llama")
RELU2_ARCHS = ("bitnet-b1.58", "bitnet-25")  # bitnet.cpp's graph for these computes relu^2 whatever the file says
ACTIVATION_NAMES = {"silu": "silu", "swiglu": "silu", "relu2": "relu2", "relu_sqr": "relu2", "relu_squared": "relu2"}
PROGRESS_BYTES = 256 << 20  # show a progress bar when the tensors exceed this

def _meta(f: GGUFFile, key: str, kind: type | tuple, default: Any = None, required: bool = False) -> Any:
    if key not in f.metadata:
        if required:
            raise CheckpointError(f"{f.path}: missing GGUF metadata key {key}")
        return default
    value = f.metadata[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise CheckpointError(f"{f.path}: GGUF metadata {key} = {value!r} has the wrong type")
    return value


def hidden_act_from_gguf(f: GGUFFile, arch: str) -> str:
    """The FFN activation a GGUF's ``arch`` and ``{arch}.hidden_activation`` mean (see the module doc)."""
    key = f"{arch}.hidden_activation"
    name = _meta(f, key, str, default=None)
    act = None
    if name is not None:
        act = ACTIVATION_NAMES.get(name.lower())
        if act is None:
            raise CheckpointError(f"{f.path}: GGUF metadata {key} = {name!r} is not an activation bitnet-jax runs "
                                  f"(one of {sorted(ACTIVATION_NAMES)})")
    fixed = "relu2" if arch in RELU2_ARCHS else "silu" if arch == "llama" else None
    if fixed is not None and act is not None and act != fixed:
        raise CheckpointError(f"{f.path}: GGUF metadata {key} = {name!r} contradicts arch {arch!r}, "
                              f"whose graph computes {fixed} in every engine")
    return fixed or act or "silu"


def config_from_gguf(f: GGUFFile, arch: str) -> ModelConfig:
    """Map ``<arch>.*`` hyper-parameters (and the token_embd / output tensors) onto a ModelConfig."""
    k = lambda name: f"{arch}.{name}"  # noqa: E731
    num = (int, float)
    layers = _meta(f, k("block_count"), int, required=True)
    if not 0 < layers <= len(f.tensors):  # every block has 11 tensors: bound before iterating
        raise CheckpointError(f"{f.path}: GGUF metadata {k('block_count')} = {layers} does not fit the {len(f.tensors)} tensors")
    hidden = _meta(f, k("embedding_length"), int, required=True)
    heads = _meta(f, k("attention.head_count"), int, required=True)
    embd = f.tensors.get("token_embd.weight")
    if embd is None or len(embd.dims) != 2:
        raise CheckpointError(f"{f.path}: missing 2-D tensor token_embd.weight")
    vocab = _meta(f, k("vocab_size"), int, default=embd.dims[1])
    if vocab != embd.dims[1]:
        raise CheckpointError(f"{f.path}: GGUF metadata {k('vocab_size')} = {vocab} but token_embd has {embd.dims[1]} rows")
    head_dim = _meta(f, k("attention.key_length"), int, default=None)
    head_size = head_dim or (hidden // heads if heads else 0)
    rope_dims = _meta(f, k("rope.dimension_count"), int, default=head_size)
    if rope_dims != head_size:
        raise CheckpointError(f"{f.path}: {k('rope.dimension_count')} = {rope_dims}: partial RoPE is not supported")
    scaling = _meta(f, k("rope.scaling.type"), str, default="none")
    factor = _meta(f, k("rope.scaling.factor"), num, default=1.0)
    if scaling not in ("none", "linear") or factor != 1.0:
        raise CheckpointError(f"{f.path}: {k('rope.scaling.type')} {scaling!r} x{factor} is not supported")
    eos = [
        _meta(f, key, int)
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
        if key in f.metadata
    ]
    eos = tuple(dict.fromkeys(eos))
    try:
        return ModelConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=_meta(f, k("feed_forward_length"), int, required=True),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=_meta(f, k("attention.head_count_kv"), int, default=heads),
            head_dim=head_dim,
            max_position_embeddings=_meta(f, k("context_length"), int, default=2048),
            rms_norm_eps=float(_meta(f, k("attention.layer_norm_rms_epsilon"), num, default=1e-5)),
            rope_theta=float(_meta(f, k("rope.freq_base"), num, default=10000.0)),
            tie_word_embeddings="output.weight" not in f.tensors,
            bos_token_id=_meta(f, "tokenizer.ggml.bos_token_id", int),
            eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
            hidden_act=hidden_act_from_gguf(f, arch),
            sub_norms=arch != "llama",
        )
    except (ConfigError, ZeroDivisionError) as e:
        raise CheckpointError(f"{f.path}: GGUF metadata gives an invalid model config: {e}") from None


def _float_array(f: GGUFFile, t: TensorInfo) -> np.ndarray:
    if t.type_id == T.F32:
        return f.tensor_array(t.name, np.float32)
    if t.type_id == T.F16:
        return f.tensor_array(t.name, np.float16)
    if t.type_id == T.BF16:  # a view, as F16 and F32 are (a float32 copy of a BF16 table is 1.3 GB for 2B4T)
        return f.tensor_array(t.name, np.uint16).view(jnp.bfloat16)
    raise CheckpointError(f"{f.path}: tensor {t.name} has type {t.type_name}, expected F32, F16 or BF16")


def _ternary_from_floats(w: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    w = np.asarray(w, dtype=np.float32)
    mag = np.abs(w[w != 0])
    scale = float(mag[0]) if mag.size else 1.0
    if mag.size and np.any(mag != mag[0]):
        raise CodecError(f"float weights are not ternary (nonzero magnitudes {scale!r} and {float(mag[mag != mag[0]][0])!r})")
    codes = (np.sign(w).astype(np.int8) + np.int8(1)).view(np.uint8)
    return codes_to_rows4(codes.reshape(-1), shape), scale


def _scale_tensor(f: GGUFFile, weight_name: str) -> float:
    name = weight_name.removesuffix(".weight") + ".scale"
    t = f.tensors.get(name)
    if t is None:
        return 1.0
    if t.n_elements != 1:
        raise CheckpointError(f"{f.path}: tensor {name} must hold one value, has dims {list(t.dims)}")
    return float(np.asarray(_float_array(f, t), dtype=np.float32).reshape(()))


def _ternary(f: GGUFFile, t: TensorInfo, shape: tuple[int, int], i2_s_layout: str) -> TernaryTensor:
    raw = f.tensor_bytes(t.name)
    try:
        if t.type_id == I2_S:
            codes, scale = decode_i2_s(raw, shape, i2_s_layout)
        elif t.type_id in (T.TQ1_0, T.TQ2_0):
            codes, scale = decode_tq(raw, shape, t.type_name)
        elif t.type_id in (T.F32, T.F16, T.BF16):
            codes, scale = _ternary_from_floats(_float_array(f, t), shape)
        else:
            raise CodecError(f"type {t.type_name} is not a supported ternary type (I2_S, TQ1_0, TQ2_0, F32/F16/BF16)")
    except CodecError as e:
        hint = ""
        if t.type_id in (T.F32, T.F16, T.BF16) and f.metadata.get("general.architecture") == "llama":
            hint = "; a llama GGUF of full-precision weights is not a ternary model (it would be ternarized wrongly)"
        raise CheckpointError(f"{f.path}: tensor {t.name} ({t.type_name}): {e}{hint}") from None
    return TernaryTensor(codes=codes, scale=scale * _scale_tensor(f, t.name))


def _unpermute_llama_qk(config: ModelConfig, name: str, t: TernaryTensor) -> TernaryTensor:
    """Undo llama.cpp's q/k row permutation of a GGUF ``llama`` tensor (other tensors unchanged)."""
    part = name.rsplit(".", 2)[-2]
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(part)
    if heads is None:
        return t
    perm = llama_qk_permutation(t.shape[0], heads)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size)
    return TernaryTensor(permute_rows4(t.codes, inverse), t.scale)


def read_gguf_checkpoint(path: str | Path, i2_s_layout: str = "x86") -> Checkpoint:
    """Read a BitNet-family GGUF file into a :class:`Checkpoint` (ternary weights kept packed).

    ``i2_s_layout`` says which bitnet.cpp build wrote its I2_S tensors (``x86``, the default; ``arm``;
    ``x86-1x4``): the file does not record it.
    """
    f = open_gguf(path)
    arch = f.metadata.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHS:
        raise CheckpointError(f"{f.path}: general.architecture {arch!r} is not supported (expected one of {ARCHS})")
    config = config_from_gguf(f, arch)
    expected = by_gguf(config)
    scale_names = {n for n in f.tensors if n.endswith(".scale")}
    for n in scale_names:
        weight = n.removesuffix(".scale") + ".weight"
        if weight not in f.tensors:
            raise CheckpointError(f"{f.path}: tensor {n} has no matching weight tensor")
        if weight in expected and not expected[weight].ternary:
            raise CheckpointError(f"{f.path}: tensor {n} scales {weight}, which is not a ternary weight "
                                  "(only ternary linears carry a .scale tensor)")
    if scale_names:  # upstream llama.cpp writes one per ternary linear: a missing one would silently be 1.0
        for gname, t in expected.items():
            if t.ternary and gname in f.tensors and gname.removesuffix(".weight") + ".scale" not in scale_names:
                raise CheckpointError(f"{f.path}: missing tensor {gname.removesuffix('.weight')}.scale "
                                      "(the file's other ternary weights have .scale tensors)")
    tensors: dict[str, Any] = {}
    infos = [t for n, t in f.tensors.items() if n not in scale_names]
    total = sum(t.nbytes for t in infos)
    with tqdm(total=total, unit="B", unit_scale=True, desc="loading GGUF", disable=total < PROGRESS_BYTES) as bar:
        for t in infos:
            name = expected.get(t.name)
            if name is None:
                raise CheckpointError(f"{f.path}: unexpected tensor {t.name} (not part of a {arch} model with this config)")
            if t.shape != name.shape:
                raise CheckpointError(f"{f.path}: tensor {t.name} has shape {list(t.shape)}, expected {list(name.shape)}")
            if name.ternary:
                value = _ternary(f, t, name.shape, i2_s_layout)
                tensors[name.hf] = _unpermute_llama_qk(config, t.name, value) if arch == "llama" else value
                release_pages(f.tensor_bytes(t.name))  # decoded into its own arrays: the file's pages can go
            else:
                tensors[name.hf] = _float_array(f, t)
            bar.update(t.nbytes)
    missing = [n for n, t in expected.items() if t.hf not in tensors]
    if missing:
        raise CheckpointError(f"{f.path}: missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    tokenizer = None
    if "tokenizer.ggml.tokens" in f.metadata or "tokenizer.huggingface.json" in f.metadata:
        from bitnet_jax.io.tokenizer import check_vocabulary, tokenizer_from_gguf_metadata

        tokenizer = tokenizer_from_gguf_metadata(f.metadata, str(f.path))
        check_vocabulary(tokenizer.backend, config.vocab_size, str(f.path))
    return Checkpoint(config=config, tensors=tensors, source=str(f.path), tokenizer=tokenizer)
