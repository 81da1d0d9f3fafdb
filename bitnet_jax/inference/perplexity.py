"""Token-level perplexity of a model over a token sequence (non-overlapping windows, batched)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax.errors import GenerationError
from bitnet_jax.inference.generate import forward
from bitnet_jax.model import BitNetModel


def perplexity(model: BitNetModel, ids: list[int], seq_len: int, batch_size: int = 8) -> tuple[float, int]:
    """(mean next-token nll, tokens scored) over non-overlapping ``seq_len + 1``-token windows of ``ids``."""
    if not isinstance(seq_len, int) or seq_len < 1:
        raise GenerationError(f"seq_len must be a positive integer, got {seq_len!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GenerationError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(ids) < 2:
        raise GenerationError("the text is too short to score (fewer than 2 tokens)")
    arr = np.asarray(ids, dtype=np.int32)
    n_full = (len(arr) - 1) // seq_len
    groups = [np.stack([arr[i * seq_len : (i + 1) * seq_len + 1] for i in range(b, min(b + batch_size, n_full))])
              for b in range(0, n_full, batch_size)]
    if n_full * seq_len < len(arr) - 1:
        groups.append(arr[None, n_full * seq_len :])  # the shorter tail window
    total, count = 0.0, 0
    for windows in groups:
        logp = jax.nn.log_softmax(forward(model, windows[:, :-1]), axis=-1)
        nll = -jnp.take_along_axis(logp, jnp.asarray(windows[:, 1:, None]), axis=-1)
        total += float(jnp.sum(nll))
        count += int(nll.size)
    return total / count, count
