"""The bitnet-jax command line on a tiny model directory written by scripts/make_tiny_model.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bitnet_jax.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "tiny"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_model.py"), str(out)], check=True)
    return out


def test_generate_prints_prompt_and_continuation(tiny_dir, capsys):
    import bitnet_jax as bj

    assert main(["generate", "--model", str(tiny_dir), "def f(x):", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    model = bj.from_pretrained(tiny_dir)
    ids = bj.generate(model, ["def f(x):"], max_new_tokens=8)[0].tolist()
    ids = ids[: next((i for i, t in enumerate(ids) if t in model.config.eos_token_ids), len(ids))]
    assert ids, "the model stopped at once; the test needs at least one generated token"
    assert out == "def f(x):" + model.tokenizer.decode(ids) + "\n"


def test_generate_sampling_flags(tiny_dir, capsys):
    args = ["generate", "--model", str(tiny_dir), "import os", "--max-new-tokens", "6", "--temperature", "0.9"]
    assert main(args + ["--top-k", "20", "--top-p", "0.9", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(args + ["--top-k", "20", "--top-p", "0.9", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first


def test_info(tiny_dir, capsys):
    assert main(["info", "--model", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "hidden_size:" in out and "64" in out and "tokenizer:                yes" in out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert main(["generate", "--model", str(tmp_path), "hi"]) == 2
    assert "Llama checkpoint without a bitnet quantization_config" in capsys.readouterr().err


def test_invalid_sampling_argument_is_reported(tiny_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse: checked while parsing, before any output
        main(["generate", "--model", str(tiny_dir), "x", "--top-p", "0"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "--top-p" in captured.err and "(0, 1]" in captured.err and captured.out == ""


def test_perplexity_int8_head_flag(tiny_dir, tmp_path, capsys):
    text = tmp_path / "t.py"
    text.write_text("def add(a, b):\n    return a + b\n" * 10)
    ppl = {}
    for head in ("exact", "int8"):
        assert main(["perplexity", "--model", str(tiny_dir), "--seq-len", "32", "--head", head, str(text)]) == 0
        ppl[head] = float(capsys.readouterr().out.split("perplexity:")[1])
    assert ppl["int8"] != ppl["exact"]  # the flag changes the head ...
    assert abs(ppl["int8"] / ppl["exact"] - 1) < 0.05  # ... by quantization noise only
    with pytest.raises(SystemExit):
        main(["perplexity", "--model", str(tiny_dir), "--head", "int4", str(text)])


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from bitnet_jax.cli import info

    def boom(args):
        raise KeyError("lost")

    monkeypatch.setattr(info, "run", boom)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["--debug", "info"])


def test_bitnet_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    assert main(["info", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "config.json") in err


def test_cli_prints_nothing_but_its_output(tmp_path):
    """A command on a CPU machine writes only its own output: no libtpu (or other) start-up noise on
    stderr, which the test extra used to pull in with jax[tpu]."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "BITNET_JAX_LIBTPU_PATH"}
    proc = subprocess.run([sys.executable, "-m", "bitnet_jax.cli", "generate", "x", "--max-new-tokens", "2"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.startswith("x")
