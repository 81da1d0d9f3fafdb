"""The Llama 3 tokenizer built from GGUF metadata vs an independent one (llama-models' tiktoken file)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from bitnet_jax import CheckpointError, load_tokenizer
from bitnet_jax.inference.streaming import IncrementalDecoder

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = [
    "Hello world", " leading space", "trailing space ", "   runs   of    spaces", "\n\n\nnewlines\n \n\t\ttabs",
    "digits 1 12 123 1234 12345 3.14159 1,000,000", "I'm you're they've we'll she'd it's DON'T",
    "def f(x):\n    return x ** 2  # code\n", "for (int i = 0; i < n; ++i) { a[i] = b[i]; }",
    "Emoji 🤗🚀👨‍👩‍👧 and ✅", "Ünïcödé: naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어, العربية",
    "mixed\r\nline endings\rhere", "''''```\"\"\"...!!!???", "URL https://example.com/a?b=c&d=e", "  \n  ",
    "kanji漢字and latin", "tab\there", "x" * 300,
]


@pytest.fixture(scope="module")
def vocab_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "ggml-vocab-llama-bpe.gguf"
    with gzip.open(DATA / "ggml-vocab-llama-bpe.gguf.gz") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


@pytest.fixture(scope="module")
def tok(vocab_gguf):
    return load_tokenizer(vocab_gguf)


@pytest.fixture(scope="module")
def reference():
    llama3 = pytest.importorskip("llama_models.llama3.tokenizer")
    return llama3.Tokenizer.get_instance()


def test_llama_cpp_tokenizer_cases(tok):
    cases = json.loads((DATA / "llama_bpe_cases.json").read_text())
    assert len(cases) == 44
    for case in cases:
        assert tok.encode(case["text"]) == case["ids"], case["text"]


def test_matches_independent_llama3_tokenizer(tok, reference):
    for text in CORPUS:
        ids = tok.encode(text)
        assert ids == reference.encode(text, bos=False, eos=False), text
        assert tok.decode(ids) == text


def test_bos_and_special_tokens(tok):
    assert tok.encode("hi") == tok.encode("hi", add_bos=False)
    assert tok.encode("hi", add_bos=True) == [128000, *tok.encode("hi")]
    assert tok.encode("<|begin_of_text|>User: x<|eot_id|>")[0] == 128000
    assert tok.encode("a<|eot_id|>")[-1] == 128009
    assert tok.bos_id == 128000 and 128001 in tok.eos_ids


def test_tokenizer_json_round_trip(tok, tmp_path, reference):
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.bos_id == 128000 and set(again.eos_ids) == {128001, 128009}
    for text in CORPUS[:6]:
        assert again.encode(text) == reference.encode(text, bos=False, eos=False)


def test_incremental_decoding_never_splits_characters(tok):
    text = "ab 🤗🚀 日本語 ✅ naïve"
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(i) for i in tok.encode(text)] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_bad_tokenizer_metadata_is_named(tmp_path):
    import gguf

    path = tmp_path / "v.gguf"
    w = gguf.GGUFWriter(path, "bitnet")
    w.add_tokenizer_model("bert")
    w.add_token_list(["a"])
    w.write_header_to_file(), w.write_kv_data_to_file(), w.close()
    with pytest.raises(CheckpointError, match="tokenizer.ggml.model"):
        load_tokenizer(path)
