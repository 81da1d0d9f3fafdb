"""Chat fine-tuning of the bundled default model on the shipped JSONL: the loss is the mean over assistant
reply tokens (checked against a reference computed from the definition, one conversation at a time),
a token's logits ignore the other documents of its packed row, the held-out loss falls, replies change,
every export scores like the trained model, and a resumed fine-tune continues bit for bit."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitnet_jax as bj
from bitnet_jax.config import load_config
from bitnet_jax.model import Form, Transformer
from bitnet_jax.train.data import prepare_dataset
from bitnet_jax.train.init import load_init
from bitnet_jax.train.loop import train
from bitnet_jax.train.step import batch_nll, make_module
from tests.train_helpers import ROOT

EXAMPLE = ROOT / "configs" / "train" / "finetune-default-chat.yaml"
DATA = ROOT / "configs" / "train" / "data" / "python-builtins-chat.jsonl"


def example_config(run_dir, *overrides):
    """The worked example shrunk to seconds, writing into ``run_dir``."""
    return load_config(EXAMPLE, [f"checkpoint.dir={run_dir}", "logging.progress=false", "logging.samples=[]",
                                 "export.dir=null", *overrides])


def _conversation_reference(tok, messages):
    """Token ids of a conversation and the indices of its reply tokens, from the chat format's definition:
    BOS, then ``Role: content`` + end-of-turn per message, a reply tokenized apart from ``Assistant: ``.
    The default model's tokenizer has no chat specials: its ``<|endoftext|>`` (id 0) is BOS and end of turn."""
    sep = tok.token_to_id("<|endoftext|>")
    enc = lambda text: tok.backend.encode(text, add_special_tokens=False).ids  # noqa: E731
    ids, reply = [sep], []
    for m in messages:
        if m["role"] == "assistant":
            ids += enc("Assistant: ")
            body = enc(m["content"]) + [sep]
            reply += list(range(len(ids), len(ids) + len(body)))
            ids += body
        else:
            ids += enc({"system": "System: ", "user": "User: "}[m["role"]] + m["content"]) + [sep]
    return ids, reply


@pytest.fixture(scope="module")
def start():
    cfg = example_config("unused")
    return load_init(cfg.init)


def test_chat_loss_is_the_mean_over_reply_tokens(tmp_path, start):
    cfg = example_config(tmp_path)
    ds = prepare_dataset(cfg.data, cfg.tokenizer, tmp_path, start.tokenizer)
    batch = ds.train_batch(0, 4)
    module = make_module(start.config)
    total, count = jax.device_get(batch_nll(module, start.params, {k: jnp.asarray(v) for k, v in batch.items()}))

    # the reference: find each conversation of the batch in the JSONL, run it alone, average -log p over
    # its reply tokens (numpy log-softmax of the logits of the same training-form model)
    convs = [json.loads(line)["messages"] for line in DATA.read_text().splitlines()]
    encoded = [_conversation_reference(start.tokenizer, m) for m in convs]
    apply = jax.jit(lambda p, t: module.apply({"params": p}, t)[0])
    ref_total, ref_count, found = 0.0, 0, 0
    for r in range(batch["inputs"].shape[0]):
        row = np.concatenate([batch["inputs"][r], batch["targets"][r, -1:]])
        seg = np.concatenate([batch["segments"][r], batch["segments"][r, -1:]])
        for s in sorted(set(seg.tolist()) - {0}):
            piece = row[seg == s].tolist()
            matches = [e for e in encoded if e[0] == piece]
            assert matches, "a packed document is not one conversation of the JSONL"
            ids, reply = matches[0]
            # padded to the row length after the conversation (causal: no effect on its logits), so one
            # program serves every conversation
            width = batch["inputs"].shape[1]
            padded = np.zeros((1, width), np.int32)
            padded[0, : len(ids) - 1] = ids[:-1]
            logits = np.asarray(apply(start.params, jnp.asarray(padded)), np.float64)[0, : len(ids) - 1]
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            ref_total += -sum(logp[i - 1, ids[i]] for i in reply)
            ref_count += len(reply)
            found += 1
    assert found >= 4 and count == ref_count
    np.testing.assert_allclose(total / count, ref_total / ref_count, rtol=2e-4)

    # and the train step reports exactly that loss for its first batch (before any update)
    run = train(example_config(tmp_path / "run", "training.steps=1", "training.batch_size=4",
                               "logging.every=1", "logging.eval_before=false"), quiet=True)
    np.testing.assert_allclose(run["loss"], ref_total / ref_count, rtol=2e-4)


