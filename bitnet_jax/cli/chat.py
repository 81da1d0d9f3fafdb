"""``bitnet-jax chat``: an interactive chat loop (or one ``--prompt``) with streamed output.

``--max-new-tokens`` defaults to half the model's context (at most 256), so the defaults work on every
model. When the conversation no longer fits the context with room for a reply, the oldest turns are dropped
(the system message is kept) and a note says so once. At the ``>`` prompt: ``/exit`` (or Ctrl-D) ends the
session, ``/reset`` forgets the history; Ctrl-C during a reply ends that reply, Ctrl-C at the prompt ends
the session (exit 130).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bitnet_jax.cli._common import (add_model_arguments, add_sampling_arguments, load_model, model_name,
                                    read_prompt_file, write_flushed)
from bitnet_jax.errors import BitNetError

COMMANDS = "/exit (or Ctrl-D) ends the session, /reset forgets the history, Ctrl-C ends a reply"


def default_max_new_tokens(context: int) -> int:
    """The reply budget when ``--max-new-tokens`` is not given: half the context, at most 256."""
    return max(1, min(256, context // 2))


def fit_history(tokenizer: Any, messages: list[dict], max_new_tokens: int, context: int) -> tuple[list[int], int]:
    """The prompt ids of ``messages`` after dropping the oldest turns (never the system message nor the last
    one) until they leave ``max_new_tokens`` of the ``context``; ``messages`` is trimmed in place. Returns
    (ids, number of messages dropped); an error when the last message alone does not fit."""
    from bitnet_jax.inference import encode_chat

    head = 1 if messages and messages[0]["role"] == "system" else 0
    dropped = 0
    while True:
        ids = encode_chat(tokenizer, messages)
        if len(ids) + max_new_tokens <= context:
            return ids, dropped
        if len(messages) - head <= 1:
            raise BitNetError(f"the message needs {len(ids)} prompt tokens; with --max-new-tokens {max_new_tokens} "
                              f"that exceeds the model's context of {context} tokens")
        del messages[head]
        dropped += 1
        while len(messages) - head > 1 and messages[head]["role"] != "user":  # a turn starts with the user
            del messages[head]
            dropped += 1


def _reply(model, ids: list[int], args, max_new: int, out) -> str:
    """Stream the reply to ``ids``; returns its text (what was shown, if Ctrl-C cut it short)."""
    from bitnet_jax.inference import IncrementalDecoder, generate_stream, stop_token_ids

    stops = stop_token_ids(model.tokenizer, model.config)
    decoder = IncrementalDecoder(model.tokenizer)
    text: list[str] = []
    stream = generate_stream(model, [ids], max_new_tokens=max_new, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_tokens=stops)
    try:
        for step in stream:
            tok = step[0]
            if tok is None or tok in stops:
                break
            piece = decoder.push(tok)
            text.append(piece)
            write_flushed(out, piece)
    except KeyboardInterrupt:
        if args.prompt is not None:
            raise
        stream.close()
    tail = decoder.flush()
    write_flushed(out, tail + "\n")
    return "".join(text) + tail


def run(args: argparse.Namespace) -> int:
    """Answer ``--prompt`` once, or read user turns from stdin until ``/exit`` or end of input."""
    if args.prompt == "-":
        args.prompt = read_prompt_file("-")
    elif args.file is not None:
        if args.prompt is not None:
            raise BitNetError("give the message either with --prompt or with -f FILE, not both")
        args.prompt = read_prompt_file(args.file)
    model = load_model(args)
    if model.tokenizer is None:
        raise BitNetError(f"{model_name(args)}: chat needs a model with a tokenizer")
    context = model.config.max_position_embeddings
    max_new = args.max_new_tokens if args.max_new_tokens is not None else default_max_new_tokens(context)
    if max_new >= context:
        raise BitNetError(f"--max-new-tokens {max_new} leaves no room for a message in {model_name(args)}'s "
                          f"context of {context} tokens; use at most {context - 1}")
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    if args.prompt is not None:
        messages.append({"role": "user", "content": args.prompt})
        ids, _ = fit_history(model.tokenizer, messages, max_new, context)
        _reply(model, ids, args, max_new, sys.stdout)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {model_name(args)}; {COMMANDS}", file=sys.stderr)
    noted = False
    while True:
        try:
            line = input("> ")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            raise
        command = line.strip()
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            messages = list(system)
            print("(history cleared)", file=sys.stderr)
            continue
        if not command:
            continue
        messages.append({"role": "user", "content": line})
        try:
            ids, dropped = fit_history(model.tokenizer, messages, max_new, context)
        except BitNetError as e:
            messages.pop()
            print(f"bitnet-jax: {e} (message skipped)", file=sys.stderr)
            continue
        if dropped and not noted:
            print(f"bitnet-jax: note: the conversation is longer than the context of {context} tokens, so the "
                  "oldest turns are dropped from now on", file=sys.stderr)
            noted = True
        messages.append({"role": "assistant", "content": _reply(model, ids, args, max_new, sys.stdout)})


def add_parser(sub) -> None:
    """Register ``chat``."""
    p = sub.add_parser("chat", help="chat with a model (interactive, or one --prompt)",
                       description=f"Chat with the model (default: the bundled model). At the prompt: {COMMANDS}.")
    add_model_arguments(p)
    p.add_argument("--prompt", default=None, help="answer this one message and exit (- reads it from standard input)")
    p.add_argument("-f", "--file", default=None, help="answer the message in this file and exit")
    p.add_argument("--system", default=None, help="system message")
    add_sampling_arguments(p, None, "half the model's context, at most 256")
    p.set_defaults(func=run)
