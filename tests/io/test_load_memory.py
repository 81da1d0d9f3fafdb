"""Loading keeps memory near the model's size: mapped file pages leave once decoded, a BF16 table is read
in place, and a consumed checkpoint's tensors are dropped as they are converted."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from bitnet_jax._memory import release_pages
from bitnet_jax.config import ModelConfig
from bitnet_jax.io import random_checkpoint
from bitnet_jax.io._gguf_file import open_gguf
from bitnet_jax.io.checkpoint import checkpoint_to_params
from bitnet_jax.io.gguf import _float_array, read_gguf_checkpoint
from bitnet_jax.io.gguf_write import write_gguf
from pallas_kernels import get_kernel


def _rss_file_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def test_released_pages_leave_the_resident_set_and_read_back(tmp_path):
    path = tmp_path / "blob.bin"
    data = np.random.default_rng(0).integers(0, 256, 48 << 20, dtype=np.uint8)
    data.tofile(path)
    mapped = np.memmap(path, np.uint8, mode="r")
    keep, drop = mapped[: 8 << 20], mapped[(16 << 20) + 123 :]  # a slice that starts inside a page
    before = _rss_file_kb()
    assert int(keep[::4096].sum()) >= 0 and int(drop[::4096].sum()) >= 0  # touch both ranges
    touched = _rss_file_kb()
    assert touched - before > 30 << 10  # kB: the 32 MB range is resident now
    release_pages(drop)
    assert touched - _rss_file_kb() > 30 << 10  # ... and gone again
    np.testing.assert_array_equal(np.asarray(drop[:1000]), data[(16 << 20) + 123 :][:1000])  # read back
    release_pages(np.array(keep))  # a copy, not a map: nothing happens
    release_pages(np.memmap(path, np.uint8, mode="r+")[:4096])  # a writable map: left alone


def test_a_bf16_table_is_read_in_place_and_consumed_tensors_are_dropped(tmp_path):
    config = dataclasses.replace(ModelConfig.preset("tiny"), bos_token_id=1, eos_token_id=2)
    ckpt = random_checkpoint(config, seed=2)
    path = write_gguf(ckpt.config, ckpt.tensors, None, tmp_path / "m.gguf", "i2_s", embed_type="bf16")
    f = open_gguf(path)
    table = _float_array(f, f.tensors["token_embd.weight"])
    assert table.dtype == jnp.bfloat16 and np.shares_memory(table, f.data)  # no float32 copy of the file
    read = read_gguf_checkpoint(path)
    kept = checkpoint_to_params(read, get_kernel("xla"))
    assert all(v is not None for v in read.tensors.values())  # by default the checkpoint stays usable
    consumed = checkpoint_to_params(read, get_kernel("xla"), consume=True)
    assert all(v is None for v in read.tensors.values())
    np.testing.assert_array_equal(np.asarray(consumed["embed_tokens"]), np.asarray(kept["embed_tokens"]))
    assert consumed["embed_tokens"].dtype == jnp.bfloat16
