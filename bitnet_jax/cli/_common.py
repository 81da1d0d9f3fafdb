"""Shared pieces of the sub-commands: the ``--model`` option, argument types that check their value while
the command line is parsed (before any output), prompts from ``-f FILE`` / ``-`` (stdin), the persistent
compilation cache, and loading the model.

Nothing here imports JAX at module level: ``bitnet-jax --help`` and argument errors answer without it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from bitnet_jax.errors import BitNetError

DEFAULT_NAME = "default"
"""What ``--model`` calls the bundled model (unless a file or directory of that name exists)."""
MODEL_HELP = ("model directory, GGUF file, or Hugging Face id (org/name, org/name:file.gguf; the local cache first, "
              "HF_HUB_OFFLINE=1 honoured) (default: the bundled 2.4M-parameter model trained on the Python stdlib, "
              f"bitnet_jax/default_model, also named '{DEFAULT_NAME}')")

CACHE_ENV = "BITNET_JAX_CACHE"
"""Environment variable naming the persistent XLA compilation cache directory (``off`` or ``0`` disables it)."""


def checked_number(kind: Callable[[str], Any], what: str, ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = checked_number(int, "a positive integer", lambda v: v >= 1)
non_negative_int = checked_number(int, "an integer >= 0", lambda v: v >= 0)
any_int = checked_number(int, "an integer", lambda v: True)
non_negative_float = checked_number(float, "a finite number >= 0", lambda v: 0.0 <= v < float("inf"))
unit_interval = checked_number(float, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)


def add_model_arguments(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--model`` (default: the bundled model) and, optionally, ``--dtype``."""
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    if dtype:
        parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="activation dtype")


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int | None, help_default: str) -> None:
    """``--max-new-tokens``, ``--temperature``, ``--top-k``, ``--top-p``, ``--seed``, each checked when parsed."""
    parser.add_argument("--max-new-tokens", type=positive_int, default=max_new_tokens,
                        help=f"tokens to generate at most (default: {help_default})")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 means greedy (default)")
    parser.add_argument("--top-k", type=positive_int, default=None, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=unit_interval, default=None, help="nucleus sampling mass in (0, 1]")
    parser.add_argument("--seed", type=any_int, default=0, help="sampling seed (default 0)")


def read_prompt_file(name: str) -> str:
    """The text of ``name`` (``-`` is standard input), one-line errors naming the file."""
    if name == "-":
        try:
            return sys.stdin.read()
        except UnicodeDecodeError as e:
            raise BitNetError(f"standard input is not UTF-8 text ({e.reason} at byte {e.start})") from None
    path = Path(name)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BitNetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise BitNetError(f"{path}: cannot read ({e.strerror or e})") from None


def model_name(args: argparse.Namespace) -> str:
    """How the model of ``args`` is named in messages."""
    return "the default model" if model_source(args) is None else args.model


def model_source(args: argparse.Namespace) -> str | None:
    """``--model`` as given, or None for the bundled model (no ``--model``, or ``--model default``)."""
    if args.model is None or (args.model == DEFAULT_NAME and not Path(DEFAULT_NAME).exists()):
        return None
    return args.model


def cache_dir(args: argparse.Namespace | None = None) -> Path | None:
    """The persistent compilation cache directory: ``$BITNET_JAX_CACHE``, else
    ``$XDG_CACHE_HOME/bitnet-jax/xla`` (``~/.cache/bitnet-jax/xla``); None when ``--no-compile-cache`` or
    ``BITNET_JAX_CACHE=off`` turn it off."""
    if args is not None and getattr(args, "no_compile_cache", False):
        return None
    env = os.environ.get(CACHE_ENV)
    if env is not None and env.strip().lower() in ("", "0", "off", "no", "false"):
        return None
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bitnet-jax" / "xla"


def enable_compile_cache(args: argparse.Namespace | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in :func:`cache_dir` (every compiled program is kept, so a
    second run of a command skips XLA compilation); returns the directory, or None when it is off."""
    directory = cache_dir(args)
    if directory is None:
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:  # set by the user (JAX_COMPILATION_CACHE_DIR): theirs wins
        return Path(jax.config.jax_compilation_cache_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache only costs time; never an error
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def load_model(args: argparse.Namespace) -> Any:
    """The model ``--model`` names (the bundled one by default), loaded for the selected kernel."""
    enable_compile_cache(args)
    import bitnet_jax as bj

    source = model_source(args)
    return bj.from_pretrained(bj.DEFAULT_MODEL if source is None else source, dtype=getattr(args, "dtype", None))


class Interrupts:
    """Ctrl-C that is never lost. Python raises ``KeyboardInterrupt`` in whatever code runs next, and where
    that is a garbage-collection callback or a finalizer (JAX registers one) it can only print it and
    carry on. While installed, such a swallowed interrupt is remembered instead, and :meth:`check` raises
    it at the next safe point (each streamed token; the end of the command)."""

    def __init__(self) -> None:
        self.pending = False
        self._previous: Any = None

    def __enter__(self) -> "Interrupts":
        self._previous, sys.unraisablehook = sys.unraisablehook, self._hook
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.unraisablehook = self._previous

    def _hook(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.pending = True
        else:
            self._previous(unraisable)

    def check(self) -> None:
        """Raise the interrupt that arrived where it could not be raised, if one did."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


INTERRUPTS = Interrupts()
"""The process's one guard (signals belong to the process): installed by ``main``, checked per token."""


def write_flushed(out: Any, text: str) -> None:
    """Write ``text`` and flush, so streamed tokens appear as they are produced (first raising a Ctrl-C
    that arrived where Python could not raise it: :class:`Interrupts`)."""
    INTERRUPTS.check()
    if text:
        out.write(text)
        out.flush()