def test_a_token_ignores_the_other_documents_of_its_row(start):
    module = Transformer(start.config, Form())
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 4096, 20), rng.integers(1, 4096, 30)
    b2 = rng.integers(1, 4096, 30)

    def row(first, second):
        tokens = np.concatenate([first, second])[None]
        seg = np.concatenate([np.full(first.size, 1), np.full(second.size, 2)])[None]
        pos = np.concatenate([np.arange(first.size), np.arange(second.size)])[None]
        return module.apply({"params": start.params}, jnp.asarray(tokens), jnp.asarray(pos),
                            segment_ids=jnp.asarray(seg))[0][0]

    ab, ab2, ba = row(a, b), row(a, b2), row(b, a)
    np.testing.assert_array_equal(np.asarray(ab[:20]), np.asarray(ab2[:20]))  # a unchanged when b changes
    np.testing.assert_array_equal(np.asarray(ba[30:]), np.asarray(row(b2, a)[30:]))  # ... and when b comes first
    assert not np.allclose(np.asarray(ab[20:]), np.asarray(ab2[20:]), atol=1e-3)  # the test can fail
    # as if alone in its row: compared in full precision, where no int8 rounding tie can flip between
    # programs of different shapes (a flip moves one token's logits by ~1e-2 and spreads to later ones)
    full = Transformer(start.config, Form(quantize=False))
    seg = np.concatenate([np.full(30, 1), np.full(20, 2)])[None]
    pos = np.concatenate([np.arange(30), np.arange(20)])[None]
    packed = full.apply({"params": start.params}, jnp.asarray(np.concatenate([b, a])[None]), jnp.asarray(pos),
                        segment_ids=jnp.asarray(seg))[0][0]
    alone = full.apply({"params": start.params}, jnp.asarray(a[None]))[0][0]
    np.testing.assert_allclose(np.asarray(packed[30:]), np.asarray(alone), atol=2e-4)


def test_worked_example_held_out_loss_falls_and_exports_agree(tmp_path):
    export = tmp_path / "export"
    cfg = example_config(tmp_path / "run", "training.steps=16", "logging.eval_every=16", "logging.every=8",
                         "logging.samples=['What does len() do in Python?']", "logging.sample_tokens=12",
                         "optimizer.lr=3.0e-3", f"export.dir={export}", "export.formats=[hf, hf-latent, gguf-i2_s]")
    final = train(cfg, quiet=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    before = records[0]
    assert before["step"] == 0 and "val_loss" in before and final["before_val_loss"] == before["val_loss"]
    assert final["val_loss"] < before["val_loss"] - 1.0, (before["val_loss"], final["val_loss"])
    assert final["samples"][0]["reply"] != before["samples"][0]["reply"]
    exports = [r["export"] for r in records if "export" in r][0]
    assert set(exports) == {"hf", "hf-latent", "gguf-i2_s"}
    for fmt, e in exports.items():  # each export, loaded back packed, scores what the training form did
        assert abs(e["val_loss"] - final["val_loss"]) < 0.02, (fmt, e, final["val_loss"])
    model = bj.from_pretrained(export / "hf")
    assert model.tokenizer is not None and model.config.vocab_size == 4096


@pytest.mark.slow  # the default run resumes the same train loop bit for bit (tests/train/test_train_loop.py)
def test_resumed_fine_tune_is_bit_identical(tmp_path):
    from tests.train.test_train_loop import _assert_identical, _params

    sets = ["training.steps=4", "checkpoint.every=2", "logging.eval_every=4"]
    train(example_config(tmp_path / "straight", *sets), quiet=True)
    train(example_config(tmp_path / "resumed", *sets), max_steps=2, quiet=True)
    train(example_config(tmp_path / "resumed", *sets), quiet=True)
    _assert_identical(_params(tmp_path / "resumed", 4), _params(tmp_path / "straight", 4))
