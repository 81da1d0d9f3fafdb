"""The one check of ``generate`` / ``generate_stream`` arguments, run before anything is encoded or compiled.

Each failure is a :class:`~bitnet_jax.errors.GenerationError` (or :class:`SamplingError`) naming the
argument and what was expected: token ids are integers (not bools, floats or strings) inside the
vocabulary, ``seed`` fits 64 bits, ``temperature`` is finite, a string prompt is not empty.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bitnet_jax.errors import GenerationError, SamplingError

SEED_RANGE = (-(1 << 63), 1 << 63)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _token_ids(value: Any, what: str, vocab: int) -> None:
    """``value`` must be a sequence of integer token ids inside ``[0, vocab)``."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or not (np.issubdtype(value.dtype, np.integer) or value.size == 0):
            raise GenerationError(f"{what} must be a 1-D integer array of token ids, got {value.dtype} {value.shape}")
        items = value.tolist()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise GenerationError(f"{what} must be a list of token ids, got {type(value).__name__}")
    for t in items:
        if not _is_int(t):
            raise GenerationError(f"{what} holds {t!r:.40} ({type(t).__name__}); token ids must be integers")
        if not 0 <= int(t) < vocab:
            raise GenerationError(f"{what} holds token id {int(t)}, outside the vocabulary [0, {vocab})")


def check_generate_args(model: Any, prompts: Any, max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any,
                        seed: Any, stop_tokens: Any) -> None:
    """Raise a one-line :class:`GenerationError` for the first invalid ``generate`` argument."""
    vocab = model.config.vocab_size
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r:.40}")
    if max_new_tokens > model.config.max_position_embeddings:
        raise GenerationError(f"max_new_tokens={max_new_tokens} exceeds the context of "
                              f"{model.config.max_position_embeddings} tokens")
    if not _is_int(seed) or not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise GenerationError(f"seed must be an integer in [-2**63, 2**63), got {seed!r:.40}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(temperature)) or temperature < 0:
        raise SamplingError(f"temperature must be a finite number >= 0, got {temperature!r:.40}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not math.isfinite(top_p)):
        raise SamplingError(f"top_p must be a number in (0, 1] or None, got {top_p!r:.40}")
    if stop_tokens is not None:
        if isinstance(stop_tokens, (str, bytes)) or _is_int(stop_tokens):
            raise GenerationError(f"stop_tokens must be a list of token ids, got {stop_tokens!r:.40}")
        _token_ids(stop_tokens, "stop_tokens", vocab)
    single = isinstance(prompts, str) or (
        isinstance(prompts, (list, tuple, np.ndarray)) and len(prompts) > 0
        and not isinstance(prompts[0], (str, list, tuple, np.ndarray)))
    rows = [prompts] if single else prompts
    if not isinstance(rows, (list, tuple)) or not rows:
        raise GenerationError("prompts must be a non-empty list of strings or token-id lists")
    for i, p in enumerate(rows):
        if isinstance(p, str):
            if not p:
                raise GenerationError(f"prompt {i} is an empty string")
            continue
        _token_ids(p, f"prompt {i}", vocab)
        if len(p) == 0:
            raise GenerationError(f"prompt {i} is empty")
