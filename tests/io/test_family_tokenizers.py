"""Tokenizers and chat of the families: SentencePiece from GGUF metadata (against the sentencepiece library),
Falcon pre-tokenizer names, chat templates rendered with jinja2, end-of-turn stops."""

from __future__ import annotations

import io

import gguf
import pytest

from bitnet_jax import encode_chat, format_chat, load_tokenizer
from bitnet_jax.errors import TokenizerError
from bitnet_jax.inference import stop_token_ids

spm = pytest.importorskip("sentencepiece")

TEXT = """def add(a, b):
    return a + b  # the sum
Über naïve café — 😀 日本語 tab\tend
    four spaces  and two
BitNet b1.58 uses ternary weights {-1, 0, +1} with absmean scales.
"""


@pytest.fixture(scope="module")
def sp_model():
    """A small SentencePiece BPE model trained here (byte fallback, Llama 2's special ids)."""
    lines = [line for line in (TEXT * 3 + open(__file__).read()).splitlines() if line.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=420, model_type="bpe",
                                   byte_fallback=True, character_coverage=0.995, unk_id=0, bos_id=1, eos_id=2,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=3)
    return spm.SentencePieceProcessor(model_proto=out.getvalue()), out.getvalue()


def spm_gguf(sp, path, template=None):
    """A vocab-only GGUF as llama.cpp's converter writes a SentencePiece vocabulary."""
    w = gguf.GGUFWriter(path, "llama")
    n = sp.GetPieceSize()
    types = [gguf.TokenType.UNKNOWN if sp.IsUnknown(i) else gguf.TokenType.CONTROL if sp.IsControl(i)
             else gguf.TokenType.BYTE if sp.IsByte(i) else gguf.TokenType.NORMAL for i in range(n)]
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.IdToPiece(i) for i in range(n)])
    w.add_token_scores([sp.GetScore(i) for i in range(n)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if template:
        w.add_chat_template(template)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.close()
    return path


CASES = TEXT.splitlines() + ["", " leading", "  two leading", "trailing ", "xyzzy qwrtp ßß", "ünïcödé ∑∫√"]


def test_sentencepiece_from_gguf_matches_sentencepiece(sp_model, tmp_path):
    sp, _ = sp_model
    tok = load_tokenizer(spm_gguf(sp, tmp_path / "v.gguf"))
    for text in CASES:
        assert tok.encode(text) == sp.encode(text), text
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)), text
    assert tok.encode("hi", add_bos=True)[0] == 1 and tok.eos_ids == (2,)
    assert tok.encode("<s>hi") == [1] + sp.encode("hi")  # control tokens in text are special tokens


def test_sentencepiece_model_file_matches(sp_model, tmp_path):
    sp, proto = sp_model
    (tmp_path / "tokenizer.model").write_bytes(proto)
    tok = load_tokenizer(tmp_path / "tokenizer.model")
    assert all(tok.encode(t) == sp.encode(t) for t in CASES)


def test_sentencepiece_vocab_is_written_back_to_gguf(sp_model, tmp_path):
    """Our GGUF writer keeps a SentencePiece vocabulary (tokens, scores, types) as tokenizer model 'llama'."""
    from bitnet_jax.config import ModelConfig
    from bitnet_jax.io.checkpoint import random_checkpoint
    from bitnet_jax.io.gguf_write import write_gguf

    sp, _ = sp_model
    tok = load_tokenizer(spm_gguf(sp, tmp_path / "v.gguf", template="{{ bos_token }}{{ messages[0]['content'] }}"))
    cfg = ModelConfig.preset("tiny").replace(vocab_size=sp.GetPieceSize(), hidden_act="silu", sub_norms=False,
                                             tie_word_embeddings=False)
    path = write_gguf(cfg, random_checkpoint(cfg).tensors, tok, tmp_path / "m.gguf", "f32")
    back = load_tokenizer(path)
    assert all(back.encode(t) == sp.encode(t) for t in CASES)
    assert back.chat_template == tok.chat_template


