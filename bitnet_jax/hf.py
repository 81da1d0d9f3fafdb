"""Reading transformers-style BitNet directories: ``config.json`` + safetensors (single or sharded).

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
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from bitnet_jax.checkpoint import Checkpoint, TernaryTensor, ternary_linears
from bitnet_jax.config import ModelConfig, load_hf_config_file
from bitnet_jax.errors import CheckpointError, ConfigError
from bitnet_jax.quant import quantize_weights
import pallas_kernels
from pallas_kernels.layout import pack_rows4

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def is_hf_directory(path: Path) -> bool:
    """True when ``path`` is a directory holding a ``config.json``."""
    return path.is_dir() and (path / "config.json").is_file()


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


def _quantize_latent(weight: np.ndarray) -> tuple[np.ndarray, float]:
    """Absmean-quantize a latent float weight (float32, like transformers' online WeightQuant)."""
    wq, s_w = quantize_weights(np.asarray(weight, dtype=np.float32))
    return pack_rows4(np.asarray(wq)), float(1.0 / s_w)


def read_hf_checkpoint(path: str | Path) -> Checkpoint:
    """Read a transformers BitNet directory into a format-neutral :class:`Checkpoint`."""
    path = Path(path)
    cfg_file = path / "config.json"
    hf = load_hf_config_file(cfg_file)
    config = ModelConfig.from_hf_config(hf, source=str(cfg_file))
    mode, linear_class = _quantization_settings(hf, str(cfg_file))
    raw = _read_tensors(_weight_files(path))
    tensors: dict[str, Any] = {}
    ternary_names = {prefix for prefix, _ in ternary_linears(config)}
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
            codes, scale = _quantize_latent(arr)
        else:
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
            codes = arr
        tensors[name] = TernaryTensor(codes=codes, scale=scale)
    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from bitnet_jax.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_file(path / "tokenizer.json", config)
    return Checkpoint(config=config, tensors=tensors, source=str(path), tokenizer=tokenizer)


def _param_leaves(tree: dict, prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _param_leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def param_path_to_hf_name(path: tuple[str, ...]) -> str:
    """Inverse of :func:`bitnet_jax.checkpoint.hf_name_to_param_path` (``weight_packed`` -> ``weight``)."""
    if path == ("embed_tokens",):
        return "model.embed_tokens.weight"
    if path == ("lm_head",):
        return "lm_head.weight"
    parts = list(path)
    if parts[-1] == "weight_packed":
        parts[-1] = "weight"
    if parts[0].startswith("layers_"):
        parts = ["layers", parts[0].removeprefix("layers_"), *parts[1:]]
    return "model." + ".".join(parts)


def write_hf_checkpoint(model, path: str | Path) -> Path:
    """Write a packed model as a transformers directory (autobitlinear, offline); atomic replace.

    The directory holds ``config.json``, ``model.safetensors`` (ternary weights as uint8 ``rows4`` +
    multiplicative ``weight_scale``) and ``tokenizer.json`` when the model has a tokenizer.
    """
    import os
    import shutil
    import tempfile

    import jax
    from safetensors.numpy import save_file

    if not model.packed:
        raise CheckpointError("write_hf_checkpoint expects a packed model (quantize a trained model first)")
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    shapes = {prefix + ".weight": shape for prefix, shape in ternary_linears(model.config)}
    for leaf_path, value in _param_leaves(jax.device_get(model.params)):
        name = param_path_to_hf_name(leaf_path)
        arr = np.asarray(value)
        if leaf_path[-1] == "weight_packed":  # the kernel's layout -> ternary -> the HF rows4 layout
            ternary = pallas_kernels.unpack(arr, shapes[name][1], model.kernel_backend)
            arr = np.ascontiguousarray(pack_rows4(ternary), dtype=np.uint8)
        elif leaf_path[-1] == "weight_scale":
            arr = arr.reshape(1).astype(np.float32)
        else:
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        tensors[name] = arr
    hf_config = model.config.to_hf_config()
    hf_config["quantization_config"] = {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "offline",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        if model.tokenizer is not None:
            model.tokenizer.backend.save(str(tmp / "tokenizer.json"))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
