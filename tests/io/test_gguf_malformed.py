"""Malformed GGUF files raise CheckpointError naming the file and the field: no crash, hang or huge allocation."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import struct
import time
import tracemalloc

import gguf
import numpy as np
import pytest
from gguf_fixtures import ternary_model, write_reference_gguf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitnet_jax import CheckpointError, read_checkpoint

SMALL = dict(vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """(path, bytes) of a small valid F32 GGUF, and of an I2_S one."""
    d = tmp_path_factory.mktemp("valid")
    spec = ternary_model(seed=3, **SMALL)
    out = {}
    for kind, arch in (("f32", "bitnet"), ("i2_s", "bitnet-b1.58")):
        p = write_reference_gguf(spec, d / f"{kind}.gguf", kind, arch)
        read_checkpoint(p)  # valid as written
        out[kind] = p.read_bytes()
    return out


def info_offsets(data: bytes, path, name: str) -> dict[str, int]:
    """Byte offsets of a tensor-info entry's n_dims, dims, type and offset fields (via gguf.GGUFReader)."""
    path.write_bytes(data)
    t = {t.name: t for t in gguf.GGUFReader(path).tensors}[name]
    pos = t.field.offset + 8 + len(name)
    return {"n_dims": pos, "dims": pos + 4, "type": pos + 4 + 8 * len(t.shape), "offset": pos + 8 + 8 * len(t.shape)}


def expect_error(tmp_path, data: bytes, *patterns: str) -> str:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg
    for p in patterns:
        assert p in msg, msg
    return msg


def patch(data: bytes, pos: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


def test_bad_magic(tmp_path, valid):
    expect_error(tmp_path, b"GGUX" + valid["f32"][4:], "magic")


@pytest.mark.parametrize("version", [1, 4, 0x03000000])
def test_unsupported_version(tmp_path, valid, version):
    expect_error(tmp_path, patch(valid["f32"], 4, "<I", version), "version")


@pytest.mark.parametrize("field,pos", [("tensor_count", 8), ("kv_count", 16)])
def test_absurd_counts(tmp_path, valid, field, pos):
    expect_error(tmp_path, patch(valid["f32"], pos, "<Q", 2**62), field, "impossible")


def test_absurd_array_length(tmp_path, valid):
    data = valid["f32"]
    path = tmp_path / "v.gguf"
    path.write_bytes(data)
    # no arrays in the model file: add one and point its length at 2**60
    w = gguf.GGUFWriter(path, "bitnet")
    w.add_array("test.array", [1, 2, 3])
    w.write_header_to_file(), w.write_kv_data_to_file(), w.close()
    arr = path.read_bytes()
    pos = arr.index(b"test.array") + len(b"test.array") + 4 + 4
    expect_error(tmp_path, patch(arr, pos, "<Q", 2**60), "test.array", "array length")


@pytest.mark.parametrize("kind", ["f32", "i2_s"])
def test_truncated_anywhere(tmp_path, valid, kind):
    data = valid[kind]
    cuts = sorted(set(range(0, min(len(data), 800))) | set(range(800, len(data), 37)))
    path = tmp_path / "cut.gguf"
    for n in cuts:
        path.write_bytes(data[:n])
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)


def test_offset_past_end(tmp_path, valid):
    data = valid["f32"]
    off = info_offsets(data, tmp_path / "r.gguf", "blk.0.ffn_down.weight")
    expect_error(tmp_path, patch(data, off["offset"], "<Q", 2**40), "blk.0.ffn_down.weight offset", "past the end")


def test_overflowing_dims(tmp_path, valid):
    data = valid["f32"]
    off = info_offsets(data, tmp_path / "r.gguf", "blk.0.attn_q.weight")
    data = patch(data, off["dims"], "<Q", 2**40)
    data = patch(data, off["dims"] + 8, "<Q", 2**40)
    expect_error(tmp_path, data, "blk.0.attn_q.weight dims", "overflow")


@pytest.mark.parametrize("type_id,arch_kind,pattern", [(99, "f32", "unknown tensor type id 99"), (39, "i2_s", "bitnet.cpp")])
def test_unknown_or_ambiguous_types(tmp_path, valid, type_id, arch_kind, pattern):
    data = valid[arch_kind]
    off = info_offsets(valid["f32"], tmp_path / "r.gguf", "output_norm.weight")  # same header layout before I2_S data
    if arch_kind != "f32":
        path = tmp_path / "i.gguf"
        path.write_bytes(data)
        pos = data.index(b"output_norm.weight") + len(b"output_norm.weight")
        off = {"type": pos + 4 + 8}
    expect_error(tmp_path, patch(data, off["type"], "<I", type_id), "output_norm.weight type", pattern)


def test_wrong_shaped_tensor(tmp_path, valid):
    data = valid["f32"]
    off = info_offsets(data, tmp_path / "r.gguf", "blk.0.attn_norm.weight")
    expect_error(tmp_path, patch(data, off["dims"], "<Q", 32), "blk.0.attn_norm.weight", "shape")


def test_missing_tensor_is_named(tmp_path, valid):
    data = valid["f32"]
    i = data.index(b"blk.0.ffn_sub_norm.weight")
    data = data[:i] + b"blk.0.ffn_xxx_norm.weight" + data[i + 25 :]
    expect_error(tmp_path, data, "unexpected tensor blk.0.ffn_xxx_norm.weight")


def _check_mutant(path, data: bytes) -> None:
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        read_checkpoint(path)
    except CheckpointError as e:
        assert str(path) in str(e)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - start < 5.0
    assert peak < 64 * len(data) + (8 << 20), f"peak allocation {peak} bytes for a {len(data)}-byte file"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_mutated_files(tmp_path_factory, valid, data):
    kind = data.draw(st.sampled_from(["f32", "i2_s"]))
    blob = bytearray(valid[kind])
    header_end = 900  # most structure lives in the first bytes: bias mutations there
    for _ in range(data.draw(st.integers(1, 6))):
        limit = header_end if data.draw(st.booleans()) else len(blob) - 1
        pos = data.draw(st.integers(0, limit))
        width = data.draw(st.sampled_from([1, 4, 8]))
        value = data.draw(st.sampled_from([0, 1, 0xFF, 0x7F, 36, 39, 2**31, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1))
        raw = (value % 2 ** (8 * width)).to_bytes(width, "little")
        blob[pos : pos + width] = raw[: max(0, len(blob) - pos)]
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    _check_mutant(tmp_path_factory.mktemp("fuzz") / "m.gguf", bytes(blob))
