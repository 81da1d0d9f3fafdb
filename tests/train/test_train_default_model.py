"""The bundled default model: loads offline, is a trained (not random) model, and `generate` uses it."""

from __future__ import annotations

import math

import numpy as np

import bitnet_jax
from bitnet_jax import DEFAULT_MODEL
from bitnet_jax.cli import main
from bitnet_jax.inference import perplexity

SNIPPET = '''import os


def read_lines(path):
    """Return the lines of a file."""
    with open(path) as f:
        return [line.rstrip("\\n") for line in f]


class Counter:
    def __init__(self):
        self.count = 0

    def increment(self, n=1):
        self.count += n
        return self.count
'''


def test_default_model_is_small_and_trained():
    model = bitnet_jax.from_pretrained(DEFAULT_MODEL)
    cfg = model.config
    assert model.tokenizer is not None and cfg.vocab_size == model.tokenizer.vocab_size
    assert sum((DEFAULT_MODEL / f).stat().st_size for f in ("model.safetensors", "tokenizer.json")) < 8e6
    ids = model.tokenizer.encode(SNIPPET, add_bos=True)
    nll, count = perplexity(model, ids, seq_len=min(128, cfg.max_position_embeddings))
    # a random model scores about log(vocab) = 8.3 nats; the trained one knows Python
    assert count == len(ids) - 1
    assert math.exp(nll) < 60, math.exp(nll)


def test_generate_defaults_to_bundled_model(capsys):
    assert main(["generate", "def fibonacci(n):", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def fibonacci(n):") and len(out.strip()) > len("def fibonacci(n):")
    ternary = np.asarray(bitnet_jax.read_checkpoint(DEFAULT_MODEL).tensors["model.layers.0.self_attn.q_proj.weight"].codes)
    assert ternary.dtype == np.uint8
