"""The mutation fuzzer (tests/reliability/fuzzlib.py) over config.json, safetensors headers, the sharded
index, GGUF headers/metadata/tensor infos, tokenizer.json, ``generate`` arguments and CLI argument
vectors: every case is a one-line BitNetError naming the file, or a load whose forward is finite; no case
hangs, crashes or runs out of memory (each runs in a worker subprocess under RLIMIT_AS and a time bound).
``scripts/fuzz.py`` runs it at scale and records the figures in ``benchmarks/results/fuzz_*.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fuzzlib  # noqa: E402


def _check(results: list[dict], expected: int) -> None:
    summary = fuzzlib.summarize(results)
    assert summary["cases"] == expected
    assert summary["failures"] == 0, summary["failing_cases"][:10]
    for kind in fuzzlib.KINDS:  # each kind both loads (or runs) and is refused somewhere: the fuzzer bites
        assert summary["by_kind"][kind].get("error", 0) > 0, (kind, summary["by_kind"][kind])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return fuzzlib.make_base(tmp_path_factory.mktemp("fuzz"))


def test_fuzz_default(base):
    """A few hundred seeded cases (25 per kind), about a minute."""
    cases = [(kind, seed) for seed in range(25) for kind in fuzzlib.KINDS]
    _check(fuzzlib.run_cases(cases, base, case_seconds=60), len(cases))


def test_run_case_flags_a_traceback(base, tmp_path, monkeypatch):
    """The classifier itself: an internal exception is a failure, not an error."""
    def broken(path):
        raise KeyError("boom")

    monkeypatch.setattr(fuzzlib, "_load_and_check", broken)
    for kind in ("config", "gguf", "index"):
        result = fuzzlib.run_case(kind, 0, base, tmp_path / "w")
        assert result["outcome"] == "traceback" and "KeyError" in result["detail"]


@pytest.mark.slow
def test_fuzz_at_scale(base):
    """Tens of thousands of cases (see scripts/fuzz.py for a time-bounded run that records the figures)."""
    cases = [(kind, seed) for seed in range(1000, 4000) for kind in fuzzlib.KINDS]
    _check(fuzzlib.run_cases(cases, base, case_seconds=60), len(cases))
