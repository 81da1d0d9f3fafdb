"""scripts/bench_cpu.py (the public path) end to end on the tiny preset: the record's shape and consistency.

The numbers themselves belong in benchmarks/results/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench_cpu.py"


def test_public_path_record(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(BENCH), "--preset", "tiny", "--repeats", "1", "--inner", "1",
                    "--threads", "2", "--no-llamacpp", "--no-cli", "--workdir", str(tmp_path / "work"),
                    "--json", str(out)], check=True, stdout=subprocess.DEVNULL, cwd=ROOT, timeout=900)
    r = json.loads(out.read_text())
    ours = r["summary"]["bitnet_jax"]
    for key in ("load_s", "first_token_s", "prefill128_tok_s", "rss_bytes", "model_bytes"):
        assert ours[key] > 0, key
    for key in ("decode_tok_s", "batch4_decode_tok_s", "batch8_decode_tok_s"):  # differences of timings:
        assert isinstance(ours[key], float), key  # on a tiny model they can fall inside the timing noise
    assert ours["programs"] == 1  # the one-token call reused the 64-token program
    assert r["llamacpp_skipped"] == "--no-llamacpp" and r["ratios_vs_llamacpp"]["decode_tok_s"] is None
    assert r["bitnet_jax_cold"]["load_s"] > 0 and r["head"] == "exact"
    for key in ("git_commit", "cpu", "load_average", "date", "definitions"):
        assert r[key]
