"""``bitnet-jax perplexity --model PATH FILE``: token-level perplexity of a model on a text file.

``--head int8`` scores with the head table quantized to int8 per row (:mod:`bitnet_jax.head`), to
measure what the quantized head costs.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from bitnet_jax.errors import BitNetError


def perplexity(model, ids: list[int], seq_len: int, batch_size: int = 8) -> tuple[float, int]:
    """(mean next-token nll, tokens scored) over non-overlapping ``seq_len + 1``-token windows of ``ids``."""
    import jax
    import jax.numpy as jnp

    from bitnet_jax.generate import forward

    if len(ids) < 2:
        raise BitNetError("the text is too short to score (fewer than 2 tokens)")
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


def _cmd_perplexity(args: argparse.Namespace) -> int:
    from bitnet_jax.cli import _load

    model = _load(args.model, args.dtype)
    if args.head == "int8":
        from bitnet_jax.head import with_int8_head

        model = with_int8_head(model)
    if model.tokenizer is None:
        raise BitNetError(f"{args.model or 'default model'}: the model has no tokenizer.json; cannot tokenize {args.file}")
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise BitNetError(f"{path}: cannot read ({e})") from None
    ids = model.tokenizer.encode(text, add_bos=model.config.bos_token_id is not None)
    seq_len = args.seq_len or model.config.max_position_embeddings
    if seq_len > model.config.max_position_embeddings:
        raise BitNetError(f"--seq-len {seq_len} exceeds the model context ({model.config.max_position_embeddings})")
    nll, count = perplexity(model, ids, seq_len, args.batch_size)
    print(f"tokens: {count}  nll: {nll:.4f}  perplexity: {math.exp(nll):.3f}")
    return 0


def add_parser(sub) -> None:
    """Register the ``perplexity`` sub-command."""
    p = sub.add_parser("perplexity", help="perplexity of a model on a text file")
    p.add_argument("file", help="text file to score")
    p.add_argument("--model", default=None, help="model directory or GGUF file (default: the bundled model)")
    p.add_argument("--seq-len", type=int, default=None, help="window length (default: the model context)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--head", choices=("exact", "int8"), default="exact",
                   help="output head: exact float table (default) or int8 with per-row scales")
    p.set_defaults(func=_cmd_perplexity)
