"""``bitnet-jax generate PROMPT``: stream a continuation of a prompt."""

from __future__ import annotations

import argparse
import sys

from bitnet_jax.cli._common import add_model_arguments, load_model, model_name
from bitnet_jax.errors import BitNetError


def run(args: argparse.Namespace) -> int:
    """Generate from ``args.prompt`` and write the text (or ids) to stdout as it is produced."""
    from bitnet_jax.inference import IncrementalDecoder, generate_stream

    model = load_model(args)
    if model.tokenizer is None:
        try:
            prompt = [int(t) for t in args.prompt.split()]
        except ValueError:
            raise BitNetError(
                f"{model_name(args)}: the model has no tokenizer, so PROMPT must be space-separated token ids"
            ) from None
    else:
        prompt = args.prompt
    stream = generate_stream(
        model,
        [prompt],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    if model.tokenizer is None:
        ids = [step[0] for step in stream if step[0] is not None]
        print(" ".join(str(i) for i in ids))
        return 0
    decoder = IncrementalDecoder(model.tokenizer)
    sys.stdout.write(args.prompt)
    for step in stream:
        if step[0] is None or step[0] in model.config.eos_token_ids:
            break
        sys.stdout.write(decoder.push(step[0]))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    return 0


def add_parser(sub) -> None:
    """Register ``generate``."""
    p = sub.add_parser("generate", help="generate text (or token ids) from a prompt")
    p.add_argument("prompt", help="prompt text (or space-separated token ids for a model without tokenizer)")
    add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
