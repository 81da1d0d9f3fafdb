"""The data pipeline against definitions written here: sources (JSONL, Parquet, HF datasets) give the
same documents, packing keeps documents whole (or cuts long ones with every target once), the
chat mask covers exactly the assistant replies, the order is a pure function of the seed, and an
interrupted preparation leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitnet_jax.config import config_from_dict
from bitnet_jax.errors import ConfigError
from bitnet_jax.io.tokenizer import Tokenizer
from bitnet_jax.train.data import pack_documents, prepare_dataset, train_tokenizer
from bitnet_jax.config.run import TokenizerConfig

RECORDS = [
    {"text": "def add(a, b):\n    return a + b\n"},
    {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "It is 4."}]},
    {"messages": [{"role": "system", "content": "Be short."}, {"role": "user", "content": "Name a fruit."},
                  {"role": "assistant", "content": "Apple."}, {"role": "user", "content": "Another?"},
                  {"role": "assistant", "content": "Pear."}]},
    {"text": "x = [i * i for i in range(10)]\nprint(sum(x))\n" * 3},
] * 6


@pytest.fixture(scope="module")
def tok():
    hf = train_tokenizer([json.dumps(r) for r in RECORDS], TokenizerConfig(vocab_size=300, special_token="<|endoftext|>"))
    hf.add_special_tokens(["<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"])
    return Tokenizer(hf, hf.token_to_id("<|begin_of_text|>"), (hf.token_to_id("<|end_of_text|>"),))


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _cfg(paths, tmp_path, **data):
    return config_from_dict({"data": {"paths": [str(p) for p in paths], "val_fraction": 0.0, "seq_len": 32, **data},
                             "checkpoint": {"dir": str(tmp_path / "run")}})


def _prepared(tmp_path, name, tok, paths, **data):
    cfg = _cfg(paths, tmp_path, **data)
    return prepare_dataset(cfg.data, cfg.tokenizer, tmp_path / name, tok)


def _reference_ids(tok, record):
    """Token ids and reply mask of one record, from the chat format's definition (facts sheet section 5)."""
    bos, eot, eos = tok.bos_id, tok.token_to_id("<|eot_id|>"), tok.eos_ids[0]
    enc = tok.backend.encode
    if "text" in record:
        ids = [bos, *enc(record["text"], add_special_tokens=False).ids, eos]
        return ids, [True] * len(ids)
    ids, mask = [bos], [False]
    names = {"system": "System: ", "user": "User: "}
    for m in record["messages"]:
        if m["role"] == "assistant":
            head = enc("Assistant: ", add_special_tokens=False).ids
            body = enc(m["content"], add_special_tokens=False).ids + [eot]
            ids += head + body
            mask += [False] * len(head) + [True] * len(body)
        else:
            part = enc(names[m["role"]] + m["content"], add_special_tokens=False).ids + [eot]
            ids += part
            mask += [False] * len(part)
    return ids, mask


def test_jsonl_tokens_and_mask_follow_the_chat_format(tmp_path, tok):
    ds = _prepared(tmp_path, "run", tok, [_jsonl(tmp_path / "d.jsonl", RECORDS)])
    ids, mask = [], []
    for r in RECORDS:
        i, m = _reference_ids(tok, r)
        ids += i
        mask += m
    np.testing.assert_array_equal(np.asarray(ds.train.tokens()), ids)
    np.testing.assert_array_equal(np.asarray(ds.train.mask()), mask)
    offsets = np.cumsum([0] + [len(_reference_ids(tok, r)[0]) for r in RECORDS])
    np.testing.assert_array_equal(ds.train.doc_offsets(), offsets)


def test_parquet_and_hf_datasets_give_the_same_tokens(tmp_path, tok):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": r.get("text"), "messages": r.get("messages")} for r in RECORDS]
    jsonl = _prepared(tmp_path, "a", tok, [_jsonl(tmp_path / "d.jsonl", RECORDS)])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    parquet = _prepared(tmp_path, "b", tok, [tmp_path / "d.parquet"])
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    saved = _prepared(tmp_path, "c", tok, [tmp_path / "saved"], format="hf")
    files = _prepared(tmp_path, "d", tok, [tmp_path / "d.jsonl"], format="hf", streaming=True)
    for other in (parquet, saved, files):
        np.testing.assert_array_equal(np.asarray(other.train.tokens()), np.asarray(jsonl.train.tokens()))
        np.testing.assert_array_equal(np.asarray(other.train.mask()), np.asarray(jsonl.train.mask()))


def test_hf_dataset_id_not_cached_offline_is_one_line(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match=r"data.paths\[0\]: cannot load dataset 'nobody/no-such-set' \(offline"):
        _prepared(tmp_path, "run", tok, ["nobody/no-such-set"], format="hf")


