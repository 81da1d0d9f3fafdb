"""Model I/O: checkpoints (transformers directories, GGUF incl. I2_S / TQ1_0 / TQ2_0), the one tensor
name map (:mod:`~bitnet_jax.io.names`), tokenizers, :func:`from_pretrained` and :func:`save_pretrained`.

Names are loaded on first use, so light modules (``bitnet_jax.io.formats``) import without the readers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Checkpoint": "bitnet_jax.io.checkpoint",
    "TernaryTensor": "bitnet_jax.io.checkpoint",
    "random_checkpoint": "bitnet_jax.io.checkpoint",
    "convert": "bitnet_jax.io.export",
    "save_pretrained": "bitnet_jax.io.export",
    "from_pretrained": "bitnet_jax.io.loading",
    "model_from_checkpoint": "bitnet_jax.io.loading",
    "read_checkpoint": "bitnet_jax.io.loading",
    "Tokenizer": "bitnet_jax.io.tokenizer",
    "load_tokenizer": "bitnet_jax.io.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bitnet_jax.io' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
