"""The ``bitnet-jax`` command line: one module per sub-command (``add_parser(sub)`` + ``run(args)``).

Errors: any :class:`~bitnet_jax.errors.BitNetError` prints as one line and exits 2 (argument errors too,
before any output); any other exception prints one line naming it as an internal error and exits 1.
``--debug`` shows the traceback instead.

Interrupts and pipes end quietly, with the shell's conventions: Ctrl-C (SIGINT) exits 130 (128 + 2) and a
closed output pipe (``bitnet-jax generate ... | head -c 20``) exits 141 (128 + SIGPIPE's 13), without a
traceback. Sub-command modules import JAX only inside ``run``, so ``--help``, ``--version`` and argument
errors answer at once.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import warnings
from typing import Sequence

from bitnet_jax.cli import chat, convert, generate, info, launch, perplexity, serve, train
from bitnet_jax.cli._common import INTERRUPTS
from bitnet_jax.errors import BitNetError

SUBCOMMANDS = (generate, info, chat, convert, train, perplexity, launch, serve)
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (SIGINT): 128 + 2, as shells report a process SIGINT ended."""
EXIT_BROKEN_PIPE = 141
"""Exit status when the reader of standard output went away: 128 + 13 (SIGPIPE), as ``yes | head`` reports."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``bitnet-jax: warning: ...`` line on stderr (``--debug`` keeps Python's format)."""
    print(f"bitnet-jax: warning: {_one_line(message)}", file=sys.stderr if file is None else file)


def _version() -> str:
    from bitnet_jax import __version__

    return f"bitnet-jax {__version__}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="bitnet-jax", description="BitNet b1.58 models in JAX",
        epilog="Every command that takes --model uses the bundled default model (bitnet_jax/default_model) "
               "without it. Compiled programs are kept in $BITNET_JAX_CACHE (default ~/.cache/bitnet-jax/xla; "
               "off: --no-compile-cache or BITNET_JAX_CACHE=off).")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use the persistent XLA compilation cache ($BITNET_JAX_CACHE, default "
                             "~/.cache/bitnet-jax/xla)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on a closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _is_broken_pipe(e: BaseException) -> bool:
    return isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == errno.EPIPE)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitnet-jax`` console script (``argv`` None: this process's arguments; an
    interrupt then ends the process at once, past the interpreter's teardown of running XLA threads)."""
    args = build_parser().parse_args(argv)
    if not args.debug:
        warnings.showwarning = _one_line_warning
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit fails the write (a one-line error), not the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        with INTERRUPTS:
            status = args.func(args)
            INTERRUPTS.check()
        return status
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BitNetError as e:
        if args.debug:
            raise
        print(f"bitnet-jax: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001  (one line, not a traceback, for anything unexpected; pyo3 panics too)
        if _is_broken_pipe(e):
            code = EXIT_BROKEN_PIPE
        else:
            if args.debug:
                raise
            print(f"bitnet-jax: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --debug for the "
                  "traceback)", file=sys.stderr)
            return 1
    if code == EXIT_BROKEN_PIPE:
        _quiet_stdout()
    if argv is None:  # the console script: leave now, while XLA's threads may still be busy
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            _quiet_stdout()
        sys.stderr.flush()
        os._exit(code)
    return code
