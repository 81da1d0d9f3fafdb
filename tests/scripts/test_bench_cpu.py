"""scripts/bench_cpu_step.py (the hand-built jitted step) end to end on small models: the JSON record, and the llama.cpp worker when installed.

Only the record's shape and consistency are checked here; the numbers belong in benchmarks/results/.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bitnet_jax.io.checkpoint import random_checkpoint
from bitnet_jax.config import ModelConfig
from bitnet_jax.io.hf import write_hf_checkpoint
from bitnet_jax.io.loading import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench_cpu_step.py"
QUICK = ["--prompt-len", "16", "--decode-tokens", "4", "--repeats", "2", "--threads", "2"]


def run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(BENCH), *QUICK, *args, "--json", str(out)], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    """A random model whose rows fill TQ2_0's 256-weight blocks (the tiny preset's 64 do not)."""
    config = ModelConfig.preset("tiny").replace(hidden_size=256, intermediate_size=512, vocab_size=1024)
    out = tmp_path_factory.mktemp("bench") / "small"
    write_hf_checkpoint(model_from_checkpoint(random_checkpoint(config, seed=0)), out)
    return out


def test_record_without_llamacpp(tmp_path):
    r = run_bench(tmp_path, "--preset", "tiny", "--head", "int8", "--no-llamacpp")
    assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0
    assert r["llamacpp_decode_tok_s"] is None and r["llamacpp_skipped"] == "--no-llamacpp"
    assert r["decode_ratio_vs_llamacpp"] is None
    assert r["settings"]["head"] == "int8" and r["settings"]["table_dtype"] == "int8"
    assert r["settings"]["shape"]["hidden_size"] == 64 and r["settings"]["threads"] == 2
    assert r["body_plus_head_bytes"] == r["packed_body_bytes"] + r["head_bytes"]
    assert r["rss_model_bytes"] == r["rss_bytes"] - r["rss_baseline_bytes"]
    assert r["rss_target_met"] == (r["rss_model_bytes"] <= r["rss_target"] * r["body_plus_head_bytes"])
    assert len(r["runs_s"]["tg"]) == 2 and r["runs_s"]["llama_tg"] == []
    for key in ("jax_version", "date", "commit", "cpu", "load_average_before", "rss_definition"):
        assert r[key]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llamacpp_side_by_side(tmp_path, small_dir):
    r = run_bench(tmp_path, "--model", str(small_dir))
    assert r["llamacpp_skipped"] is None, r["llamacpp_skipped"]
    assert r["llamacpp_decode_tok_s"] > 0 and r["llamacpp_prefill_tok_s"] > 0
    assert len(r["runs_s"]["llama_tg"]) == len(r["runs_s"]["tg"]) == 2
    assert r["decode_ratio_vs_llamacpp"] == round(r["decode_tok_s"] / r["llamacpp_decode_tok_s"], 3)
    assert r["llamacpp_gguf_bytes"] > 0 and r["settings"]["llamacpp"]["version"]


def test_bad_arguments_are_rejected(tmp_path):
    for args in (["--repeats", "0"], ["--head", "int8", "--table-dtype", "float32"]):
        res = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == 2 and "error" in res.stderr
