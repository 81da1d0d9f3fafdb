"""Perplexity with the exact head vs the int8 head, on text the bundled default model never trained on.

Usage::

    python scripts/head_perplexity.py --json benchmarks/results/cpu_head_perplexity.json

Two held-out sets from this interpreter's standard library (the default model trained on its
top-level ``*.py`` files, ``configs/train/default-model.yaml``):

* ``validation``: the four top-level files its run config held out by a hash of their names
  (docs/default_model.md); never trained on, but scored during training.
* ``subpackages``: every ``*.py`` of a few stdlib packages; the run reads the top level only
  (``recursive: false``), so neither the model nor its tokenizer has seen them.

Each non-empty file is scored as ``bitnet-jax perplexity`` does (non-overlapping context-length windows, BOS
first) with both heads; a set's perplexity is the exponential of its token-weighted mean nll.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import sysconfig
from pathlib import Path
from typing import Any

import jax
import numpy as np

import pallas_kernels

from bitnet_jax import DEFAULT_MODEL, from_pretrained, perplexity, with_int8_head
from bench_results import git_commit, write_json  # scripts/bench_results.py

VALIDATION_FILES = ("ipaddress.py", "trace.py", "uu.py", "weakref.py")  # default-model.yaml's held-out split
SUBPACKAGES = ("json", "http", "logging", "urllib", "concurrent/futures")


def held_out_sets(stdlib: Path) -> dict[str, list[Path]]:
    """The two held-out file sets (see the module docstring), checked to exist."""
    sets = {
        "validation": [stdlib / name for name in VALIDATION_FILES],
        "subpackages": [p for pkg in SUBPACKAGES for p in sorted((stdlib / pkg).glob("*.py"))],
    }
    for name, files in sets.items():
        missing = [str(p) for p in files if not p.is_file()]
        if missing or not files:
            raise SystemExit(f"held-out set {name!r}: missing files {missing or '(none found)'} under {stdlib}")
    return sets


def token_ids(model: Any, path: Path) -> list[int]:
    """A file's token ids as ``bitnet-jax perplexity`` reads them (BOS first when the model has one)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return model.tokenizer.encode(text, add_bos=model.config.bos_token_id is not None)




def main() -> None:
    """Score every held-out file with both heads, print and optionally write the JSON record."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model directory (default: the bundled model)")
    p.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    exact = from_pretrained(args.model)
    if exact.tokenizer is None:
        raise SystemExit(f"{args.model}: the model has no tokenizer")
    int8 = with_int8_head(exact)
    seq_len = exact.config.max_position_embeddings
    table, scales = ("embed_tokens", "embed_scales") if exact.config.tie_word_embeddings else ("lm_head", "lm_head_scales")

    sets: dict[str, Any] = {}
    for set_name, files in held_out_sets(args.stdlib).items():
        rows = []
        for path in files:
            ids = token_ids(exact, path)
            if len(ids) < 2:  # an empty __init__.py: nothing to score
                continue
            nll_exact, n = perplexity(exact, ids, seq_len, args.batch_size)
            nll_int8, _ = perplexity(int8, ids, seq_len, args.batch_size)
            rows.append({"file": str(path.relative_to(args.stdlib)), "tokens": n,
                         "nll_exact": round(nll_exact, 5), "nll_int8": round(nll_int8, 5)})
        tokens = sum(r["tokens"] for r in rows)
        nll_e = sum(r["nll_exact"] * r["tokens"] for r in rows) / tokens
        nll_q = sum(r["nll_int8"] * r["tokens"] for r in rows) / tokens
        sets[set_name] = {
            "tokens": tokens,
            "perplexity_exact": round(math.exp(nll_e), 3),
            "perplexity_int8": round(math.exp(nll_q), 3),
            "relative_change": round(math.exp(nll_q - nll_e) - 1, 5),
            "nll_exact": round(nll_e, 5),
            "nll_int8": round(nll_q, 5),
            "files": rows,
        }
        print(f"{set_name}: {tokens} tokens, perplexity exact {math.exp(nll_e):.3f} int8 {math.exp(nll_q):.3f} "
              f"({100 * (math.exp(nll_q - nll_e) - 1):+.3f}%)", file=sys.stderr)

    record = {
        "model": "bundled default model" if Path(args.model) == DEFAULT_MODEL else args.model,
        "head_table": {"exact_dtype": str(exact.params[table].dtype), "exact_bytes": int(exact.params[table].nbytes),
                       "int8_bytes": int(int8.params[table].nbytes + int8.params[scales].nbytes)},
        "sets": sets,
        "settings": {"seq_len": seq_len, "batch_size": args.batch_size, "bos": exact.config.bos_token_id is not None,
                     "stdlib": str(args.stdlib), "python": sys.version.split()[0],
                     "method": "non-overlapping windows as `bitnet-jax perplexity`; set perplexity = exp(token-weighted mean nll)"},
        "kernel": pallas_kernels.select_kernel().name,
        "isa": pallas_kernels.cpu.isa(),
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
    }
    print(json.dumps(record, indent=2))
    if args.json:
        write_json(args.json, record)


if __name__ == "__main__":
    main()
