"""``from_pretrained``: one entry point that detects a checkpoint's format and loads it packed."""

from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from bitnet_jax.checkpoint import Checkpoint, checkpoint_to_params
from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import CheckpointError
from bitnet_jax.model import stack_layers

GGUF_MAGIC = b"GGUF"


@dataclasses.dataclass(frozen=True)
class BitNetModel:
    """A loaded model: its config, its parameter pytree and (optionally) its tokenizer.

    ``packed=True`` means the ternary linears hold 2-bit codes and one scale (inference form);
    ``packed=False`` means latent float weights (training form).
    """

    config: ModelConfig
    params: Any
    tokenizer: Any = None
    packed: bool = True
    kernel_backend: str | None = None
    scan_layers: bool = False  # layer parameters stacked for one scanned layer body (see model.Transformer)


def detect_format(path: Path) -> str:
    """``"hf"`` for a transformers directory, ``"gguf"`` for a GGUF file; else a clear error."""
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf"
        raise CheckpointError(f"{path}: not a model directory (no config.json, and not exactly one .gguf file)")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        return "gguf"
    raise CheckpointError(f"{path}: unrecognised model file (not a GGUF file and not a transformers directory)")


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read any supported checkpoint format into a format-neutral :class:`Checkpoint`."""
    path = Path(path).expanduser()
    fmt = detect_format(path)
    if fmt == "hf":
        from bitnet_jax.hf import read_hf_checkpoint

        return read_hf_checkpoint(path)
    try:
        from bitnet_jax.gguf import read_gguf_checkpoint
    except ImportError:
        raise CheckpointError(f"{path}: GGUF files are not supported by this version of bitnet-jax") from None
    if path.is_dir():
        path = next(iter(sorted(path.glob("*.gguf"))))
    return read_gguf_checkpoint(path)


def release_host_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps a loader's freed temporaries mapped otherwise)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: glibc when it is there
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _to_device(tree: dict) -> None:
    """Replace every NumPy leaf of ``tree`` by a device array in place, one leaf at a time.

    Dropping each host copy as soon as its device copy exists keeps the loader's peak memory at the
    checkpoint plus one tensor, instead of the checkpoint plus a whole host tree plus a whole device tree.
    Each copy is waited for: the transfer holds its host array until it completes, so without the
    wait the host copies would be released some time after loading returns.
    """
    for key, value in tree.items():
        if isinstance(value, dict):
            _to_device(value)
        else:
            tree[key] = jnp.asarray(value).block_until_ready()
            del value


def model_from_checkpoint(
    ckpt: Checkpoint, kernel_backend: str | None = None, scan_layers: bool = False
) -> BitNetModel:
    """Turn a :class:`Checkpoint` into a packed :class:`BitNetModel` on the default device.

    The embedding (and an untied head) are stored in the activation dtype: for a bfloat16 model that
    halves the largest float tensor, and the head multiplies in that dtype anyway. ``scan_layers``
    stacks the layers' parameters for a model that compiles one layer body (:func:`stack_layers`).
    """
    params = checkpoint_to_params(ckpt, kernel_backend)
    if scan_layers:
        params = stack_layers(params, ckpt.config.num_hidden_layers)
    table_dtype = jnp.dtype(ckpt.config.dtype)
    for name in ("embed_tokens", "lm_head"):
        if name in params:
            params[name] = jnp.asarray(params[name].astype(table_dtype, copy=False)).block_until_ready()
    _to_device(params)
    return BitNetModel(ckpt.config, params, ckpt.tokenizer, packed=True, kernel_backend=kernel_backend,
                       scan_layers=scan_layers)


def _read_with_dtype(path: str | Path, dtype: str | None) -> Checkpoint:
    ckpt = read_checkpoint(path)
    if dtype is not None:
        ckpt = dataclasses.replace(ckpt, config=ckpt.config.replace(dtype=dtype))
    return ckpt


def from_pretrained(
    path: str | Path, *, dtype: str | None = None, kernel_backend: str | None = None, scan_layers: bool = False
) -> BitNetModel:
    """Load a BitNet b1.58 model (transformers directory or GGUF file), ternary weights kept packed.

    ``dtype`` overrides the activation dtype (``"float32"`` or ``"bfloat16"``). ``scan_layers=True``
    compiles one layer body instead of one per layer (same outputs, much less compiled code; not for
    :func:`bitnet_jax.shard`). The checkpoint's host
    copies are freed (and the freed heap returned to the OS) before this returns, so the process keeps
    only the packed parameters.

    >>> model = from_pretrained("path/to/bitnet-dir")          # doctest: +SKIP
    >>> model.config.hidden_size                                # doctest: +SKIP
    2560
    """
    # no local name holds the checkpoint: it is freed as soon as the conversion returns
    model = model_from_checkpoint(_read_with_dtype(path, dtype), kernel_backend, scan_layers)
    release_host_memory()
    return model
