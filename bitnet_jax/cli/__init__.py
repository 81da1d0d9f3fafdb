"""The ``bitnet-jax`` command line: one module per sub-command (``add_parser(sub)`` + ``run(args)``).

Errors: any :class:`~bitnet_jax.errors.BitNetError` prints as one line and exits 2; any other exception
prints one line naming it as an internal error and exits 1. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from bitnet_jax.cli import chat, convert, generate, info, launch, perplexity, serve, train
from bitnet_jax.errors import BitNetError

SUBCOMMANDS = (generate, info, chat, convert, train, perplexity, launch, serve)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="bitnet-jax", description="BitNet b1.58 models in JAX")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitnet-jax`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BitNetError as e:
        if args.debug:
            raise
        print(f"bitnet-jax: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (one line, not a traceback, for anything unexpected)
        if args.debug:
            raise
        print(f"bitnet-jax: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
