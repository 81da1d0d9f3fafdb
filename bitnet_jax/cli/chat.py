"""``bitnet-jax chat``: an interactive chat loop (or one ``--prompt``) with streamed output."""

from __future__ import annotations

import argparse
import sys

from bitnet_jax.cli._common import add_model_arguments, load_model, model_name
from bitnet_jax.errors import BitNetError


def _reply(model, messages, args, out) -> str:
    from bitnet_jax.inference import IncrementalDecoder, encode_chat, generate_stream, stop_token_ids

    stops = stop_token_ids(model.tokenizer, model.config)
    decoder = IncrementalDecoder(model.tokenizer)
    text = []
    stream = generate_stream(
        model, [encode_chat(model.tokenizer, messages)], max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_tokens=stops,
    )
    for step in stream:
        tok = step[0]
        if tok is None or tok in stops:
            break
        piece = decoder.push(tok)
        text.append(piece)
        out.write(piece)
        out.flush()
    tail = decoder.flush()
    out.write(tail + "\n")
    return "".join(text) + tail


def run(args: argparse.Namespace) -> int:
    """Answer ``--prompt`` once, or read user turns from stdin until ``/exit`` or end of input."""
    model = load_model(args)
    if model.tokenizer is None:
        raise BitNetError(f"{model_name(args)}: chat needs a model with a tokenizer")
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        messages.append({"role": "user", "content": args.prompt})
        _reply(model, messages, args, sys.stdout)
        return 0
    while True:
        try:
            line = input("> ")
        except EOFError:
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        messages.append({"role": "user", "content": line})
        messages.append({"role": "assistant", "content": _reply(model, messages, args, sys.stdout)})


def add_parser(sub) -> None:
    """Register ``chat``."""
    p = sub.add_parser("chat", help="chat with a model (interactive, or one --prompt)")
    add_model_arguments(p)
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
