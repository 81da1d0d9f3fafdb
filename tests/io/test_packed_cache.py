"""The packed-layout cache of ``from_pretrained``: a second load reads the cache and gives the same model."""

from __future__ import annotations

import os

import jax
import numpy as np

import bitnet_jax as bj
from bitnet_jax.config import ModelConfig
from bitnet_jax.io import model_from_checkpoint, random_checkpoint, save_pretrained
from bitnet_jax.io.loading import PACKED_CACHE_ENV, packed_cache_dir
from pallas_kernels import get_kernel


def _write_gguf(path):
    cfg = ModelConfig.preset("tiny")
    ckpt = random_checkpoint(cfg, seed=3)
    # a bfloat16-valued embedding: the loader keeps it as a bfloat16 table (exactly)
    emb = ckpt.tensors["model.embed_tokens.weight"]
    ckpt.tensors["model.embed_tokens.weight"] = np.asarray(emb).astype(jax.numpy.bfloat16).astype(np.float32)
    return save_pretrained(model_from_checkpoint(ckpt, get_kernel("xla"), to_device=False), path, "gguf", overwrite=True)


def _same(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)
    assert jax.tree_util.tree_structure(a.params) == jax.tree_util.tree_structure(b.params)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(PACKED_CACHE_ENV, str(tmp_path / "cache"))
    path = _write_gguf(tmp_path / "m.gguf")
    first = bj.from_pretrained(path, packed_cache=True)
    assert first.params["embed_tokens"].dtype == jax.numpy.bfloat16
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1
    second = bj.from_pretrained(path, packed_cache=True)
    _same(first, second)
    assert second.config == first.config
    prompt = [[1, 2, 3, 4]]
    np.testing.assert_array_equal(bj.generate(first, prompt, max_new_tokens=6, stop_tokens=())[0],
                                  bj.generate(second, prompt, max_new_tokens=6, stop_tokens=())[0])
    # a changed file gets a new entry (the key holds size and mtime)
    _write_gguf(path)
    os.utime(path, ns=(1, 1))
    bj.from_pretrained(path, packed_cache=True)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    # other load options: another entry, never the wrong layout
    bj.from_pretrained(path, scan_layers=True, packed_cache=True)
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_small_checkpoints_are_not_cached_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv(PACKED_CACHE_ENV, str(tmp_path / "cache"))
    path = _write_gguf(tmp_path / "m.gguf")
    bj.from_pretrained(path)
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr("bitnet_jax.io.loading.PACKED_CACHE_MIN_BYTES", 1)  # every checkpoint counts as large
    bj.from_pretrained(path)
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_cache_can_be_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv(PACKED_CACHE_ENV, "0")
    assert packed_cache_dir() is None
    path = _write_gguf(tmp_path / "m.gguf")
    bj.from_pretrained(path, packed_cache=True)
    monkeypatch.setenv(PACKED_CACHE_ENV, str(tmp_path / "cache"))
    bj.from_pretrained(path, packed_cache=False)
    assert not (tmp_path / "cache").exists()


def test_corrupt_entry_falls_back_to_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(PACKED_CACHE_ENV, str(tmp_path / "cache"))
    path = _write_gguf(tmp_path / "m.gguf")
    first = bj.from_pretrained(path, packed_cache=True)
    (entry,) = list((tmp_path / "cache").iterdir())
    (entry / "model.pkl").write_bytes(b"not a pickle")
    _same(first, bj.from_pretrained(path, packed_cache=True))
