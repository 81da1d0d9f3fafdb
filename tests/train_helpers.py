"""Shared helpers for the training tests: a seconds-long config on a few stdlib modules."""

from __future__ import annotations

from pathlib import Path

from bitnet_jax.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CI_CONFIG = ROOT / "configs" / "train" / "ci-tiny.yaml"


def tiny_overrides(run_dir: Path) -> list[str]:
    """``--set`` overrides shrinking the CI config (seq 32, batch 4 in 2 micro-batches) into ``run_dir``."""
    return [
        f"checkpoint.dir={run_dir}",
        "data.seq_len=32",
        "training.batch_size=4",
        "training.grad_accum=2",
        "training.steps=12",
        "checkpoint.every=4",
        "logging.every=2",
        "logging.eval_every=6",
        "logging.progress=false",
    ]


def tiny_config(run_dir: Path, *overrides: str):
    """The CI config shrunk further (:func:`tiny_overrides`), writing into ``run_dir``."""
    return load_config(CI_CONFIG, [*tiny_overrides(run_dir), *overrides])
