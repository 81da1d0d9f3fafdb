"""The BitNet chat format (microsoft/BitNet) and the chat CLI."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import pytest

from bitnet_jax import BitNetError, encode_chat, format_chat, load_tokenizer
from bitnet_jax.inference import stop_token_ids
from bitnet_jax.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "v.gguf"
    with gzip.open(DATA / "ggml-vocab-llama-bpe.gguf.gz") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return load_tokenizer(path)


def test_format_matches_the_bitnet_template():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    assert format_chat(msgs) == (
        "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: Hello.<|eot_id|>"
        "User: Bye<|eot_id|>Assistant: "
    )
    assert format_chat(msgs[:2], add_generation_prompt=False).endswith("User: Hi<|eot_id|>")
    with pytest.raises(BitNetError, match=r"messages\[0\]\.role"):
        format_chat([{"role": "robot", "content": "x"}])


def test_encoding_and_stop_tokens(tok):
    ids = encode_chat(tok, [{"role": "user", "content": "Hi"}])
    assert ids[0] == 128000 and ids.count(128000) == 1 and ids.count(128009) == 1
    assert tok.decode(ids) == "<|begin_of_text|>User: Hi<|eot_id|>Assistant: "
    assert set(stop_token_ids(tok)) == {128009, 128001}


def test_chat_cli_single_prompt(tmp_path, capsys):
    from conftest import random_model

    from bitnet_jax import save_pretrained
    from bitnet_jax.io.tokenizer import Tokenizer

    # a tiny model whose vocabulary holds the chat specials: byte-level BPE trained on a few lines
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

    hf = HFTok(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    hf.train_from_iterator(["User: hello there", "Assistant: hi"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = random_model("tiny", bos_token_id=0, eos_token_id=1)
    model = dataclasses.replace(model, tokenizer=Tokenizer(hf, 0, (1,)))
    save_pretrained(model, tmp_path / "m", format="hf")
    assert main(["chat", "--model", str(tmp_path / "m"), "--prompt", "hello", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    # the reply is the greedy continuation of the chat prompt, cut at the first stop token
    from bitnet_jax import generate

    stops = stop_token_ids(model.tokenizer, model.config)
    ids = generate(model, [encode_chat(model.tokenizer, [{"role": "user", "content": "hello"}])],
                   max_new_tokens=4, stop_tokens=stops)[0].tolist()
    reply = ids[: next((i for i, t in enumerate(ids) if t in stops), len(ids))]
    assert reply, "the model stopped at once; the test needs at least one generated token"
    assert out == model.tokenizer.decode(reply) + "\n"
