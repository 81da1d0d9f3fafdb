"""``bitnet-jax convert IN OUT``: convert between HF directories and GGUF files."""

from __future__ import annotations

import argparse

from bitnet_jax.io.formats import EMBED_TYPES, FORMATS, GGUF_ARCHS, I2S_LAYOUT_NAMES, QUANTS


def run(args: argparse.Namespace) -> int:
    """Convert ``args.input`` to ``args.output``."""
    from bitnet_jax.io import convert

    out = convert(args.input, args.output, to=args.to, quant=args.quant, arch=args.arch,
                  i2_s_layout=args.i2s_layout, src_i2_s_layout=args.input_i2s_layout,
                  embed_type=args.embed_type, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    """Register ``convert``."""
    p = sub.add_parser("convert", help="convert a model between HF and GGUF formats")
    p.add_argument("input", help="model directory, GGUF file or Hugging Face id (org/name, org/name:file.gguf)")
    p.add_argument("output", help="output directory (hf) or .gguf file")
    p.add_argument("--to", choices=FORMATS, default=None, help="output format (default: from OUT's suffix)")
    p.add_argument("--quant", choices=QUANTS, default=None, help="GGUF ternary encoding (default i2_s)")
    p.add_argument("--embed-type", choices=EMBED_TYPES, default="auto",
                   help="GGUF storage of the embedding: auto (default) keeps its own dtype, so greedy tokens match "
                        "the source; f16 / bf16 halve a float32 embedding and may change greedy text")
    p.add_argument("--arch", choices=GGUF_ARCHS, default=None,
                   help="GGUF architecture (default: the one the engines run the model's family with)")
    p.add_argument("--i2s-layout", choices=I2S_LAYOUT_NAMES, default="x86",
                   help="I2_S code layout of the bitnet.cpp build that will read the file (default x86)")
    p.add_argument("--input-i2s-layout", choices=I2S_LAYOUT_NAMES, default="x86",
                   help="I2_S code layout of the build that wrote an input GGUF (files do not record it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing model at OUT (anything that is not a model is never replaced)")
    p.set_defaults(func=run)
