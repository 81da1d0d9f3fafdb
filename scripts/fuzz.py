"""Run the mutation fuzzer at scale and record cases per kind and outcome.

    nice -n 19 python scripts/fuzz.py --minutes 15 --json benchmarks/results/fuzz_cpu.json
    python scripts/fuzz.py --cases-per-kind 2000 --seed-start 100000

Kinds: config.json, model.safetensors, the sharded index, GGUF, tokenizer.json, ``generate`` arguments
and CLI argument vectors (tests/reliability/fuzzlib.py). Cases are interleaved over the kinds, so a
time-bounded run covers every kind evenly; each runs in a worker subprocess under RLIMIT_AS and a time
bound. The JSON holds the counts, every failing case (kind, seed, detail: rerun it with
``fuzzlib.run_case``), the CPU, load average, versions and git commit. Exit status 1 when any case failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "reliability"))

import fuzzlib  # noqa: E402  (tests/reliability/fuzzlib.py)
from bench_results import cpu_model, git_commit, write_json  # noqa: E402



def main() -> int:
    """Parse arguments, run the cases, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases-per-kind", type=int, default=10_000)
    p.add_argument("--seed-start", type=int, default=10_000, help="first seed (the default test uses 0..24)")
    p.add_argument("--minutes", type=float, default=None, help="stop submitting cases after this long")
    p.add_argument("--case-seconds", type=float, default=fuzzlib.CASE_SECONDS, help="time bound of one case")
    p.add_argument("--kinds", default=",".join(fuzzlib.KINDS))
    p.add_argument("--json", type=Path, default=HERE.parent / "benchmarks" / "results" / "fuzz_cpu.json")
    args = p.parse_args()
    kinds = args.kinds.split(",")
    cases = [(k, s) for s in range(args.seed_start, args.seed_start + args.cases_per_kind) for k in kinds]
    start = time.monotonic()
    until = start + args.minutes * 60 if args.minutes else None
    with tempfile.TemporaryDirectory(prefix="bitnet-fuzz-") as tmp:
        results = fuzzlib.run_cases(cases, Path(tmp), case_seconds=args.case_seconds, until=until)
    seconds = time.monotonic() - start
    summary = fuzzlib.summarize(results)
    import jax
    import numpy
    import safetensors
    import tokenizers

    import bitnet_jax

    record = {
        "what": "mutation fuzzer over config.json, safetensors, sharded index, GGUF, tokenizer.json, generate "
                "arguments and CLI arguments (tests/reliability/fuzzlib.py)",
        "failure_outcomes": list(fuzzlib.FAILURES),
        **summary,
        "outcomes": {o: sum(t.get(o, 0) for t in summary["by_kind"].values())
                     for o in sorted({o for t in summary["by_kind"].values() for o in t})},
        "seeds": [args.seed_start, args.seed_start + args.cases_per_kind],
        "seconds": round(seconds, 1),
        "cases_per_second": round(len(results) / seconds, 2) if seconds else None,
        "memory_limit_bytes": fuzzlib.MEMORY_LIMIT,
        "case_seconds": args.case_seconds,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "niceness": os.nice(0),
        "versions": {"python": platform.python_version(), "bitnet_jax": getattr(bitnet_jax, "__version__", "?"),
                     "jax": jax.__version__, "numpy": numpy.__version__, "safetensors": safetensors.__version__,
                     "tokenizers": tokenizers.__version__},
        "git_commit": git_commit(),
    }
    write_json(args.json, record)
    print(json.dumps({k: record[k] for k in ("cases", "failures", "outcomes", "seconds")}))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
