"""transformers-style directories of every BitNet family: ``config.json`` + safetensors (single or
sharded), read and written.

Families (:func:`hf_family`): transformers' ``BitNetForCausalLM`` (``model_type: bitnet``), 1bitLLM's
remote-code ``BitnetForCausalLM`` (``model_type: llama``, SiLU, sub-norms ``inner_attn_ln`` /
``ffn_layernorm``, latent fp16 weights) and ``LlamaForCausalLM`` with a bitnet ``quantization_config``
(Llama3-8B-1.58, Falcon3-1.58bit, Falcon-E: SiLU, no sub-norms). A Llama directory without a bitnet
``quantization_config`` is full precision and is refused. ``generation_config.json``'s EOS ids join the
config's.

Two weight forms are understood:

* **packed (offline)**: ``quantization_config = {"quant_method": "bitnet", "quantization_mode":
  "offline", ...}``; each ternary linear stores ``weight`` as ``uint8 [out/4, in]`` (``rows4``) and
  ``weight_scale``. With ``linear_class: "autobitlinear"`` the scale multiplies the layer output; with
  ``"bitlinear"`` (transformers' default) it divides it. Codes stay packed.
* **latent float**: ``quantization_mode: "online"`` or no quantization config; float weights are
  quantized at load with absmean (exactly as transformers' online ``WeightQuant`` does), or kept float
  (``read_hf_checkpoint(..., latent=True)``, what a fine-tune starts from).

``write_hf_checkpoint`` writes the packed form, or (``latent=True``, a training-form model) the latent
float weights under ``quantization_mode: "online"``, as the 2B4T ``-bf16`` repository holds them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open

from bitnet_jax.config import ModelConfig
from bitnet_jax.config.model import BITNET_SUB_NORMS, ONEBITLLM_SUB_NORMS
from bitnet_jax.errors import CheckpointError, ConfigError
from bitnet_jax.io._atomic import atomic_output, check_output
from bitnet_jax.io.checkpoint import Checkpoint, TernaryTensor, params_to_tensors
from bitnet_jax.io.names import ternary_tensors

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_FILE = "generation_config.json"
ROTARY_BUFFER = ".rotary_emb.inv_freq"


def is_hf_directory(path: Path) -> bool:
    """True when ``path`` is a directory holding a ``config.json``."""
    return path.is_dir() and (path / "config.json").is_file()


def load_hf_config_file(path: Path) -> dict[str, Any]:
    """Read a ``config.json`` with an error naming the file when it is missing or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


# model_type -> (class defaults transformers fills in for keys a config.json leaves out)
_DEFAULTS = {
    "bitnet": dict(vocab_size=128256, hidden_size=2560, intermediate_size=6912, num_hidden_layers=30,
                   num_attention_heads=20, hidden_act="relu2", max_position_embeddings=2048, rms_norm_eps=1e-5,
                   rope_theta=500000.0),
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
                  rope_theta=10000.0),
}
ONEBITLLM_ARCH = "BitnetForCausalLM"  # 1bitLLM's remote-code class (model_type llama, latent fp16 weights)


def hf_family(hf: Mapping[str, Any], source: str = "config.json") -> str:
    """Which family a ``config.json`` describes: ``bitnet`` (transformers' BitNetForCausalLM),
    ``1bitllm`` (1bitLLM's BitnetForCausalLM) or ``llama`` (LlamaForCausalLM with a bitnet
    ``quantization_config``). A Llama checkpoint without one is full precision and is refused."""
    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if not isinstance(archs, list):
        raise ConfigError(f"{source}: architectures must be a list, got {type(archs).__name__}")
    if model_type == "bitnet":
        return "bitnet"
    if model_type == "llama":
        if ONEBITLLM_ARCH in archs:
            return "1bitllm"
        qc = hf.get("quantization_config")
        if isinstance(qc, Mapping) and qc.get("quant_method") == "bitnet":
            return "llama"
        raise ConfigError(
            f"{source}: a Llama checkpoint without a bitnet quantization_config (quant_method: bitnet) holds "
            "full-precision weights, not a ternary model; ternarizing it would give a different, broken model"
        )
    raise ConfigError(f"{source}: unsupported model_type {model_type!r} (expected 'bitnet', or 'llama' with a "
                      "bitnet quantization_config, or 1bitLLM's BitnetForCausalLM)")


