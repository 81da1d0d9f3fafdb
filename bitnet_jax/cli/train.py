"""``bitnet-jax train CONFIG [--set SECTION.FIELD=VALUE ...] [--export DIR]``: run a training config
(from scratch, or a fine-tune with ``init.from``); ``bitnet-jax export-run RUN OUT [--format F]``.

``--example NAME`` runs one of the example configs shipped in the package (``configs/train/*.yaml`` of the
checkout, ``bitnet_jax.examples`` of a wheel), e.g. ``bitnet-jax train --example ci-tiny``; ``--list-examples``
names them. A run says what it does: "resuming from step N of M" when it continues a checkpoint, "already
complete at step N" (exit 0) when there is nothing left to train, and a progress bar on a terminal.

Multi-process (multi-host) runs start every process with the same command plus the
``--coordinator/--num-processes/--process-id`` flags (or the ``BITNET_JAX_*`` variables, which
``bitnet-jax launch`` sets for local processes); the run config's ``mesh`` then spans every device.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

from bitnet_jax.config.run import EXPORT_FORMATS
from bitnet_jax.errors import BitNetError
from bitnet_jax.parallel import distributed


def examples_dir() -> Path:
    """Where the example run configs live: ``configs/train`` in a checkout, else the installed copy."""
    checkout = Path(__file__).resolve().parents[2] / "configs" / "train"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("bitnet_jax.examples")))


def example_names() -> list[str]:
    """The names ``--example`` takes."""
    return sorted(p.stem for p in examples_dir().glob("*.yaml"))


def _config_path(args: argparse.Namespace) -> str:
    if (args.config is None) == (args.example is None):
        raise BitNetError("give a run config: CONFIG (a YAML file) or --example NAME (one of "
                          f"{', '.join(example_names())}), not both")
    if args.example is None:
        return args.config
    if args.example not in example_names():
        raise BitNetError(f"--example {args.example!r}: no such example; available: {', '.join(example_names())}")
    return str(examples_dir() / f"{args.example}.yaml")


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the run config, then optionally export it."""
    if args.list_examples:
        for name in example_names():
            print(f"{name:<28}{examples_dir() / (name + '.yaml')}")
        return 0
    config = _config_path(args)
    distributed.initialize(distributed.config_from_args(args))  # before anything touches a device
    import jax

    from bitnet_jax.config import load_config
    from bitnet_jax.train import export_run, train

    cfg = load_config(config, args.set or ())
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
    p.add_argument("config", nargs="?", default=None, help="run config YAML (see configs/train/, or --example)")
    p.add_argument("--example", metavar="NAME", default=None,
                   help="run an example config shipped with the package (--list-examples names them)")
    p.add_argument("--list-examples", action="store_true", help="list the example configs and exit")
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
