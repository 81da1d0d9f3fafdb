"""``bitnet-jax perplexity FILE [--model PATH]``: token-level perplexity of a model on a text file.

``--head int8`` scores with the head table quantized to int8 per row (:mod:`bitnet_jax.model.head`), to
measure what the quantized head costs.
"""

from __future__ import annotations

import argparse
import math

from bitnet_jax.cli._common import checked_number, add_model_arguments, load_model, model_name, positive_int, read_prompt_file
from bitnet_jax.errors import BitNetError


def run(args: argparse.Namespace) -> int:
    """Score ``args.file`` and print tokens, mean nll and perplexity."""
    text = read_prompt_file(args.file)
    model = load_model(args)
    from bitnet_jax.inference import perplexity
    from bitnet_jax.model import with_int8_head

    if args.head == "int8":
        model = with_int8_head(model)
    if model.tokenizer is None:
        raise BitNetError(f"{model_name(args)}: the model has no tokenizer.json; cannot tokenize {args.file}")
    ids = model.tokenizer.encode(text, add_bos=model.config.bos_token_id is not None)
    if len(ids) < 2:
        raise BitNetError(f"{args.file}: {len(ids)} token(s); perplexity needs at least 2")
    seq_len = args.seq_len if args.seq_len is not None else model.config.max_position_embeddings
    if seq_len > model.config.max_position_embeddings:
        raise BitNetError(f"--seq-len {seq_len} exceeds the model context ({model.config.max_position_embeddings})")
    nll, count = perplexity(model, ids, seq_len, args.batch_size)
    print(f"tokens: {count}  nll: {nll:.4f}  perplexity: {math.exp(nll):.3f}")
    return 0


def add_parser(sub) -> None:
    """Register the ``perplexity`` sub-command."""
    p = sub.add_parser("perplexity", help="perplexity of a model on a text file")
    p.add_argument("file", help="UTF-8 text file to score (- for standard input)")
    add_model_arguments(p)
    p.add_argument("--seq-len", type=checked_number(int, "an integer >= 2", lambda v: v >= 2), default=None,
                   help="window length (default: the model context)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows scored at once (default 8)")
    p.add_argument("--head", choices=("exact", "int8"), default="exact",
                   help="output head: exact float table (default) or int8 with per-row scales")
    p.set_defaults(func=run)
