"""GGUF loading against transformers: files written by gguf.GGUFWriter with llama.cpp names and keys."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' unpack is torch.compile'd: slow on CPU

import gguf
import numpy as np
import pytest
from gguf_fixtures import ternary_model, transformers_logits, write_hf_packed, write_reference_gguf

from bitnet_jax import CheckpointError, forward, from_pretrained, read_checkpoint

TOKENS = np.array([[3, 17, 250, 9, 1, 42, 300, 5], [7, 7, 8, 0, 319, 64, 2, 11]])
TOL = 1e-4


@pytest.fixture(scope="module")
def spec():
    return ternary_model(seed=0)


@pytest.fixture(scope="module")
def reference(spec, tmp_path_factory):
    hf = write_hf_packed(spec, tmp_path_factory.mktemp("hf") / "model")
    return transformers_logits(hf, TOKENS)


CASES = [
    ("i2_s", "bitnet-b1.58", False),
    ("i2_s", "bitnet", True),
    ("tq2_0", "bitnet", False),
    ("tq2_0", "bitnet-b1.58", True),
    ("tq1_0", "bitnet", False),
    ("tq1_0", "bitnet", True),
    ("f16", "bitnet", False),
    ("f32", "bitnet-b1.58", True),
    ("bf16", "bitnet", True),
]


@pytest.mark.parametrize("kind,arch,scale_tensor", CASES)
def test_gguf_logits_match_transformers(spec, reference, tmp_path, kind, arch, scale_tensor):
    path = write_reference_gguf(spec, tmp_path / "m.gguf", kind, arch, scale_tensor)
    model = from_pretrained(path)
    assert model.config.num_hidden_layers == 2 and model.config.tie_word_embeddings
    np.testing.assert_allclose(np.asarray(forward(model, TOKENS)), reference, atol=TOL, rtol=0)


def test_untied_head_is_read_from_output_tensor(tmp_path):
    spec = ternary_model(seed=1, tie_word_embeddings=False)
    ref = transformers_logits(write_hf_packed(spec, tmp_path / "hf"), TOKENS)
    model = from_pretrained(write_reference_gguf(spec, tmp_path / "m.gguf", "tq2_0"))
    assert not model.config.tie_word_embeddings
    np.testing.assert_allclose(np.asarray(forward(model, TOKENS)), ref, atol=TOL, rtol=0)


def test_scale_in_blocks_and_scale_tensor_multiply(spec, tmp_path):
    path = write_reference_gguf(spec, tmp_path / "m.gguf", "tq2_0", scale_tensor=False)
    base = read_checkpoint(path).tensors["model.layers.0.mlp.up_proj.weight"]
    q, scale = spec["ternary"]["model.layers.0.mlp.up_proj"]
    assert base.scale == scale
    from gguf_fixtures import LINEARS

    layers = spec["config"].num_hidden_layers
    scales = {f"blk.{i}.{g}": 1.0 for i in range(layers) for g in LINEARS.values()}
    both_path = write_reference_gguf(spec, tmp_path / "b.gguf", "tq2_0", extra_scales={**scales, "blk.0.ffn_up": 0.5})
    both = read_checkpoint(both_path).tensors["model.layers.0.mlp.up_proj.weight"]
    np.testing.assert_array_equal(both.codes, base.codes)
    assert both.scale == scale * 0.5
    # a file whose other ternary weights have .scale tensors but one lacks it is corrupt, not "scale 1.0"
    partial = write_reference_gguf(spec, tmp_path / "p.gguf", "tq2_0", extra_scales={"blk.0.ffn_up": 0.5})
    with pytest.raises(CheckpointError, match=r"missing tensor blk\.\d+\.\w+\.scale"):
        read_checkpoint(partial)


def test_unknown_architecture_is_named(spec, tmp_path):
    path = write_reference_gguf(spec, tmp_path / "m.gguf", "f32", arch="gpt2")
    with pytest.raises(CheckpointError, match="'gpt2'"):
        read_checkpoint(path)


def test_float_linear_that_is_not_ternary_is_rejected(spec, tmp_path):
    bad = dict(spec, ternary=dict(spec["ternary"]))
    q, scale = bad["ternary"]["model.layers.1.self_attn.k_proj"]
    q = q.copy()
    bad["ternary"]["model.layers.1.self_attn.k_proj"] = (q, scale)
    path = write_reference_gguf(bad, tmp_path / "m.gguf", "f32")
    data = bytearray(path.read_bytes())
    info = {t.name: t for t in gguf.GGUFReader(path).tensors}["blk.1.attn_k.weight"]
    vals = np.frombuffer(bytes(data[info.data_offset : info.data_offset + 8]), np.float32).copy()
    vals[:] = [0.25, -0.5]
    data[info.data_offset : info.data_offset + 8] = vals.tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"blk\.1\.attn_k\.weight.*not ternary"):
        read_checkpoint(path)