def test_packing_keeps_documents_whole_and_cuts_long_ones_once():
    cap = 8
    lengths = [3, 4, 2, 20, 1, 5]
    offsets = np.cumsum([0, *lengths])
    first, starts, lens = pack_documents(offsets, cap)
    rows = [list(zip(starts[first[r]:first[r + 1]], lens[first[r]:first[r + 1]])) for r in range(len(first) - 1)]
    assert all(sum(n for _, n in row) <= cap for row in rows)
    # short documents stay whole; the 1-token document (no target) is dropped
    assert (offsets[0], 3) in rows[0] and (offsets[1], 4) in rows[0]
    assert all(s != offsets[4] for s, _ in zip(starts, lens))
    # the 20-token document: pieces of <= cap tokens overlapping by one, so each of its 19 targets once
    pieces = [(s, n) for s, n in zip(starts, lens) if offsets[3] <= s < offsets[4]]
    targets = [t for s, n in pieces for t in range(s + 1, s + n)]
    assert sorted(targets) == list(range(offsets[3] + 1, offsets[4]))


def test_rows_isolate_documents(tmp_path, tok):
    ds = _prepared(tmp_path, "run", tok, [_jsonl(tmp_path / "d.jsonl", RECORDS)], seq_len=64)
    toks, mask = np.asarray(ds.train.tokens()), np.asarray(ds.train.mask())
    offsets = ds.train.doc_offsets()
    b = ds.train.rows(range(ds.train.num_rows))
    for r in range(b["inputs"].shape[0]):
        for seg in set(b["segments"][r].tolist()) - {0}:
            at = np.flatnonzero(b["segments"][r] == seg)
            np.testing.assert_array_equal(b["positions"][r, at], np.arange(at.size))  # positions restart
            # the segment is a run of one document's tokens (a piece of a long one), its targets inside it
            doc_tokens = b["inputs"][r, at]
            starts = [o for d0, d1 in zip(offsets[:-1], offsets[1:]) for o in range(d0, d1 - at.size + 1)
                      if np.array_equal(toks[o:o + at.size], doc_tokens)]
            assert starts, "a segment is not a run of one document's tokens"
            last = at[-1]
            if last + 1 < b["inputs"].shape[1] and b["segments"][r, last + 1] != seg:
                assert b["weights"][r, last] == 0  # no target across a document boundary
            o = starts[0]
            np.testing.assert_array_equal(b["weights"][r, at[:-1]], mask[o + 1:o + at.size])
    assert b["weights"][b["segments"] == 0].sum() == 0  # padding is never trained


def test_order_is_a_function_of_the_seed_and_validation_is_held_out(tmp_path, tok):
    data = _jsonl(tmp_path / "d.jsonl", RECORDS)
    a = _prepared(tmp_path, "a", tok, [data], val_fraction=0.3, seed=1)
    b = _prepared(tmp_path, "b", tok, [data], val_fraction=0.3, seed=1)
    c = _prepared(tmp_path, "c", tok, [data], val_fraction=0.3, seed=2)
    for i in (0, 5, 17):  # well past one epoch too
        for k in ("inputs", "weights"):
            np.testing.assert_array_equal(a.train_batch(i, 2)[k], b.train_batch(i, 2)[k])
    assert any(not np.array_equal(a.train_batch(i, 2)["inputs"], c.train_batch(i, 2)["inputs"]) for i in range(4))
    manifest = json.loads((tmp_path / "a" / "data.json").read_text())
    n_val, n_train = manifest["splits"]["val"]["documents"], manifest["splits"]["train"]["documents"]
    assert n_val > 0 and n_train > 0 and n_val + n_train == len(RECORDS)
    assert a.val is not None and sum(v["weights"].sum() for v in a.val_batches(2, 100)) > 0


def test_killed_preparation_leaves_no_temporaries(tmp_path, tok):
    data = _jsonl(tmp_path / "d.jsonl", RECORDS)
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".train.tokens.x1.tmp", run / ".val.mask.x2.tmp", run / ".data.json.x3.tmp"]
    for s in stale:
        s.write_bytes(b"partial")
    (run / "train.tokens").write_bytes(b"\0\1")  # a split file from a preparation that never finished
    unrelated = run / ".mine.tmp"
    unrelated.write_text("keep")
    ds = _prepared(tmp_path, "run", tok, [data])
    assert not any(s.exists() for s in stale) and unrelated.exists()
    np.testing.assert_array_equal(np.asarray(ds.train.tokens())[:4], _reference_ids(tok, RECORDS[0])[0][:4])


@pytest.mark.parametrize("line, message", [
    ("{not json", r"d.jsonl:2: invalid JSON"),
    ('{"body": "x"}', r"d.jsonl:2: the record has no string field 'text'"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', r"d.jsonl:2: messages\[0\] must be"),
])
def test_bad_records_are_named(tmp_path, tok, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=message):
        _prepared(tmp_path, "run", tok, [path])
