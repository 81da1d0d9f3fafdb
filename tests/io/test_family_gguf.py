"""GGUF for every family: I2_S layouts of each bitnet.cpp build, TL1/TL2 refused by name, the arch each
family is exported with (and read back exactly), and the new ModelConfig fields' errors."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from bitnet_jax import CheckpointError, ConfigError, ModelConfig, forward, read_checkpoint, save_pretrained
from bitnet_jax.io._codecs import decode_i2_s, encode_i2_s
from bitnet_jax.io._gguf_file import open_gguf
from bitnet_jax.io.checkpoint import random_checkpoint
from bitnet_jax.io.gguf_write import write_gguf
from bitnet_jax.io.loading import model_from_checkpoint
from pallas_kernels import get_kernel, layouts


def i2s_arm_reference(q: np.ndarray, scale: float) -> np.ndarray:
    """bitnet.cpp's ARM quantize_i2_s, weight by weight: 64-weight blocks, byte i*16 + j%16, bits 6-2(j//16)."""
    flat = (q.reshape(-1).astype(np.int64) + 1).astype(np.uint8)
    n = flat.size
    j = np.arange(n) % 64
    out = np.zeros(n // 4 + 32, np.uint8)
    np.bitwise_or.at(out, (np.arange(n) // 64) * 16 + j % 16, (flat << (6 - 2 * (j // 16)).astype(np.uint8)))
    out[n // 4: n // 4 + 4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return out


def i2s_1x4_reference(q: np.ndarray, scale: float) -> np.ndarray:
    """bitnet.cpp's x86 quantize_i2_s without ACT_PARALLEL: byte [rg * K + col] = rows 4rg..4rg+3 of col."""
    n_rows, k = q.shape
    codes = (q.astype(np.int64) + 1).astype(np.uint8)
    out = np.zeros(q.size // 4 + 32, np.uint8)
    for rg in range(n_rows // 4):
        for col in range(k):
            r = rg * 4
            out[rg * k + col] = (codes[r, col] << 6) | (codes[r + 1, col] << 4) | (codes[r + 2, col] << 2) | codes[r + 3, col]
    out[q.size // 4: q.size // 4 + 4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return out


@pytest.mark.parametrize("layout, reference", [("arm", i2s_arm_reference), ("x86-1x4", i2s_1x4_reference)])
def test_i2_s_layouts_match_bitnet_cpp(layout, reference):
    q = np.random.default_rng(0).integers(-1, 2, (8, 192)).astype(np.int8)
    raw = reference(q, 0.375)
    codes, scale = decode_i2_s(raw, q.shape, layout)
    np.testing.assert_array_equal(layouts.unpack_rows4(codes, np.int8), q)
    assert scale == 0.375
    np.testing.assert_array_equal(encode_i2_s(layouts.pack_rows4(q), 0.375, layout), raw)
    wrong, _ = decode_i2_s(raw, q.shape, "x86" if layout == "arm" else "arm")
    assert not np.array_equal(layouts.unpack_rows4(wrong, np.int8), q)  # the layouts really differ


def test_i2_s_layout_round_trips_through_files(tmp_path):
    cfg = ModelConfig.preset("tiny").replace(hidden_size=128, intermediate_size=256, num_attention_heads=4,
                                             num_key_value_heads=2)
    ckpt = random_checkpoint(cfg, seed=3)
    path = write_gguf(cfg, ckpt.tensors, None, tmp_path / "arm.gguf", "i2_s", i2_s_layout="arm")
    back = read_checkpoint(path, i2_s_layout="arm")
    name = "model.layers.1.mlp.down_proj.weight"
    np.testing.assert_array_equal(back.tensors[name].codes, ckpt.tensors[name].codes)
    misread = read_checkpoint(path)  # the default x86 layout: other codes, and nothing says so in the file
    assert not np.array_equal(misread.tensors[name].codes, ckpt.tensors[name].codes)
    with pytest.raises(CheckpointError, match="unknown I2_S layout 'neon'"):
        write_gguf(cfg, ckpt.tensors, None, tmp_path / "x.gguf", "i2_s", i2_s_layout="neon")


@pytest.mark.parametrize("type_id, name", [(38, "TL1"), (39, "TL2")])
@pytest.mark.parametrize("arch", ["bitnet-b1.58", "llama"])
def test_tl1_tl2_are_refused_by_name(tmp_path, type_id, name, arch):
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_tensor("blk.0.attn_q.weight", np.zeros(64, np.int8), raw_shape=(8, 32), raw_dtype=36)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    data = bytearray(path.read_bytes())  # gguf-py knows no type 38: set the tensor's type id by hand
    at = data.index(b"blk.0.attn_q.weight") + len("blk.0.attn_q.weight")
    n_dims = int.from_bytes(data[at:at + 4], "little")
    data[at + 4 + 8 * n_dims: at + 8 + 8 * n_dims] = type_id.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"blk.0.attn_q.weight.*{name} \\(bitnet.cpp type {type_id}"):
        open_gguf(tmp_path / "t.gguf")


FAMILIES = {
    "2b4t": (dict(), "bitnet-b1.58"),
    "1bitllm": (dict(hidden_act="silu", sub_norm_names=("self_attn.inner_attn_ln", "mlp.ffn_layernorm")), "bitnet"),
    "llama": (dict(hidden_act="silu", sub_norms=False, tie_word_embeddings=False), "llama"),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("quant", ["tq2_0", "i2_s", "f16"])
def test_each_family_exports_with_its_arch_and_reads_back_exactly(tmp_path, family, quant):
    changes, arch = FAMILIES[family]
    cfg = ModelConfig.preset("tiny").replace(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                             num_key_value_heads=2, **changes)
    ckpt = random_checkpoint(cfg, seed=1)
    model = model_from_checkpoint(ckpt, get_kernel("xla"), to_device=False)
    path = save_pretrained(model, tmp_path / "m.gguf", format="gguf", quant=quant)
    f = open_gguf(path)
    assert f.metadata["general.architecture"] == arch
    assert f.metadata[f"{arch}.hidden_activation"] == cfg.hidden_act
    back = read_checkpoint(path)
    assert back.config.replace(eos_token_id=cfg.eos_token_id, bos_token_id=cfg.bos_token_id, rms_norm_eps=1e-5,
                               sub_norm_names=cfg.sub_norm_names) == cfg
    from bitnet_jax.io.names import tensor_names

    renamed = {a.hf: b.hf for a, b in zip(tensor_names(cfg), tensor_names(back.config))}  # 1bitLLM: GGUF names
    back_tensors = {src: back.tensors[dst] for src, dst in renamed.items()}
    for name, t in ckpt.tensors.items():
        if hasattr(t, "codes"):
            np.testing.assert_array_equal(back_tensors[name].codes, t.codes, err_msg=name)
            assert back_tensors[name].scale == np.float32(t.scale)
    if arch == "llama":  # the rows are stored permuted, as llama.cpp's converter stores them
        raw = f.tensors["blk.0.attn_q.weight"]
        assert raw.type_name == quant.upper()
    for name, t in ckpt.tensors.items():  # floats: as stored (the embedding and an untied head in F16)
        if not hasattr(t, "codes"):
            np.testing.assert_allclose(back_tensors[name], t, rtol=1e-3, atol=1e-4, err_msg=name)


def test_export_arch_choices_are_checked(tmp_path):
    llama = ModelConfig.preset("tiny").replace(hidden_act="silu", sub_norms=False)
    relu_no_sub = ModelConfig.preset("tiny").replace(sub_norms=False)
    silu_sub = ModelConfig.preset("tiny").replace(hidden_act="silu")
    for cfg, arch, fragment in ((llama, "bitnet", "has sub-norms"), (relu_no_sub, None, "cannot be exported"),
                                (silu_sub, "bitnet-b1.58", "computes relu"), (silu_sub, "llama", "arch 'llama'"),
                                (ModelConfig.preset("tiny").replace(use_rms_norm=True), None, "use_rms_norm")):
        with pytest.raises(CheckpointError, match=fragment):
            write_gguf(cfg, random_checkpoint(cfg).tensors, None, tmp_path / "x.gguf", "f32", arch=arch)
    assert list(tmp_path.iterdir()) == []
    with pytest.warns(UserWarning, match="untied head"):
        cfg = ModelConfig.preset("tiny-untied")
        write_gguf(cfg, random_checkpoint(cfg).tensors, None, tmp_path / "u.gguf", "f32")


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(sub_norm_names=("inner_attn_ln", "ffn_layernorm")), "sub_norm_names"),
        (dict(sub_norms="yes"), "sub_norms"),
        (dict(use_rms_norm=1), "use_rms_norm"),
        (dict(linear_rms_norm_eps=0.0), "linear_rms_norm_eps"),
        (dict(modules_to_not_convert=["model.layers.0.mlp.up_proj"]), "must include lm_head"),
        (dict(modules_to_not_convert=["lm_head", ""]), "modules_to_not_convert"),
        (dict(head_dim=0), "head_dim"),
    ],
)
def test_new_config_fields_are_checked(changes, fragment):
    with pytest.raises(ConfigError, match=f"model.{fragment}|{fragment}") as e:
        ModelConfig.from_dict({**ModelConfig.preset("tiny").to_dict(), **changes}, source="preset.yaml")
    assert str(e.value).startswith("preset.yaml: model.")


def test_scan_layers_refuses_layers_that_differ(tmp_path):
    from bitnet_jax import from_pretrained

    cfg = ModelConfig.preset("tiny").replace(modules_to_not_convert=("lm_head", "model.layers.0.mlp.down_proj"))
    model = model_from_checkpoint(random_checkpoint(cfg), get_kernel("xla"), to_device=False)
    path = save_pretrained(model, tmp_path / "m")
    assert np.isfinite(np.asarray(forward(from_pretrained(path), [[1, 2, 3]]))).all()
    with pytest.raises(ConfigError, match="scan_layers"):
        forward(from_pretrained(path, scan_layers=True), [[1, 2, 3]])


def test_bitnet_25_arch_and_narrow_i2_s_rows(tmp_path):
    cfg = ModelConfig.preset("tiny")  # 64-wide rows: not whole 128-weight I2_S blocks per row
    ckpt = random_checkpoint(cfg, seed=5)
    with pytest.warns(UserWarning, match="not a multiple of 128"):
        path = write_gguf(cfg, ckpt.tensors, None, tmp_path / "m.gguf", "i2_s", arch="bitnet-25")
    assert open_gguf(path).metadata["general.architecture"] == "bitnet-25"
    back = read_checkpoint(path)
    assert (back.config.hidden_act, back.config.sub_norms) == ("relu2", True)
    name = "model.layers.0.self_attn.o_proj.weight"
    np.testing.assert_array_equal(back.tensors[name].codes, ckpt.tensors[name].codes)