def _quantization_settings(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """mode, linear_class, use_rms_norm, its eps and modules_to_not_convert from ``quantization_config``
    (mode ``online``, i.e. latent weights quantized at load, when there is none)."""
    qc = hf.get("quantization_config")
    if qc is None:
        return dict(mode="online", linear_class="autobitlinear", use_rms_norm=False, eps=1e-6, skip=None)
    if not isinstance(qc, Mapping):
        raise ConfigError(f"{source}: quantization_config must be an object")
    key = lambda name: f"{source}: quantization_config.{name}"  # noqa: E731
    method = qc.get("quant_method", "bitnet")
    if method != "bitnet":
        raise ConfigError(f"{key('quant_method')}: unsupported {method!r} (expected 'bitnet')")
    mode = qc.get("quantization_mode", "offline")
    linear_class = qc.get("linear_class", "bitlinear")
    if mode not in ("online", "offline"):
        raise ConfigError(f"{key('quantization_mode')}: unknown {mode!r} (expected 'online' or 'offline')")
    if linear_class not in ("bitlinear", "autobitlinear"):
        raise ConfigError(f"{key('linear_class')}: unknown {linear_class!r} (expected 'bitlinear' or 'autobitlinear')")
    if mode == "online" and linear_class != "autobitlinear":
        raise ConfigError(f"{key('quantization_mode')}: 'online' exists only with linear_class 'autobitlinear'")
    use_rms_norm = qc.get("use_rms_norm", False)
    if not isinstance(use_rms_norm, bool):
        raise ConfigError(f"{key('use_rms_norm')}: must be true or false, got {use_rms_norm!r}")
    eps = qc.get("rms_norm_eps", 1e-6)
    if eps is None:
        eps = 1e-6
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ConfigError(f"{key('rms_norm_eps')}: must be a number > 0, got {eps!r}")
    skip = qc.get("modules_to_not_convert")
    if skip is not None and (not isinstance(skip, list) or not all(isinstance(m, str) for m in skip)):
        raise ConfigError(f"{key('modules_to_not_convert')}: must be a list of module names or null, got {skip!r:.80}")
    return dict(mode=mode, linear_class=linear_class, use_rms_norm=use_rms_norm, eps=float(eps),
                skip=None if skip is None else tuple(skip))


def _eos_ids(value: Any, source: str, key: str) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{source}: {key} must be a token id or a list of them, got {value!r:.80}")
    return values


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json",
                   generation: Mapping[str, Any] | None = None) -> ModelConfig:
    """Map a transformers ``config.json`` (BitNet, 1bitLLM or ternary Llama) onto a :class:`ModelConfig`.

    ``generation`` (``generation_config.json``) adds its EOS ids to the config's.
    """
    family = hf_family(hf, source)
    defaults = _DEFAULTS["bitnet" if family == "bitnet" else "llama"]
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, Mapping):
        raise ConfigError(f"{source}: rope_parameters must be an object, got {type(rope).__name__}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{source}: unsupported rope type {rope_type!r} (only 'default' RoPE is supported)")
    theta = hf.get("rope_theta", rope.get("rope_theta", defaults["rope_theta"]))
    for bias in ("attention_bias", "mlp_bias"):
        if hf.get(bias):
            raise ConfigError(f"{source}: {bias}=true is not part of BitNet b1.58 and is not supported")
    qs = _quantization_settings(hf, source)
    eos = _eos_ids(hf.get("eos_token_id"), source, "eos_token_id")
    if generation is not None:
        eos += _eos_ids(generation.get("eos_token_id"), "generation_config.json", "eos_token_id")
    eos = list(dict.fromkeys(eos))
    skip = qs["skip"]
    heads = hf.get("num_attention_heads", defaults["num_attention_heads"])
    fields = dict(
        vocab_size=hf.get("vocab_size", defaults["vocab_size"]),
        hidden_size=hf.get("hidden_size", defaults["hidden_size"]),
        intermediate_size=hf.get("intermediate_size", defaults["intermediate_size"]),
        num_hidden_layers=hf.get("num_hidden_layers", defaults["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim"),
        hidden_act=hf.get("hidden_act", defaults["hidden_act"]),
        max_position_embeddings=hf.get("max_position_embeddings", defaults["max_position_embeddings"]),
        rms_norm_eps=hf.get("rms_norm_eps", defaults["rms_norm_eps"]),
        rope_theta=theta,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=eos[0] if len(eos) == 1 else (tuple(eos) or None),
        pad_token_id=hf.get("pad_token_id"),
        sub_norms=family != "llama",
        sub_norm_names=ONEBITLLM_SUB_NORMS if family == "1bitllm" else BITNET_SUB_NORMS,
        use_rms_norm=qs["use_rms_norm"],
        linear_rms_norm_eps=qs["eps"],
        modules_to_not_convert=skip,
    )
    return ModelConfig.from_dict(fields, source=source, prefix="")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The transformers config dict for ``config`` (without quantization_config): ``BitNetForCausalLM``
    for a model with sub-norms (whatever its checkpoint names them), ``LlamaForCausalLM`` without."""
    bitnet = config.sub_norms
    out = {
        "architectures": ["BitNetForCausalLM" if bitnet else "LlamaForCausalLM"],
        "model_type": "bitnet" if bitnet else "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_size,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": list(config.eos_token_id) if isinstance(config.eos_token_id, tuple) else config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "attention_bias": False,
        "torch_dtype": config.dtype,
    }
    if not bitnet:
        out["mlp_bias"] = False
    return out


def quantization_config_to_hf(config: ModelConfig, online: bool = False) -> dict[str, Any]:
    """The ``quantization_config`` of a directory we write: autobitlinear, offline (packed) or ``online``
    (latent weights)."""
    qc: dict[str, Any] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                          "quantization_mode": "online" if online else "offline"}
    if config.use_rms_norm:
        qc.update(use_rms_norm=True, rms_norm_eps=config.linear_rms_norm_eps)
    if config.modules_to_not_convert is not None:
        qc["modules_to_not_convert"] = list(config.modules_to_not_convert)
    return qc


MAX_SHARD_NAME = 255  # bytes of one file name on common file systems
# safetensors dtypes a checkpoint tensor may have (NumPy reads all but BF16, which goes through ml_dtypes)
SAFETENSORS_DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")


def _read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a sharded checkpoint's index, each entry checked (names and shard file names)."""
    data = load_hf_config_file(index)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: weight_map must be a non-empty object of tensor name -> shard file, "
                              f"got {type(weight_map).__name__}")
    for name, fname in weight_map.items():
        if not isinstance(fname, str) or not fname or "\0" in fname:
            raise CheckpointError(f"{index}: weight_map[{name!r:.80}] must be a shard file name, got {fname!r:.80}")
        if any(len(part.encode("utf-8", "surrogatepass")) > MAX_SHARD_NAME for part in Path(fname).parts):
            raise CheckpointError(f"{index}: weight_map[{name!r:.80}]: shard name {fname[:40]!r}... is too long")
    return weight_map