def test_sentencepiece_metadata_errors_are_named(tmp_path):
    w = gguf.GGUFWriter(tmp_path / "v.gguf", "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "a"])
    w.add_token_scores([0.0])
    w.write_header_to_file(), w.write_kv_data_to_file(), w.close()
    with pytest.raises(TokenizerError, match="tokenizer.ggml.scores"):
        load_tokenizer(tmp_path / "v.gguf")


@pytest.mark.parametrize("pre", ["falcon3", "falcon_e", "llama-bpe"])
def test_falcon_pre_tokenizers_are_the_llama3_split(pre, tmp_path):
    from tokenizers import pre_tokenizers

    w = gguf.GGUFWriter(tmp_path / "v.gguf", "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(sorted(pre_tokenizers.ByteLevel.alphabet()) + ["\u0120\u0120", "<|im_end|>"])
    w.add_token_merges(["\u0120 \u0120"])
    w.add_token_types([1] * 257 + [3])
    w.write_header_to_file(), w.write_kv_data_to_file(), w.close()
    tok = load_tokenizer(tmp_path / "v.gguf")
    assert tok.decode(tok.encode("Hello, wörld 123")) == "Hello, wörld 123"
    assert tok.end_of_turn_ids() == (257,)  # <|im_end|> by its text


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class _Tok:
    def __init__(self, template=None):
        self.chat_template = template
        self.special_tokens = {"bos_token": "<s>", "eos_token": "</s>"}


def test_chat_template_is_rendered_with_jinja():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert format_chat(msgs, tokenizer=_Tok(CHATML)) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    bos = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"
    assert format_chat(msgs[1:], add_generation_prompt=False, tokenizer=_Tok(bos)) == "<s>[user]Hi</s>"
    assert format_chat(msgs[1:], tokenizer=_Tok()) == "<|begin_of_text|>User: Hi<|eot_id|>Assistant: "


def test_chat_template_errors_are_one_line():
    from bitnet_jax import GenerationError

    failing = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}"
    with pytest.raises(GenerationError, match="chat template: first message must be user"):
        format_chat([{"role": "system", "content": "x"}], tokenizer=_Tok(failing))
    with pytest.raises(GenerationError, match="chat template"):
        format_chat([{"role": "user", "content": "x"}], tokenizer=_Tok("{% for %}"))
    with pytest.raises(GenerationError, match="content"):
        format_chat([{"role": "user", "content": 3}], tokenizer=_Tok(CHATML))


def test_chat_template_from_a_directory_and_end_of_turn_stops(tmp_path):
    import json

    from bitnet_jax import DEFAULT_MODEL, from_pretrained, save_pretrained

    model = from_pretrained(DEFAULT_MODEL)
    model.tokenizer.chat_template = CHATML
    out = save_pretrained(model, tmp_path / "m")
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    loaded = from_pretrained(out)
    assert loaded.tokenizer.chat_template == CHATML
    ids = encode_chat(loaded.tokenizer, [{"role": "user", "content": "def f():"}])
    assert loaded.tokenizer.decode(ids).startswith("<|im_start|>user\ndef f():")
    assert set(loaded.config.eos_token_ids) <= set(stop_token_ids(loaded.tokenizer, loaded.config))
    model.tokenizer.chat_template = None


def test_special_ids_may_point_into_the_padded_token_list():
    """An export pads tokenizer.ggml.tokens with unused tokens up to the model's vocabulary; a BOS id there is
    a row of the model (llama.cpp reads it so), one past the list is refused."""
    from tokenizers import Tokenizer as HFTokenizer, models

    from bitnet_jax.errors import TokenizerError
    from bitnet_jax.io.tokenizer import tokenizer_from_gguf_metadata

    backend = HFTokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    padded = ["a", "b", "[UNK]"] + [f"<|unused_{i}|>" for i in range(3, 10)]
    meta = {"tokenizer.huggingface.json": backend.to_str(), "tokenizer.ggml.tokens": padded,
            "tokenizer.ggml.bos_token_id": 9}
    assert tokenizer_from_gguf_metadata(meta, "m.gguf").bos_id == 9
    with pytest.raises(TokenizerError, match=r"m.gguf: tokenizer.ggml.bos_token_id = 10 is not a token id in \[0, 10\)"):
        tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.bos_token_id": 10}, "m.gguf")
    with pytest.raises(TokenizerError, match=r"in \[0, 3\)"):  # without the list, the tokenizer's own size
        tokenizer_from_gguf_metadata({**meta, "tokenizer.ggml.tokens": None}, "m.gguf")
