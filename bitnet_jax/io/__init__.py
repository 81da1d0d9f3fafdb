"""Model I/O: checkpoints (transformers directories, GGUF incl. I2_S / TQ1_0 / TQ2_0), the one tensor
name map (:mod:`~bitnet_jax.io.names`), tokenizers, :func:`from_pretrained` and :func:`save_pretrained`.

Names are loaded on first use, so light modules (``bitnet_jax.io.formats``) import without the readers.
"""

from __future__ import annotations

from bitnet_jax._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
