"""The command line as people use it (issue 19): defaults on the bundled model, prompts from files and
stdin, argument checks before output, quiet interrupts and pipes, chat sessions, train messages."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import bitnet_jax as bj
from bitnet_jax.cli import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, main

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "bitnet_jax.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, BITNET_JAX_CACHE="off", PYTHONUNBUFFERED="1")
    env.update(extra)
    if extra.get("BITNET_JAX_CACHE", "off") != "off":  # the CLI's own cache under test: not the suite's
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


@pytest.fixture(scope="module")
def default_model():
    return bj.from_pretrained(bj.DEFAULT_MODEL)


def _greedy_text(model, prompt: str, n: int) -> str:
    ids = bj.generate(model, [prompt], max_new_tokens=n)[0].tolist()
    ids = ids[: next((i for i, t in enumerate(ids) if t in model.config.eos_token_ids), len(ids))]
    return model.tokenizer.decode(ids)


# --- start-up: no JAX for --help, --version and argument errors -------------------------------------------

@pytest.mark.parametrize("argv, code", [
    (["--help"], 0), (["--version"], 0), (["generate", "--help"], 0), (["chat", "--help"], 0),
    (["generate", "x", "--max-new-tokens", "0"], 2), (["perplexity", "f.txt", "--batch-size", "0"], 2),
    (["train", "--help"], 0),
])
def test_help_and_argument_errors_do_not_import_jax(argv, code):
    probe = ("import sys\nfrom bitnet_jax.cli import main\ntry:\n    main(%r)\nexcept SystemExit as e:\n"
             "    print('EXIT', e.code, 'jax' in sys.modules, file=sys.stderr)\n" % argv)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.stderr.strip().splitlines()[-1] == f"EXIT {code} False", proc.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"bitnet-jax {bj.__version__}"


@pytest.mark.parametrize("command", ["generate", "info", "chat", "perplexity"])
def test_model_is_optional_and_the_default_is_named(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model" in text and "default: the bundled" in text


def test_info_without_model(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert str(bj.DEFAULT_MODEL) in out and "tokenizer:                yes" in out
    assert main(["info", "--model", "default"]) == 0  # the bundled model's name on the command line
    assert capsys.readouterr().out == out


# --- prompts: argument, -f FILE, - (stdin); every check before any output -----------------------------------

def test_prompt_from_file_and_stdin_match_the_argument(default_model, tmp_path, monkeypatch, capsys):
    prompt = "def add(a, b):"
    expected = prompt + _greedy_text(default_model, prompt, 12) + "\n"
    assert main(["generate", prompt, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected
    (tmp_path / "p.txt").write_text(prompt, encoding="utf-8")
    assert main(["generate", "-f", str(tmp_path / "p.txt"), "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected
    monkeypatch.setattr(sys, "stdin", io.StringIO(prompt))
    assert main(["generate", "-", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize("argv, words", [
    (["generate", "-f", "/no/such/prompt.txt"], ["/no/such/prompt.txt", "cannot read"]),
    (["generate", "x" * 3000], ["exceeds", "context of 256"]),
    (["generate", "abc", "--max-new-tokens", "256"], ["--max-new-tokens 256", "context of 256"]),
    (["generate"], ["no prompt"]),
    (["chat", "--prompt", "hi", "--max-new-tokens", "256"], ["--max-new-tokens 256", "at most 255"]),
])
def test_bad_prompts_fail_before_any_output(argv, words, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert all(w in captured.err for w in words), captured.err


@pytest.mark.parametrize("argv, words", [
    (["perplexity", "f.txt", "--batch-size", "0"], ["--batch-size", "positive integer", "'0'"]),
    (["perplexity", "f.txt", "--seq-len", "-5"], ["--seq-len", "'-5'"]),
    (["perplexity", "f.txt", "--seq-len", "0"], ["--seq-len", "'0'"]),
    (["generate", "x", "--temperature", "-1"], ["--temperature", "'-1'"]),
    (["generate", "x", "--top-k", "0"], ["--top-k", "'0'"]),
    (["chat", "--max-new-tokens", "x"], ["--max-new-tokens", "'x'"]),
])
def test_numeric_arguments_are_checked_while_parsing(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    captured = capsys.readouterr()
    assert e.value.code == 2 and captured.out == ""
    assert all(w in captured.err for w in words), captured.err


def test_perplexity_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("def add(a, b):\n    return a + b\n" * 4))
    assert main(["perplexity", "-", "--seq-len", "16"]) == 0
    assert "perplexity:" in capsys.readouterr().out


# --- interrupts and pipes ------------------------------------------------------------------------------------

def _first_bytes(proc: subprocess.Popen, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = proc.stdout.read1(n - len(data))
        assert chunk, proc.stderr.read().decode()
        data += chunk
    return data


def _sigint_default() -> None:
    """In the child: Ctrl-C as in a terminal, even when this test run was started with SIGINT ignored
    (a background job of a non-interactive shell), which Python would otherwise keep ignoring."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_generate_exits_130_quietly():
    proc = subprocess.Popen([*CLI, "generate", "def f(x):", "--max-new-tokens", "240"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), preexec_fn=_sigint_default)
    _first_bytes(proc, 10)  # generating now (the prompt is echoed after the first token)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err.decode()
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err


