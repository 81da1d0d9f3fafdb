"""Export a trained run to the inference formats, and score each export on the run's validation split.

Formats (``export.formats`` of a run config, ``bitnet-jax export-run --format``):

* ``hf`` -- a transformers-style packed (offline) BitNet directory: each ternary linear weight
  absmean-quantized, packed at 2 bits (``uint8 [out/4, in]``) with ``weight_scale = 1 / s_w`` under
  ``quantization_config = {quant_method: bitnet, linear_class: autobitlinear, quantization_mode:
  offline}``; norms and the embedding float32;
* ``hf-latent`` -- the float32 latent weights under ``quantization_mode: online`` (what the 2B4T
  ``-bf16`` repository holds: transformers, bitnet-jax and a later fine-tune quantize it themselves);
* ``gguf-i2_s`` / ``gguf-tq2_0`` / ``gguf-tq1_0`` -- a GGUF file with that ternary encoding.

Everything goes through :func:`bitnet_jax.save_pretrained` and is written atomically. After training,
each export is loaded back with :func:`bitnet_jax.from_pretrained` and its validation loss (per trained
target, as in training) is recorded next to the training form's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from bitnet_jax.config import ModelConfig, TrainConfig
from bitnet_jax.config.run import EXPORT_FORMATS
from bitnet_jax.errors import CheckpointError, ConfigError
from bitnet_jax.io._codecs import I2S_BLOCK, QK_K
from bitnet_jax.io._atomic import check_output
from bitnet_jax.io.export import save_pretrained
from bitnet_jax.io.names import ternary_tensors
from bitnet_jax.io.tokenizer import Tokenizer
from bitnet_jax.model import BitNetModel, Form, Transformer
from bitnet_jax.train.checkpoint import RunCheckpointer
from bitnet_jax.train.loop import sync_processes

EXPORT_NAMES = {"hf": "hf", "hf-latent": "hf-latent", "gguf-i2_s": "model-i2_s.gguf",
                "gguf-tq2_0": "model-tq2_0.gguf", "gguf-tq1_0": "model-tq1_0.gguf"}


def check_exports(model_cfg: ModelConfig, formats: tuple[str, ...]) -> None:
    """Refuse (before any training) an export format the model's shapes cannot be written in: TQ1_0 and
    TQ2_0 pack rows in 256-weight blocks, I2_S the whole tensor in 128-weight blocks."""
    for fmt in formats:
        block, per_row = {"gguf-tq2_0": (QK_K, True), "gguf-tq1_0": (QK_K, True), "gguf-i2_s": (I2S_BLOCK, False)
                          }.get(fmt, (None, False))
        if block is None:
            continue
        for t in ternary_tensors(model_cfg):
            n = t.shape[1] if per_row else t.shape[0] * t.shape[1]
            if n % block:
                what = f"rows of {n} weights" if per_row else f"{n} weights"
                raise ConfigError(f"export.formats: {fmt} cannot hold {t.hf} ({what} do not fill "
                                  f"{block}-weight blocks); drop it for this model")


def write_export(latent: BitNetModel, out: Path, fmt: str, overwrite: bool = False) -> Path:
    """Write a training-form model in one export format (an existing model at ``out`` only with ``overwrite``)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format {fmt!r}: choose one of {EXPORT_FORMATS}")
    if fmt.startswith("gguf-"):
        return save_pretrained(latent, out, format="gguf", quant=fmt.removeprefix("gguf-"), overwrite=overwrite)
    return save_pretrained(latent, out, format="hf", latent=fmt == "hf-latent", overwrite=overwrite)


def restore_latent_model(run_dir: Path, step: int | None = None) -> BitNetModel:
    """Checkpoint ``step`` (default: the latest) of a run as a training-form model with its tokenizer."""
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
    tokenizer = Tokenizer.from_file(tok_path, config) if tok_path.is_file() else None
    return BitNetModel(config, params, tokenizer, form=Form())  # training form: save_pretrained quantizes it


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None, format: str = "hf",
               overwrite: bool = False) -> Path:
    """Export checkpoint ``step`` (default: the latest) of a training run in ``format`` (default: packed HF);
    an existing model at ``out_dir`` is replaced only with ``overwrite`` (anything else there is refused)."""
    run_dir = Path(run_dir).expanduser()
    out = Path(out_dir).expanduser().absolute()
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"export format {format!r}: choose one of {EXPORT_FORMATS}")
    check_output(out, "gguf" if format.startswith("gguf-") else "hf", overwrite)  # before restoring
    latent = restore_latent_model(run_dir, step)
    if jax.process_index() == 0:  # in a multi-process run every process restores, one writes
        write_export(latent, out, format, overwrite)
    sync_processes("bitnet_jax.train: exported")
    return out


def exported_val_loss(path: Path, dataset, micro_batch: int, batches: int) -> float | None:
    """Validation nll per trained target of an exported model, loaded back packed by ``from_pretrained``."""
    from bitnet_jax.io.loading import from_pretrained
    from bitnet_jax.train.step import batch_nll

    model = from_pretrained(path)
    module = Transformer(model.config, model.form)
    score = jax.jit(lambda p, b: batch_nll(module, p, b))
    total, count = 0.0, 0.0
    for b in dataset.val_batches(micro_batch, batches):
        s, c = jax.device_get(score(model.params, b))
        total, count = total + float(s), count + float(c)
    return total / count if count else None


def export_trained(model_cfg: ModelConfig, params: Any, dataset, cfg: TrainConfig, mesh) -> dict[str, Any]:
    """Write the trained parameters in every ``export.formats`` under ``export.dir``; each export's path
    and validation loss."""
    out_dir = Path(cfg.export.dir).expanduser().absolute()
    host = jax.tree_util.tree_map(np.asarray, jax.device_get(params)) if jax.process_count() == 1 else params
    latent = BitNetModel(model_cfg, host, dataset.tokenizer, form=Form())
    micro = cfg.training.batch_size // cfg.training.grad_accum
    results: dict[str, Any] = {}
    for fmt in cfg.export.formats:
        path = out_dir / EXPORT_NAMES[fmt]
        if jax.process_index() == 0:  # the run's own export directory: its earlier exports are replaced
            write_export(latent, path, fmt, overwrite=True)
        sync_processes(f"bitnet_jax.train: exported {fmt}")
        results[fmt] = {"path": str(path)}
        if jax.process_count() == 1:
            results[fmt]["val_loss"] = exported_val_loss(path, dataset, micro, cfg.logging.eval_batches)
    return results
