"""The ``bitnet-jax`` command line: one sub-command per module function ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from bitnet_jax import cli_perplexity, cli_train
from bitnet_jax.errors import BitNetError


DEFAULT_MODEL = Path(__file__).resolve().parent / "default_model"
MODEL_HELP = "model directory or GGUF file (default: the bundled model trained on the Python stdlib)"


def _load(path: str | None, dtype: str | None = None):
    from bitnet_jax.loading import from_pretrained

    return from_pretrained(path or DEFAULT_MODEL, dtype=dtype)


def _cmd_generate(args: argparse.Namespace) -> int:
    from bitnet_jax.generate import generate_stream

    model = _load(args.model, args.dtype)
    if model.tokenizer is None:
        try:
            prompt = [int(t) for t in args.prompt.split()]
        except ValueError:
            raise BitNetError(
                f"{args.model}: the model has no tokenizer, so PROMPT must be space-separated token ids"
            ) from None
    else:
        prompt = args.prompt
        sys.stdout.write(args.prompt)
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
    from bitnet_jax.streaming import IncrementalDecoder

    decoder = IncrementalDecoder(model.tokenizer)
    for step in stream:
        if step[0] is None:
            break
        if step[0] in model.config.eos_token_ids:
            break
        sys.stdout.write(decoder.push(step[0]))
        sys.stdout.flush()
    sys.stdout.write(decoder.flush() + "\n")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    import jax

    from bitnet_jax.loading import model_from_checkpoint, read_checkpoint

    ckpt = read_checkpoint(args.model)
    cfg = ckpt.config
    model = model_from_checkpoint(ckpt)
    nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(model.params))
    print(f"source:      {ckpt.source}")
    for key, value in cfg.to_dict().items():
        print(f"{key + ':':<26}{value}")
    ternary = sum(int(np.prod(t.shape)) for t in ckpt.tensors.values() if hasattr(t, "codes"))
    print(f"ternary weights:          {ternary:,}")
    print(f"resident parameter bytes: {nbytes:,}")
    print(f"tokenizer:                {'yes' if ckpt.tokenizer is not None else 'none'}")
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text (or token ids) from a prompt")
    p.add_argument("prompt", help="prompt text (or space-separated token ids for a model without tokenizer)")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="activation dtype")
    p.set_defaults(func=_cmd_generate)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a model's configuration and sizes")
    p.add_argument("--model", required=True, help="model directory or GGUF file")
    p.set_defaults(func=_cmd_info)


PARSERS = [_add_generate, _add_info, cli_train.add_parser, cli_perplexity.add_parser]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="bitnet-jax", description="BitNet b1.58 models in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitnet-jax`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BitNetError as e:
        print(f"bitnet-jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
