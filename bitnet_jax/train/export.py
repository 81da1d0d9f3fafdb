"""Export a trained run to the inference format: a transformers-style packed (offline) BitNet directory.

Each latent ``BitLinear`` weight is absmean-quantized (:func:`bitnet_jax.quant.quantize_weights`), its
ternary values packed with :func:`bitnet_jax.quant.pack_ternary` (``uint8 [out/4, in]``) and stored with
``weight_scale = 1 / s_w``; ``config.json`` carries ``quantization_config = {quant_method: bitnet,
linear_class: autobitlinear, quantization_mode: offline}`` so the scale multiplies the layer output.
Norms and the embedding stay float32. The directory (``config.json``, ``model.safetensors``,
``tokenizer.json``) is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from bitnet_jax.checkpoint import float_tensors, hf_name_to_param_path, ternary_linears
from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import CheckpointError
from bitnet_jax.quant import pack_ternary, quantize_weights
from bitnet_jax.train.checkpoint import RunCheckpointer

QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}


def _get(params: Any, path: tuple[str, ...], name: str) -> np.ndarray:
    node = params
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise CheckpointError(f"trained parameters lack {'/'.join(path)} (for {name})")
        node = node[key]
    return np.asarray(node, dtype=np.float32)


def latent_to_hf_tensors(params: Any, config: ModelConfig) -> dict[str, np.ndarray]:
    """HF-named tensors of the packed model: ternary codes + ``weight_scale`` per linear, float others."""
    out: dict[str, np.ndarray] = {}
    for prefix, shape in ternary_linears(config):
        w = _get(params, hf_name_to_param_path(prefix + ".weight"), prefix)
        if w.shape != shape:
            raise CheckpointError(f"trained {prefix}.weight has shape {w.shape}, expected {shape}")
        wq, s_w = quantize_weights(jnp.asarray(w))
        out[prefix + ".weight"] = np.asarray(pack_ternary(wq), dtype=np.uint8)
        out[prefix + ".weight_scale"] = np.asarray([1.0 / float(s_w)], dtype=np.float32)
    for name, shape in float_tensors(config):
        t = _get(params, hf_name_to_param_path(name), name)
        if t.shape != shape:
            raise CheckpointError(f"trained {name} has shape {t.shape}, expected {shape}")
        out[name] = np.ascontiguousarray(t)
    return out


def write_hf_directory(out_dir: str | Path, params: Any, config: ModelConfig, tokenizer_json: str | None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``) atomically to ``out_dir``."""
    out_dir = Path(out_dir).expanduser().absolute()
    tensors = latent_to_hf_tensors(params, config)
    hf = {**config.to_hf_config(), "quantization_config": dict(QUANTIZATION_CONFIG)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer_json is not None:
            (tmp / "tokenizer.json").write_text(tokenizer_json)
        for f in tmp.iterdir():
            f.chmod(0o644)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Export checkpoint ``step`` (default: the latest) of a training run as a packed HF directory."""
    run_dir = Path(run_dir).expanduser()
    ckpt = RunCheckpointer(run_dir, keep=1_000_000)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None or step not in ckpt.all_steps():
            raise CheckpointError(f"{run_dir}: no checkpoint{'' if step is None else f' at step {step}'} to export")
        meta = ckpt.restore_meta(step)
        if not meta["config"]["training"]["quantize"]:
            raise CheckpointError(
                f"{run_dir}: trained with training.quantize=false; a full-precision run has no ternary export"
            )
        config = ModelConfig.from_dict(meta["model_config"], source=f"{run_dir} checkpoint {step}")
        params = ckpt.restore_params(step)
    finally:
        ckpt.close()
    tok_path = run_dir / "tokenizer.json"
    tokenizer_json = tok_path.read_text() if tok_path.is_file() else None
    return write_hf_directory(out_dir, params, config, tokenizer_json)
