"""``bitnet-jax info``: a model's configuration and sizes."""

from __future__ import annotations

import argparse

from bitnet_jax.cli._common import add_model_arguments, enable_compile_cache, model_source


def run(args: argparse.Namespace) -> int:
    """Print the config fields, the ternary weight count and the resident parameter bytes."""
    enable_compile_cache(args)
    import jax
    import numpy as np

    import bitnet_jax as bj
    from bitnet_jax.io import TernaryTensor, model_from_checkpoint, read_checkpoint

    source = model_source(args)
    ckpt = read_checkpoint(bj.DEFAULT_MODEL if source is None else source)
    model = model_from_checkpoint(ckpt)
    nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(model.params))
    print(f"source:      {ckpt.source}")
    for key, value in ckpt.config.to_dict().items():
        print(f"{key + ':':<26}{value}")
    ternary = sum(int(np.prod(t.shape)) for t in ckpt.tensors.values() if isinstance(t, TernaryTensor))
    print(f"ternary weights:          {ternary:,}")
    print(f"resident parameter bytes: {nbytes:,}")
    print(f"kernel:                   {model.kernel.name} (layout {model.kernel.layout.name})")
    print(f"tokenizer:                {'yes' if ckpt.tokenizer is not None else 'none'}")
    return 0


def add_parser(sub) -> None:
    """Register ``info``."""
    p = sub.add_parser("info", help="print a model's configuration and sizes")
    add_model_arguments(p, dtype=False)
    p.set_defaults(func=run)