def _safetensors_keys(f: Path) -> list[str]:
    """The tensor names of a safetensors file, each tensor's dtype checked (errors name the file)."""
    try:
        with safe_open(f, framework="numpy") as sf:
            names = list(sf.keys())
            for name in names:
                dtype = sf.get_slice(name).get_dtype()
                if dtype not in SAFETENSORS_DTYPES:
                    raise CheckpointError(f"{f}: tensor {name} has dtype {dtype}, which bitnet-jax does not read "
                                          f"(expected one of {SAFETENSORS_DTYPES})")
            return names
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{f}: cannot read safetensors header ({e})") from None


def _weight_files(path: Path) -> dict[str, Path]:
    """Map each tensor name to the safetensors file holding it."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = _read_index(index)
        files = {}
        root = path.resolve()
        checked: dict[Path, set[str]] = {}
        for name, fname in weight_map.items():
            try:
                f = (path / fname).resolve()
                exists = f.is_file()
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{index}: shard {fname[:80]!r} for {name} cannot be opened ({e})") from None
            if root not in f.parents:
                raise CheckpointError(f"{index}: shard {fname!r} for {name} lies outside the model directory")
            if not exists:
                raise CheckpointError(f"{index}: shard {fname} (for {name}) does not exist")
            if f not in checked:
                checked[f] = set(_safetensors_keys(f))
            files[name] = f
        return files
    single = path / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE} found")
    return {name: single for name in _safetensors_keys(single)}


def _read_tensors(files: dict[str, Path]) -> dict[str, np.ndarray]:
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    out = {}
    for f, names in by_file.items():
        try:
            with safe_open(f, framework="numpy") as sf:
                present = set(sf.keys())
                for name in names:
                    if name not in present:
                        raise CheckpointError(f"{f}: tensor {name} listed in the index is missing from the file")
                    try:
                        out[name] = sf.get_tensor(name)
                    except TypeError:  # bfloat16: NumPy has no such dtype; read it through JAX (ml_dtypes)
                        with safe_open(f, framework="flax") as fx:
                            out[name] = np.asarray(fx.get_tensor(name))
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{f}: cannot read tensors ({e})") from None
    return out


def read_hf_checkpoint(path: str | Path, latent: bool = False, config: ModelConfig | None = None) -> Checkpoint:
    """Read a transformers BitNet directory into a format-neutral :class:`Checkpoint`.

    ``latent=True`` keeps latent (online-mode) ternary weights as float arrays instead of quantizing them;
    ``config`` is the model config when the caller mapped ``config.json`` itself (another family's).
    """
    path = Path(path)
    cfg_file = path / "config.json"
    hf = load_hf_config_file(cfg_file)
    if config is None:
        config = config_from_hf(hf, source=str(cfg_file), generation=_generation_config(path))
    qs = _quantization_settings(hf, str(cfg_file))
    mode, linear_class = qs["mode"], qs["linear_class"]
    raw = _read_tensors(_weight_files(path))
    tensors: dict[str, Any] = {}
    ternary_names = {t.hf.removesuffix(".weight") for t in ternary_tensors(config)}
    for name, arr in raw.items():
        if name.endswith(ROTARY_BUFFER):
            continue  # older Llama checkpoints store RoPE's inverse frequencies: recomputed from the config
        prefix = name.rsplit(".", 1)[0]
        if prefix not in ternary_names:
            tensors[name] = arr
            continue
        if name.endswith(".weight_scale"):
            continue
        if not name.endswith(".weight"):
            tensors[name] = arr  # reported as unexpected by checkpoint_to_params
            continue
        if mode == "online":
            if arr.dtype == np.uint8:
                raise CheckpointError(
                    f"{path}: tensor {name} is packed uint8 but config.json says quantization_mode is online"
                )
            if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
                raise CheckpointError(f"{path}: tensor {name} must be a 2-D float latent weight in online mode, "
                                      f"got {arr.dtype} {tuple(arr.shape)}")
            if not np.all(np.isfinite(arr)):
                raise CheckpointError(f"{path}: tensor {name} holds non-finite values")
            tensors[name] = arr if latent else TernaryTensor.from_latent(arr)
            continue
        if arr.dtype != np.uint8 or arr.ndim != 2:
            raise CheckpointError(
                f"{path}: tensor {name} must be packed uint8 [out/4, in] in offline mode, "
                f"got {arr.dtype} {tuple(arr.shape)}"
            )
        scale_arr = raw.get(prefix + ".weight_scale")
        if scale_arr is None:
            raise CheckpointError(f"{path}: missing tensor {prefix}.weight_scale")
        if scale_arr.size != 1:
            raise CheckpointError(
                f"{path}: tensor {prefix}.weight_scale must hold one value, has shape {tuple(scale_arr.shape)}"
            )
        stored = float(np.asarray(scale_arr, dtype=np.float32).reshape(()))
        if not (np.isfinite(stored) and stored > 0):
            raise CheckpointError(f"{path}: tensor {prefix}.weight_scale is {stored!r} (must be finite and > 0)")
        scale = stored if linear_class == "autobitlinear" else 1.0 / stored
        tensors[name] = TernaryTensor(codes=arr, scale=scale)
    from bitnet_jax.io.tokenizer import tokenizer_from_hf_directory

    tokenizer = tokenizer_from_hf_directory(path, config)
    return Checkpoint(config=config, tensors=tensors, source=str(path), tokenizer=tokenizer)


def _generation_config(path: Path) -> dict[str, Any] | None:
    """``generation_config.json`` of a directory (None when there is none)."""
    f = path / GENERATION_FILE
    return load_hf_config_file(f) if f.is_file() else None


def write_hf_checkpoint(model, path: str | Path, latent: bool = False, overwrite: bool = False) -> Path:
    """Write a model as a transformers directory (autobitlinear), atomically.

    The directory holds ``config.json`` (``BitNetForCausalLM`` with sub-norms, under transformers' names
    whatever the source called them; ``LlamaForCausalLM`` + bitnet ``quantization_config`` without),
    ``model.safetensors`` and the tokenizer files when the model has one. Packed (``offline``, the
    default): ternary weights as uint8 ``rows4`` + multiplicative ``weight_scale`` (a training-form
    model is absmean-quantized first). ``latent=True`` (a training-form model only): the float32 latent
    weights under ``quantization_mode: online``, quantized by the reader.
    """
    from safetensors.numpy import save_file

    if latent and model.packed:
        raise CheckpointError("a latent HF export needs a training-form model (its latent weights); this one is packed")
    config = model.config.replace(sub_norm_names=BITNET_SUB_NORMS) if model.config.sub_norms else model.config
    tensors: dict[str, np.ndarray] = {}
    for name, value in params_to_tensors(config, model.params, model.packed, latent=latent).items():
        if isinstance(value, TernaryTensor):
            tensors[name] = np.ascontiguousarray(value.codes, dtype=np.uint8)
            tensors[name.removesuffix(".weight") + ".weight_scale"] = np.array([value.scale], np.float32)
        else:
            tensors[name] = np.ascontiguousarray(value, dtype=np.float32)
    hf_config = config_to_hf(config)
    hf_config["quantization_config"] = quantization_config_to_hf(config, online=latent)
    check_output(path, "hf", overwrite)  # before any work
    with atomic_output(path, directory=True, kind="hf", overwrite=overwrite) as tmp:
        try:
            save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        except SafetensorError as e:
            raise CheckpointError(f"{path}: cannot write {SINGLE_FILE} ({e})") from None
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        if model.tokenizer is not None:
            model.tokenizer.save(tmp)
    return Path(path)
