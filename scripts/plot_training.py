#!/usr/bin/env python
"""Plot validation (and training) loss of one or more runs: ``plot_training.py OUT.png LABEL=RUN_DIR ...``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def main(argv: list[str]) -> int:
    """Write the plot; print each run's final validation loss and perplexity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, runs = Path(argv[0]), [a.split("=", 1) for a in argv[1:]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, run in runs:
        recs = read_metrics(Path(run))
        train = [(r["step"], r["loss"]) for r in recs if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
        line = ax.plot(*zip(*val), marker="o", label=f"{label} validation")[0]
        ax.plot(*zip(*train), alpha=0.35, color=line.get_color(), label=f"{label} train")
        print(f"{label}: final val loss {val[-1][1]:.4f}, perplexity {recs[-1].get('val_ppl', float('nan')):.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
