"""Shared pieces of the sub-commands: the ``--model`` option and loading the model it names."""

from __future__ import annotations

import argparse
from typing import Any

MODEL_HELP = ("model directory, GGUF file, or Hugging Face id (org/name, org/name:file.gguf; the local cache first, "
              "HF_HUB_OFFLINE=1 honoured) (default: the bundled model trained on the Python stdlib)")


def add_model_arguments(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """``--model`` (default: the bundled model) and, optionally, ``--dtype``."""
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    if dtype:
        parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="activation dtype")


def model_name(args: argparse.Namespace) -> str:
    """How the model of ``args`` is named in messages."""
    return args.model or "the default model"


def load_model(args: argparse.Namespace) -> Any:
    """The model ``--model`` names (the bundled one by default), loaded for the selected kernel."""
    import bitnet_jax as bj

    return bj.from_pretrained(args.model or bj.DEFAULT_MODEL, dtype=getattr(args, "dtype", None))
