"""``save_pretrained`` and ``convert``: write a model as a transformers directory or a GGUF file (atomically)."""

from __future__ import annotations

from pathlib import Path

from bitnet_jax.errors import CheckpointError
from bitnet_jax.io._atomic import check_output
from bitnet_jax.io.checkpoint import params_to_tensors
from bitnet_jax.io.formats import FORMATS, QUANTS
from bitnet_jax.io.gguf_write import write_gguf
from bitnet_jax.io.hf import write_hf_checkpoint
from bitnet_jax.io.loading import model_from_checkpoint, read_checkpoint
from bitnet_jax.model import BitNetModel
from pallas_kernels import get_kernel


def save_pretrained(model: BitNetModel, path: str | Path, format: str = "hf", quant: str | None = None,
                    arch: str | None = None, i2_s_layout: str = "x86", latent: bool = False,
                    embed_type: str = "auto", overwrite: bool = False) -> Path:
    """Save ``model`` as a transformers directory (``format="hf"``) or a GGUF file (``format="gguf"``).

    ``quant`` (GGUF only): ``i2_s`` (default, bitnet.cpp), ``tq2_0``, ``tq1_0``, ``f16`` or ``f32``;
    ``arch`` overrides the GGUF architecture chosen for the family
    (:func:`bitnet_jax.io.gguf_write.choose_arch`); ``i2_s_layout`` is the bitnet.cpp build an I2_S file
    is for (``x86``, ``arm``, ``x86-1x4``); ``embed_type`` (GGUF only) stores the embedding as ``auto`` (its
    own dtype, lossless: the default), ``f32``, ``f16`` or ``bf16``. A training-form model is absmean-quantized first, or with
    ``latent=True`` (HF only) saved as its float latent weights (``quantization_mode: online``). Writes
    go to a temporary name, then are renamed. An existing ``path`` is replaced only when it is a model of
    that format and ``overwrite`` is set; anything else there is refused (never deleted).
    """
    if format not in FORMATS:
        raise CheckpointError(f"unknown format {format!r}; choose one of {FORMATS}")
    if model.form.head != "exact":
        raise CheckpointError(
            "this model has the int8 head (with_int8_head), an inference-time option no checkpoint format "
            "stores; save the model before converting its head"
        )
    if format == "hf":
        if quant not in (None, "i2_s", "packed") or arch is not None or embed_type != "auto":
            raise CheckpointError(f"quant={quant!r} / arch={arch!r} / embed_type={embed_type!r} apply to GGUF only (HF directories are always "
                                  "2-bit packed)")
        return write_hf_checkpoint(model, path, latent=latent, overwrite=overwrite)
    if latent:
        raise CheckpointError("latent=True applies to HF directories only (GGUF holds quantized weights)")
    if quant is not None and quant not in QUANTS:
        raise CheckpointError(f"unknown GGUF quant {quant!r}; choose one of {QUANTS}")
    tensors = params_to_tensors(model.config, model.params, model.packed)
    return write_gguf(model.config, tensors, model.tokenizer, path, quant or "i2_s", arch, i2_s_layout, embed_type,
                      overwrite)


def convert(src: str | Path, dst: str | Path, to: str | None = None, quant: str | None = None,
            arch: str | None = None, i2_s_layout: str = "x86", src_i2_s_layout: str = "x86",
            embed_type: str = "auto", overwrite: bool = False) -> Path:
    """Convert a checkpoint (a path or a hub id) between formats on the host (``to`` defaults from
    ``dst``'s suffix); ``overwrite`` replaces an existing model at ``dst``."""
    if to is None:
        to = "gguf" if str(dst).endswith(".gguf") else "hf"
    if to not in FORMATS:
        raise CheckpointError(f"unknown format {to!r}; choose one of {FORMATS}")
    check_output(dst, to, overwrite)  # before reading the source
    model = model_from_checkpoint(read_checkpoint(src, i2_s_layout=src_i2_s_layout), get_kernel("xla"), to_device=False)
    return save_pretrained(model, dst, to, quant, arch, i2_s_layout, embed_type=embed_type, overwrite=overwrite)
