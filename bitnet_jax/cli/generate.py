"""``bitnet-jax generate PROMPT`` (or ``-f FILE``, ``-`` for stdin): stream a continuation of a prompt.

Every argument is checked before anything is written: the sampling flags when they are parsed, the prompt
against the model's context once the model is loaded, and the first token is computed before the prompt is
echoed. Each token's text is flushed as it is produced.
"""

from __future__ import annotations

import argparse
import sys

from bitnet_jax.cli._common import (add_model_arguments, add_sampling_arguments, load_model, model_name,
                                    read_prompt_file, write_flushed)
from bitnet_jax.errors import BitNetError


def prompt_text(args: argparse.Namespace) -> str:
    """The prompt: the PROMPT argument, ``-`` (standard input) or ``-f FILE``; exactly one of them."""
    if args.file is not None and args.prompt is not None:
        raise BitNetError("give the prompt either as PROMPT or with -f FILE, not both")
    if args.file is not None:
        return read_prompt_file(args.file)
    if args.prompt is None:
        raise BitNetError("no prompt: give PROMPT, - (read standard input) or -f FILE")
    return read_prompt_file("-") if args.prompt == "-" else args.prompt


def run(args: argparse.Namespace) -> int:
    """Generate from the prompt and write the text (or ids) to stdout as it is produced."""
    text = prompt_text(args)
    model = load_model(args)
    from bitnet_jax.inference import IncrementalDecoder, generate_stream

    if model.tokenizer is None:
        try:
            prompt = [int(t) for t in text.split()]
        except ValueError:
            raise BitNetError(
                f"{model_name(args)}: the model has no tokenizer, so the prompt must be space-separated token ids"
            ) from None
        if not prompt:
            raise BitNetError("the prompt is empty")
    else:
        if not text:
            raise BitNetError("the prompt is empty")
        prompt = model.tokenizer.encode(text, add_bos=model.config.bos_token_id is not None)
    context = model.config.max_position_embeddings
    max_new = args.max_new_tokens if args.max_new_tokens is not None else min(64, context - len(prompt))
    if max_new < 1 or len(prompt) + max_new > context:
        raise BitNetError(f"the prompt has {len(prompt)} tokens; with --max-new-tokens {max_new} it exceeds "
                          f"{model_name(args)}'s context of {context} tokens")
    stream = generate_stream(model, [prompt], max_new_tokens=max_new, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    first = next(stream)  # any error of generation surfaces here, before a byte of output
    steps = _chain(first, stream)
    out = sys.stdout
    if model.tokenizer is None:
        for step in steps:
            if step[0] is None:
                break
            write_flushed(out, f"{step[0]}" if step is first else f" {step[0]}")
        write_flushed(out, "\n")
        return 0
    decoder = IncrementalDecoder(model.tokenizer)
    write_flushed(out, text)
    for step in steps:
        if step[0] is None or step[0] in model.config.eos_token_ids:
            break
        write_flushed(out, decoder.push(step[0]))
    write_flushed(out, decoder.flush() + "\n")
    return 0


def _chain(first, rest):
    yield first
    yield from rest


def add_parser(sub) -> None:
    """Register ``generate``."""
    p = sub.add_parser("generate", help="generate text (or token ids) from a prompt",
                       description="Continue a prompt with the model (default: the bundled model). Examples: "
                                   "bitnet-jax generate 'def f(x):'; bitnet-jax generate -f prompt.txt; "
                                   "echo 'import os' | bitnet-jax generate -")
    p.add_argument("prompt", nargs="?", default=None,
                   help="prompt text, or - to read it from standard input (space-separated token ids for a "
                        "model without tokenizer)")
    p.add_argument("-f", "--file", default=None, help="read the prompt from this file (- for standard input)")
    add_model_arguments(p)
    add_sampling_arguments(p, None, "64, or what the context leaves after the prompt")
    p.set_defaults(func=run)
