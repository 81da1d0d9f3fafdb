"""``bitnet-jax convert IN OUT``: convert between HF directories and GGUF files."""

from __future__ import annotations

import argparse

from bitnet_jax.io.formats import FORMATS, QUANTS


def run(args: argparse.Namespace) -> int:
    """Convert ``args.input`` to ``args.output``."""
    from bitnet_jax.io import convert

    out = convert(args.input, args.output, to=args.to, quant=args.quant)
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    """Register ``convert``."""
    p = sub.add_parser("convert", help="convert a model between HF and GGUF formats")
    p.add_argument("input", help="model directory or GGUF file")
    p.add_argument("output", help="output directory (hf) or .gguf file")
    p.add_argument("--to", choices=FORMATS, default=None, help="output format (default: from OUT's suffix)")
    p.add_argument("--quant", choices=QUANTS, default=None, help="GGUF ternary encoding (default i2_s)")
    p.set_defaults(func=run)
