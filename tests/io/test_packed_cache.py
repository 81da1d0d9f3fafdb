"""The packed-layout cache of ``from_pretrained``: a second load reads the cache and gives the same model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import bitnet_jax as bj
from bitnet_jax.config import ModelConfig
from bitnet_jax.io import model_from_checkpoint, random_checkpoint, save_pretrained
from bitnet_jax._memory import advise_random, drop_file_cache
from bitnet_jax.io.loading import PACKED_CACHE_ENV, packed_cache_dir
from bitnet_jax.model.head import SCREEN_NAMES, row_read_tables
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


def test_row_read_tables():
    table = np.zeros((2, 2), np.float32)
    assert row_read_tables({"embed_tokens": table}, True) == ()  # the float head reads the whole table
    assert row_read_tables({"embed_tokens": table, SCREEN_NAMES[0]: table}, True) == ("embed_tokens",)
    assert row_read_tables({"embed_tokens": table, "lm_head": table}, False) == ("embed_tokens",)
    assert row_read_tables({"embed_tokens": table, "lm_head": table, SCREEN_NAMES[0]: table}, False) == (
        "embed_tokens", "lm_head")


def test_tables_read_by_row_leave_the_page_cache_and_map_for_random_reads(tmp_path, monkeypatch):
    monkeypatch.setenv(PACKED_CACHE_ENV, str(tmp_path / "cache"))
    dropped, advised = [], []
    monkeypatch.setattr("bitnet_jax.io.loading.drop_file_cache", lambda p: dropped.append(Path(p).name))
    monkeypatch.setattr("bitnet_jax.io.loading.advise_random", lambda v: advised.append(v.shape))
    path = _write_gguf(tmp_path / "m.gguf")
    first = bj.from_pretrained(path, packed_cache=True, head_screen=True, kernel="cpu")
    names = [p[0].key for p, _ in jax.tree_util.tree_flatten_with_path(first.params)[0]]
    table = names.index("embed_tokens")  # tied: the screened head reads rows of the embedding table
    assert dropped == [f"{table}.npy"]
    second = bj.from_pretrained(path, packed_cache=True, head_screen=True, kernel="cpu")
    assert advised == [first.params["embed_tokens"].shape]
    _same(first, second)
    dropped.clear(), advised.clear()
    bj.from_pretrained(path, packed_cache=True, head_screen=False, kernel="cpu")  # the float head reads it all
    bj.from_pretrained(path, packed_cache=True, head_screen=False, kernel="cpu")
    assert dropped == [] and advised == []


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, current = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if ":" not in parts[0] or not line[0].isupper():  # a mapping's header line
                current = parts[5] if len(parts) > 5 else None
            elif parts[0] == "Rss:" and current == str(path):
                total += int(parts[1])
    return total


def _on_tmpfs(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        mounts = [line.split() for line in f]
    best = max((m for m in mounts if str(path).startswith(m[1].rstrip("/") + "/")), key=lambda m: len(m[1]))
    return best[2] == "tmpfs"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_dropped_table_maps_only_the_pages_read(tmp_path):
    if _on_tmpfs(tmp_path):
        pytest.skip("tmpfs holds a file's pages as its storage: there is no page cache to drop")
    path = tmp_path / "table.npy"
    np.save(path, np.ones((4096, 4096), np.uint8))  # 16 MiB, just written: in the page cache
    drop_file_cache(path)
    table = np.load(path, mmap_mode="c")
    advise_random(table)
    rows = (100, 1100, 2100, 3100)
    assert sum(int(table[r, 0]) for r in rows) == len(rows)
    # each read maps its own page (with a 2 MB folio behind it, each would map 2 MB: 8 MB in all)
    assert _mapped_kib(path) <= len(rows) * 64, _mapped_kib(path)
