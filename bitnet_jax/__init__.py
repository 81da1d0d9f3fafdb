"""bitnet-jax: BitNet b1.58 ternary LLMs in JAX -- models, checkpoints, generation, kernels, training.

The public API, re-exported here (loaded on first use, so ``import bitnet_jax`` is cheap)::

    import bitnet_jax as bj
    model = bj.from_pretrained(bj.DEFAULT_MODEL)
    print(model.tokenizer.decode(bj.generate(model, ["def f(x):"], max_new_tokens=16)[0]))

Concerns live in one package each: :mod:`bitnet_jax.config`, :mod:`bitnet_jax.model`,
:mod:`bitnet_jax.inference`, :mod:`bitnet_jax.io`, :mod:`bitnet_jax.parallel`, :mod:`bitnet_jax.train`,
:mod:`bitnet_jax.cli`; the kernels are the sibling package :mod:`pallas_kernels`.
"""

from __future__ import annotations

from bitnet_jax._lazy import lazy_exports
from pathlib import Path

__version__ = "0.1.0"

DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model"
"""The bundled default model: a 2.4M-parameter BitNet b1.58 trained by this package on the Python stdlib."""

_EXPORTS = {
    "BitNetError": "bitnet_jax.errors",
    "CheckpointError": "bitnet_jax.errors",
    "ConfigError": "bitnet_jax.errors",
    "GenerationError": "bitnet_jax.errors",
    "ModelConfig": "bitnet_jax.config",
    "MeshConfig": "bitnet_jax.config",
    "BitNetModel": "bitnet_jax.model",
    "Form": "bitnet_jax.model",
    "with_head_screen": "bitnet_jax.model",
    "with_int8_head": "bitnet_jax.model",
    "forward": "bitnet_jax.inference",
    "generate": "bitnet_jax.inference",
    "generate_stream": "bitnet_jax.inference",
    "format_chat": "bitnet_jax.inference",
    "encode_chat": "bitnet_jax.inference",
    "perplexity": "bitnet_jax.inference",
    "from_pretrained": "bitnet_jax.io",
    "save_pretrained": "bitnet_jax.io",
    "convert": "bitnet_jax.io",
    "read_checkpoint": "bitnet_jax.io",
    "load_tokenizer": "bitnet_jax.io",
    "make_mesh": "bitnet_jax.parallel",
    "shard": "bitnet_jax.parallel",
    "select_kernel": "pallas_kernels",
}

__all__ = sorted([*_EXPORTS, "DEFAULT_MODEL", "__version__"])


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
