"""Round trips that keep what the model is (issue 19): the bundled model through GGUF and back keeps its
tokenizer, BOS/EOS/EOT and greedy tokens; the embedding type is the user's; TQ refusals say why and what
to use instead; exported files get ordinary permissions."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import bitnet_jax as bj
from bitnet_jax.cli import main
from bitnet_jax.io._gguf_file import open_gguf

PROMPTS = ["def fibonacci(n):", "import os\n", "class Stack:\n    def push(self, x):"]
TEXT = "for i in range(10):\n    print(i, 'héllo')  # ünïcode\n<|endoftext|>x"


@pytest.fixture(scope="module")
def source():
    return bj.from_pretrained(bj.DEFAULT_MODEL)


@pytest.fixture(scope="module")
def reference(source):
    return [bj.generate(source, [p], max_new_tokens=40)[0].tolist() for p in PROMPTS]


def _greedy(model):
    return [bj.generate(model, [p], max_new_tokens=40)[0].tolist() for p in PROMPTS]


@pytest.mark.parametrize("quant", ["i2_s", "f16", "f32"])
def test_gguf_keeps_tokenizer_and_greedy_tokens(source, reference, tmp_path, quant):
    path = bj.save_pretrained(source, tmp_path / "m.gguf", format="gguf", quant=quant)
    meta = open_gguf(path).metadata
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert json.loads(meta["tokenizer.huggingface.json"])["model"]["type"] == "BPE"
    assert meta["tokenizer.ggml.bos_token_id"] == source.tokenizer.bos_id == 0
    assert meta["tokenizer.ggml.eos_token_id"] == source.tokenizer.eos_ids[0]
    assert "tokenizer.ggml.eot_token_id" in meta
    model = bj.from_pretrained(path)
    assert model.tokenizer.encode(TEXT) == source.tokenizer.encode(TEXT)
    assert model.tokenizer.bos_id == source.tokenizer.bos_id and model.tokenizer.eos_ids == source.tokenizer.eos_ids
    assert _greedy(model) == reference  # token by token
    back = bj.save_pretrained(model, tmp_path / "back", format="hf")  # and back: the tokenizer stays
    assert (back / "tokenizer.json").is_file()
    again = bj.from_pretrained(back)
    assert again.tokenizer.encode(TEXT) == source.tokenizer.encode(TEXT)
    assert _greedy(again) == reference


def test_convert_then_generate_text(source, tmp_path, capsys):
    gguf_path = tmp_path / "m.gguf"
    assert main(["convert", str(bj.DEFAULT_MODEL), str(gguf_path)]) == 0
    capsys.readouterr()
    outputs = []
    for model in (str(bj.DEFAULT_MODEL), str(gguf_path)):
        assert main(["generate", "--model", model, "def f(x):", "--max-new-tokens", "32"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("def f(x):")
    hf_back = tmp_path / "hf"
    assert main(["convert", str(gguf_path), str(hf_back)]) == 0
    assert main(["generate", "--model", str(hf_back), "def f(x):", "--max-new-tokens", "32"]) == 0
    assert capsys.readouterr().out.endswith(outputs[0])


def _embedding_type(path):
    return open_gguf(path).tensors["token_embd.weight"].type_name


@pytest.mark.parametrize("embed_type, gguf_type, rtol", [("auto", "F32", 0), ("f32", "F32", 0),
                                                        ("f16", "F16", 2 ** -11), ("bf16", "BF16", 2 ** -8)])
def test_embed_type(source, tmp_path, embed_type, gguf_type, rtol):
    path = bj.save_pretrained(source, tmp_path / "m.gguf", format="gguf", embed_type=embed_type)
    assert _embedding_type(path) == gguf_type
    ours = np.asarray(bj.read_checkpoint(path).tensors["model.embed_tokens.weight"], np.float32)
    theirs = np.asarray(bj.read_checkpoint(bj.DEFAULT_MODEL).tensors["model.embed_tokens.weight"], np.float32)
    if rtol == 0:
        np.testing.assert_array_equal(ours, theirs)
    else:
        assert not np.array_equal(ours, theirs)  # rounded ...
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=1e-6)  # ... to the type's precision


def test_embed_type_flag_and_bad_value(tmp_path, capsys):
    assert main(["convert", str(bj.DEFAULT_MODEL), str(tmp_path / "m.gguf"), "--embed-type", "f16"]) == 0
    assert _embedding_type(tmp_path / "m.gguf") == "F16"
    with pytest.raises(bj.CheckpointError, match="embed_type"):
        bj.save_pretrained(bj.from_pretrained(bj.DEFAULT_MODEL), tmp_path / "d", format="hf", embed_type="f16")


@pytest.mark.parametrize("quant", ["tq1_0", "tq2_0"])
def test_tq_refuses_short_rows_with_reason_and_alternative(source, tmp_path, quant):
    with pytest.raises(bj.CheckpointError) as e:
        bj.save_pretrained(source, tmp_path / "m.gguf", format="gguf", quant=quant)
    message = str(e.value)
    assert "rows of 192 weights" in message and "256-weight blocks" in message and "--quant i2_s" in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_any_tokenizers_model_round_trips(source, tmp_path):
    """A tokenizer that is neither byte-level nor SentencePiece BPE (here WordLevel) still comes back."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from bitnet_jax.io.tokenizer import Tokenizer

    words = ["<unk>", "<s>", "</s>", "def", "f", "(", ")", ":", "x", "return"]
    backend = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    model = bj.BitNetModel(source.config.replace(bos_token_id=1, eos_token_id=2), source.params,
                           Tokenizer(backend, bos_id=1, eos_ids=(2,)), form=source.form)
    path = bj.save_pretrained(model, tmp_path / "w.gguf", format="gguf")
    back = bj.from_pretrained(path)
    assert back.tokenizer.encode("def f ( x ) : return x") == [3, 4, 5, 8, 6, 7, 9, 8]
    assert back.tokenizer.encode("def g(x):") == model.tokenizer.encode("def g(x):")
    assert back.tokenizer.bos_id == 1 and back.tokenizer.eos_ids == (2,)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_exports_get_ordinary_permissions(source, tmp_path, mask):
    old = os.umask(mask)
    try:
        out = bj.save_pretrained(source, tmp_path / "hf", format="hf")
        gguf_path = bj.save_pretrained(source, tmp_path / "m.gguf", format="gguf")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for f in [*out.iterdir(), gguf_path]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
