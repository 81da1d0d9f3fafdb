"""transformers-style BitNet directories: ``config.json`` + safetensors (single or sharded), read and written.

Two weight forms are understood:

* **packed (offline)**: ``quantization_config = {"quant_method": "bitnet", "quantization_mode":
  "offline", ...}``; each ternary linear stores ``weight`` as ``uint8 [out/4, in]`` (``rows4``) and
  ``weight_scale``. With ``linear_class: "autobitlinear"`` the scale multiplies the layer output; with
  ``"bitlinear"`` (transformers' default) it divides it. Codes stay packed.
* **latent float**: ``quantization_mode: "online"`` or no quantization config; float weights are
  quantized at load with absmean (exactly as transformers' online ``WeightQuant`` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open

from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import CheckpointError, ConfigError
from bitnet_jax.io._atomic import atomic_output
from bitnet_jax.io.checkpoint import Checkpoint, TernaryTensor, params_to_tensors
from bitnet_jax.io.names import ternary_tensors

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


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


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Map a transformers ``BitNetConfig`` dict (``config.json``) onto a :class:`ModelConfig`."""
    model_type = hf.get("model_type")
    if model_type != "bitnet":
        raise ConfigError(f"{source}: unsupported model_type {model_type!r} (expected 'bitnet')")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, Mapping):
        raise ConfigError(f"{source}: rope_parameters must be an object, got {type(rope).__name__}")
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
        rope_theta=theta,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )
    return ModelConfig.from_dict(fields, source=source, prefix="")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """The transformers ``BitNetConfig`` dict for ``config`` (without quantization_config)."""
    return {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
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


def _quantization_settings(hf: dict[str, Any], source: str) -> tuple[str, str]:
    """(mode, linear_class) from ``quantization_config``; mode is ``online`` when there is none."""
    qc = hf.get("quantization_config")
    if qc is None:
        return "online", "autobitlinear"
    if not isinstance(qc, dict):
        raise ConfigError(f"{source}: quantization_config must be an object")
    method = qc.get("quant_method", "bitnet")
    if method != "bitnet":
        raise ConfigError(f"{source}: unsupported quantization_config.quant_method {method!r} (expected 'bitnet')")
    mode = qc.get("quantization_mode", "offline")
    linear_class = qc.get("linear_class", "bitlinear")
    if mode not in ("online", "offline"):
        raise ConfigError(f"{source}: unknown quantization_config.quantization_mode {mode!r}")
    if linear_class not in ("bitlinear", "autobitlinear"):
        raise ConfigError(f"{source}: unknown quantization_config.linear_class {linear_class!r}")
    if qc.get("use_rms_norm"):
        raise ConfigError(f"{source}: quantization_config.use_rms_norm=true is not supported")
    skipped = [m for m in qc.get("modules_to_not_convert") or [] if m not in ("lm_head", "model.embed_tokens")]
    if skipped:
        raise ConfigError(f"{source}: quantization_config.modules_to_not_convert {skipped} is not supported")
    return mode, linear_class


def _weight_files(path: Path) -> dict[str, Path]:
    """Map each tensor name to the safetensors file holding it."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: invalid safetensors index ({e})") from None
        files = {}
        for name, fname in weight_map.items():
            f = (path / fname).resolve()
            if path.resolve() not in f.parents:
                raise CheckpointError(f"{index}: shard {fname!r} for {name} lies outside the model directory")
            if not f.is_file():
                raise CheckpointError(f"{index}: shard {fname} (for {name}) does not exist")
            files[name] = f
        return files
    single = path / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE} found")
    try:
        with safe_open(single, framework="numpy") as f:
            return {name: single for name in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{single}: cannot read safetensors header ({e})") from None


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
                    out[name] = sf.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{f}: cannot read tensors ({e})") from None
    return out


def read_hf_checkpoint(path: str | Path) -> Checkpoint:
    """Read a transformers BitNet directory into a format-neutral :class:`Checkpoint`."""
    path = Path(path)
    cfg_file = path / "config.json"
    hf = load_hf_config_file(cfg_file)
    config = config_from_hf(hf, source=str(cfg_file))
    mode, linear_class = _quantization_settings(hf, str(cfg_file))
    raw = _read_tensors(_weight_files(path))
    tensors: dict[str, Any] = {}
    ternary_names = {t.hf.removesuffix(".weight") for t in ternary_tensors(config)}
    for name, arr in raw.items():
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
            tensors[name] = TernaryTensor.from_latent(arr)
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
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from bitnet_jax.io.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_file(path / "tokenizer.json", config)
    return Checkpoint(config=config, tensors=tensors, source=str(path), tokenizer=tokenizer)


def write_hf_checkpoint(model, path: str | Path) -> Path:
    """Write a model as a transformers directory (autobitlinear, offline), atomically.

    The directory holds ``config.json``, ``model.safetensors`` (ternary weights as uint8 ``rows4`` +
    multiplicative ``weight_scale``; a training-form model is absmean-quantized first) and
    ``tokenizer.json`` when the model has a tokenizer.
    """
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for name, value in params_to_tensors(model.config, model.params, model.packed).items():
        if isinstance(value, TernaryTensor):
            tensors[name] = np.ascontiguousarray(value.codes, dtype=np.uint8)
            tensors[name.removesuffix(".weight") + ".weight_scale"] = np.array([value.scale], np.float32)
        else:
            tensors[name] = np.ascontiguousarray(value, dtype=np.float32)
    hf_config = config_to_hf(model.config)
    hf_config["quantization_config"] = {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "offline",
    }
    with atomic_output(path, directory=True) as tmp:
        save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        if model.tokenizer is not None:
            model.tokenizer.backend.save(str(tmp / "tokenizer.json"))
    return Path(path)
