"""``bitnet-jax train CONFIG [--set SECTION.FIELD=VALUE ...] [--export DIR]``: run a training config
(from scratch, or a fine-tune with ``init.from``); ``bitnet-jax export-run RUN OUT [--format F]``.

Multi-process (multi-host) runs start every process with the same command plus the
``--coordinator/--num-processes/--process-id`` flags (or the ``BITNET_JAX_*`` variables, which
``bitnet-jax launch`` sets for local processes); the run config's ``mesh`` then spans every device.
"""

from __future__ import annotations

import argparse
import json

from bitnet_jax.config.run import EXPORT_FORMATS
from bitnet_jax.parallel import distributed


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the run config, then optionally export it."""
    distributed.initialize(distributed.config_from_args(args))  # before anything touches a device
    import jax

    from bitnet_jax.config import load_config
    from bitnet_jax.train import export_run, train

    cfg = load_config(args.config, args.set or ())
    if args.export:  # refuse a bad output before hours of training
        from bitnet_jax.io._atomic import check_output

        check_output(args.export, "hf", args.overwrite)
    final = train(cfg, max_steps=args.max_steps)
    lead = jax.process_index() == 0
    if lead:
        print(json.dumps(final))
    if args.export:
        out = export_run(cfg.checkpoint.dir, args.export, overwrite=args.overwrite)
        if lead:
            print(f"exported to {out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Export a run's checkpoint in one format (default: a packed HF directory)."""
    from bitnet_jax.train import export_run

    print(f"exported to {export_run(args.run, args.out, args.step, args.format, overwrite=args.overwrite)}")
    return 0


def add_parser(sub) -> None:
    """Register the ``train`` and ``export-run`` sub-commands."""
    p = sub.add_parser("train", help="train (or resume) a model from a YAML run config")
    p.add_argument("config", help="run config YAML (see configs/train/)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a config value")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many new steps")
    p.add_argument("--export", metavar="DIR", default=None, help="export the final model as a packed HF directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model at --export DIR")
    distributed.add_arguments(p)
    p.set_defaults(func=run)
    e = sub.add_parser("export-run", help="export a training run's checkpoint (HF packed or latent, or GGUF)")
    e.add_argument("run", help="the run directory (checkpoint.dir)")
    e.add_argument("out", help="output directory (hf, hf-latent) or .gguf file")
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    e.add_argument("--format", choices=EXPORT_FORMATS, default="hf",
                   help="hf (packed, default), hf-latent (float latents, quantization_mode online), gguf-i2_s, "
                        "gguf-tq2_0, gguf-tq1_0")
    e.add_argument("--overwrite", action="store_true", help="replace an existing model at OUT")
    e.set_defaults(func=run_export)
