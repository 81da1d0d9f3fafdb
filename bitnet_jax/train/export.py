"""Export a trained run to the inference format: a transformers-style packed (offline) BitNet directory.

The latent weights go through :func:`bitnet_jax.save_pretrained`: each ternary linear weight is
absmean-quantized, packed at 2 bits (``uint8 [out/4, in]``) and stored with ``weight_scale = 1 / s_w``
under ``quantization_config = {quant_method: bitnet, linear_class: autobitlinear, quantization_mode:
offline}``; norms and the embedding stay float32; the directory is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import jax

from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import CheckpointError
from bitnet_jax.io.export import save_pretrained
from bitnet_jax.io.tokenizer import Tokenizer
from bitnet_jax.model import BitNetModel, Form
from bitnet_jax.train.checkpoint import RunCheckpointer
from bitnet_jax.train.loop import sync_processes


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
    tokenizer = Tokenizer.from_file(tok_path, config) if tok_path.is_file() else None
    latent = BitNetModel(config, params, tokenizer, form=Form())  # training form: save_pretrained quantizes it
    out = Path(out_dir).expanduser().absolute()
    if jax.process_index() == 0:  # in a multi-process run every process restores, one writes
        save_pretrained(latent, out, format="hf")
    sync_processes("bitnet_jax.train: exported")
    return out
