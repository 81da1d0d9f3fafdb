"""Ternary GGUF encodings against independent references: gguf.quants and bitnet.cpp's I2_S definition."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf_fixtures import i2s_reference

from bitnet_jax.io._codecs import (
    CodecError,
    decode_i2_s,
    decode_tq,
    encode_i2_s,
    encode_tq1_0,
    encode_tq2_0,
    tq1_0_blocks,
    tq2_0_blocks,
)
from pallas_kernels.layouts import pack_rows4, unpack_rows4

BLOCK_BYTES = {"TQ1_0": 54, "TQ2_0": 66}


def random_ternary(shape, seed, zero_rows=0):
    rng = np.random.default_rng(seed)
    q = rng.integers(-1, 2, size=shape).astype(np.int8)
    q[:zero_rows] = 0  # all-zero blocks
    return q


@pytest.mark.parametrize("kind", ["TQ1_0", "TQ2_0"])
def test_tq_block_decode_equals_gguf_dequantize(kind):
    rng = np.random.default_rng(1)
    n_blocks = 40
    raw = rng.integers(0, 256, size=n_blocks * BLOCK_BYTES[kind], dtype=np.uint8)
    d = rng.standard_normal(n_blocks).astype(np.float16)
    raw.reshape(n_blocks, -1)[:, -2:] = d.view(np.uint8).reshape(n_blocks, 2)
    codes, ours_d = (tq1_0_blocks if kind == "TQ1_0" else tq2_0_blocks)(raw, n_blocks * 256)
    ours = (codes.astype(np.float32) - 1) * ours_d[:, None]
    ref = gguf.quants.dequantize(raw, T[kind]).reshape(n_blocks, 256)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("kind", ["TQ1_0", "TQ2_0"])
def test_tq_tensor_decode_equals_gguf_dequantize(kind):
    q = random_ternary((64, 512), 2, zero_rows=3)
    scale = 0.0371
    raw = gguf.quants.quantize(q.astype(np.float32) * np.float32(scale), T[kind]).reshape(-1)
    codes, got_scale = decode_tq(raw, q.shape, kind)
    ref = gguf.quants.dequantize(raw, T[kind]).reshape(q.shape)
    np.testing.assert_array_equal(unpack_rows4(codes).astype(np.float32) * np.float32(got_scale), ref)
    np.testing.assert_array_equal(unpack_rows4(codes), q)


@pytest.mark.parametrize("kind,encode", [("TQ1_0", encode_tq1_0), ("TQ2_0", encode_tq2_0)])
@pytest.mark.parametrize("scale", [1.0, 0.0371, 3.5])
def test_tq_encode_matches_gguf_quantize_bytewise(kind, encode, scale):
    q = random_ternary((32, 768), 3, zero_rows=2)
    ref = gguf.quants.quantize(q.astype(np.float32) * np.float32(np.float16(scale)), T[kind]).reshape(-1)
    ours = encode(pack_rows4(q), float(np.float16(scale)))
    np.testing.assert_array_equal(ours, ref)


def test_i2s_encode_and_decode_match_reference():
    q = random_ternary((48, 256), 4)
    ref = i2s_reference(q, 0.125)
    ours = encode_i2_s(pack_rows4(q), 0.125)
    np.testing.assert_array_equal(ours, ref)
    codes, scale = decode_i2_s(ref, q.shape)
    np.testing.assert_array_equal(unpack_rows4(codes), q)
    assert scale == 0.125


def test_tq_blocks_that_disagree_on_d_are_rejected():
    q = random_ternary((8, 256), 5)
    values = q.astype(np.float32)
    values[4:] *= 2.0  # second half of the blocks has another scale
    raw = gguf.quants.quantize(values, T.TQ2_0).reshape(-1)
    with pytest.raises(CodecError, match="disagree"):
        decode_tq(raw, q.shape, "TQ2_0")


def test_all_zero_tensor_decodes_with_unit_scale():
    raw = gguf.quants.quantize(np.zeros((4, 256), np.float32), T.TQ1_0).reshape(-1)
    codes, scale = decode_tq(raw, (4, 256), "TQ1_0")
    assert scale == 1.0 and not unpack_rows4(codes).any()


def test_invalid_code_and_sizes_are_rejected():
    raw = np.full(66, 0xFF, dtype=np.uint8)  # code 3 everywhere
    raw[64:] = np.array([1.0], "<f2").view(np.uint8)
    with pytest.raises(CodecError, match="invalid 2-bit code"):
        decode_tq(raw, (4, 64), "TQ2_0")
    with pytest.raises(CodecError, match="bytes"):
        decode_tq(raw[:60], (4, 64), "TQ2_0")
    with pytest.raises(CodecError, match="block size 128"):
        decode_i2_s(np.zeros(40, np.uint8), (4, 8))