def test_broken_pipe_exits_141_quietly():
    proc = subprocess.Popen([*CLI, "generate", "def f(x):", "--max-new-tokens", "240"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())
    assert len(_first_bytes(proc, 20)) == 20  # like `| head -c 20`
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == EXIT_BROKEN_PIPE, err.decode()
    assert err == b"", err.decode()


def test_shell_pipe_into_head():
    proc = subprocess.run(["bash", "-c", f"{sys.executable} -m bitnet_jax.cli generate 'import os' "
                           "--max-new-tokens 240 | head -c 20; echo \" ${PIPESTATUS[0]}\""],
                          capture_output=True, text=True, timeout=180, env=_env())
    assert proc.stdout.startswith("import os") and proc.stdout.endswith(f" {EXIT_BROKEN_PIPE}\n"), proc.stdout
    assert proc.stderr == ""


def test_ctrl_c_at_the_chat_prompt_exits_130_quietly():
    proc = subprocess.Popen([*CLI, "chat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(), preexec_fn=_sigint_default)
    assert _first_bytes(proc, 2) == b"> "
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED and b"Traceback" not in err, err.decode()


def test_ctrl_c_ends_a_reply_not_the_session(default_model, monkeypatch, capsys):
    """Ctrl-C while a reply streams ends that reply (what was shown stays in the history); the next message
    is answered; end of input ends the session with exit 0."""
    import bitnet_jax.inference as inference

    real = inference.generate_stream
    calls = []

    def interrupted_once(*args, **kwargs):
        calls.append(args[1][0])
        stream = real(*args, **kwargs)
        if len(calls) == 1:
            for _ in range(3):
                yield next(stream)
            raise KeyboardInterrupt
        yield from stream

    monkeypatch.setattr(inference, "generate_stream", interrupted_once)
    monkeypatch.setattr(sys, "stdin", io.StringIO("def f(x):\nimport os\n"))
    assert main(["chat", "--max-new-tokens", "16"]) == 0
    out = capsys.readouterr().out
    assert out.count("> ") == 3 and len(calls) == 2
    first_reply = out.split("> ")[1]
    expected = default_model.tokenizer.decode(real(default_model, [calls[0]], max_new_tokens=3).__next__())
    assert first_reply.startswith(expected[:1]) and first_reply.endswith("\n")
    assert len(calls[1]) > len(calls[0])  # the interrupted turn stayed in the history


def test_ctrl_d_in_a_terminal_ends_the_session():
    """In a pty, as a user types: a message is answered, then Ctrl-D ends the session with exit 0."""
    import pty
    import select
    import time

    fd, tty = pty.openpty()
    proc = subprocess.Popen([*CLI, "chat", "--max-new-tokens", "16"], stdin=tty, stdout=tty, stderr=tty,
                            env=_env(), start_new_session=True)
    os.close(tty)
    out = b""

    def read_until(marker: bytes, count: int, timeout: float = 180) -> None:
        nonlocal out
        end = time.time() + timeout
        while out.count(marker) < count:
            assert time.time() < end, out.decode(errors="replace")
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break

    read_until(b"> ", 1)
    os.write(fd, b"def f(x):\n")
    read_until(b"> ", 2)  # answered
    os.write(fd, b"\x04")  # Ctrl-D
    code = proc.wait(timeout=60)
    os.close(fd)
    assert code == 0, out.decode(errors="replace")
    assert b"Traceback" not in out and b"Ctrl-D" in out  # the session's one-line help


def test_compile_cache_on_by_default_and_off_by_flag(tmp_path):
    cache = tmp_path / "xla"
    args = [*CLI, "generate", "x", "--max-new-tokens", "2"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=_env(BITNET_JAX_CACHE=str(cache)))
    assert proc.returncode == 0, proc.stderr
    assert any(cache.iterdir())
    off = tmp_path / "off"
    proc = subprocess.run([*CLI, "--no-compile-cache", *args[3:]], capture_output=True, text=True, timeout=300,
                          env=_env(BITNET_JAX_CACHE=str(off)))
    assert proc.returncode == 0 and not off.exists(), proc.stderr


# --- chat --------------------------------------------------------------------------------------------------

def test_chat_prompt_with_defaults_on_the_bundled_model(capsys):
    assert main(["chat", "--prompt", "hello"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_ten_turn_session_trims_history_once(monkeypatch, capsys):
    lines = [f"def function_{i}(x):" for i in range(10)] + ["/exit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["chat"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("> ") == 11  # ten replies, then /exit
    assert captured.err.count("oldest turns are dropped") == 1, captured.err
    assert "error" not in captured.err and "message skipped" not in captured.err, captured.err


def test_reset_and_eof(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n/reset\nhi\n"))  # then end of input (Ctrl-D)
    assert main(["chat", "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    replies = captured.out.split("> ")[1:]
    assert len(replies) == 4 and replies[1] == replies[3] == ""  # hi, /reset, hi, end of input
    assert replies[0] == replies[2] != ""  # /reset: the second "hi" starts afresh
    assert "history cleared" in captured.err


def test_fit_history_drops_oldest_turns_keeps_system(default_model):
    from bitnet_jax.cli.chat import fit_history
    from bitnet_jax.inference import encode_chat

    tok = default_model.tokenizer
    messages = [{"role": "system", "content": "s"}]
    for i in range(6):
        messages += [{"role": "user", "content": f"question {i} " * 8}, {"role": "assistant", "content": "a " * 20}]
    messages.append({"role": "user", "content": "last"})
    full = len(encode_chat(tok, messages))
    context = full - 40
    ids, dropped = fit_history(tok, messages, 30, context)
    assert dropped > 0 and len(ids) + 30 <= context and ids == encode_chat(tok, messages)
    assert messages[0]["role"] == "system" and messages[1]["role"] == "user" and messages[-1]["content"] == "last"
    with pytest.raises(bj.BitNetError, match="context of 10 tokens"):
        fit_history(tok, [{"role": "user", "content": "x " * 50}], 5, 10)


def test_format_chat_uses_the_tokenizers_special_tokens(default_model):
    from bitnet_jax.inference import encode_chat

    tok = default_model.tokenizer
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    ids = tok.encode(bj.format_chat(messages, tokenizer=tok))
    assert ids == encode_chat(tok, messages)
    assert ids[0] == tok.bos_id and ids.count(tok.eos_ids[0]) == 3  # BOS (the same id) + two turn ends


# --- train ---------------------------------------------------------------------------------------------------

def test_train_examples_listed_and_checked(capsys):
    assert main(["train", "--list-examples"]) == 0
    assert "ci-tiny" in capsys.readouterr().out
    assert main(["train", "--example", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--example 'nope'" in err and "available:" in err and "ci-tiny" in err
    assert main(["train"]) == 2


def test_train_says_resuming_and_already_complete(tmp_path, capsys):
    base = ["train", "--example", "ci-tiny", "--set", f"checkpoint.dir={tmp_path / 'run'}", "--set",
            "checkpoint.every=2", "--set", "logging.eval_every=2"]
    assert main([*base, "--set", "training.steps=2"]) == 0
    out = capsys.readouterr().out
    assert "resuming" not in out and '"final_step": 2' in out
    assert main([*base, "--set", "training.steps=2"]) == 0
    assert "already complete at step 2" in capsys.readouterr().out
    assert main([*base, "--set", "training.steps=1"]) == 0  # the checkpoint is further along than asked
    assert "already complete at step 2" in capsys.readouterr().out
    assert main([*base, "--set", "training.steps=4"]) == 0
    out = capsys.readouterr().out
    assert "resuming from step 2 of 4" in out and '"final_step": 4' in out


def test_set_reads_yaml_1_2_numbers(tmp_path, capsys):
    from bitnet_jax.config import load_config

    cfg = load_config(ROOT / "configs" / "train" / "ci-tiny.yaml", ["optimizer.lr=1e-3"])
    assert cfg.optimizer.lr == 1e-3
    assert main(["train", "--example", "ci-tiny", "--set", "training.quantize=yes"]) == 2
    err = capsys.readouterr().err
    assert "training.quantize=yes" in err and "ambiguous" in err
