"""Export: HF -> GGUF (each quant) -> HF round trips, transformers loading our HF output, the convert CLI."""

from __future__ import annotations

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np
import pytest
from gguf_fixtures import ternary_model, transformers_logits, write_hf_packed

from bitnet_jax import CheckpointError, forward, from_pretrained, read_checkpoint, save_pretrained
from bitnet_jax.io.checkpoint import TernaryTensor
from bitnet_jax.cli import main
from bitnet_jax.io.formats import QUANTS

TOKENS = np.array([[3, 17, 250, 9, 1, 42, 300, 5]])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_hf_packed(ternary_model(seed=5), tmp_path_factory.mktemp("src") / "hf")


def assert_same_checkpoint(a, b):
    ca, cb = a.config, b.config
    assert ca.head_size == cb.head_size and ca.rms_norm_eps == pytest.approx(cb.rms_norm_eps, rel=1e-6)
    same = dict(head_dim=None, rms_norm_eps=1e-5, eos_token_id=None, bos_token_id=None)
    assert ca.replace(**same) == cb.replace(**same)
    assert set(a.tensors) == set(b.tensors)
    for name, x in a.tensors.items():
        y = b.tensors[name]
        if isinstance(x, TernaryTensor):
            np.testing.assert_array_equal(x.codes, y.codes, err_msg=name)
            assert x.scale == y.scale, name
        else:
            np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32), err_msg=name)


@pytest.mark.parametrize("quant", QUANTS)
def test_hf_gguf_hf_round_trip_is_exact(hf_dir, tmp_path, quant):
    model = from_pretrained(hf_dir)
    gguf_path = save_pretrained(model, tmp_path / "m.gguf", format="gguf", quant=quant)
    assert_same_checkpoint(read_checkpoint(hf_dir), read_checkpoint(gguf_path))
    back = save_pretrained(from_pretrained(gguf_path), tmp_path / "back", format="hf")
    assert_same_checkpoint(read_checkpoint(hf_dir), read_checkpoint(back))
    np.testing.assert_array_equal(np.asarray(forward(from_pretrained(back), TOKENS)), np.asarray(forward(model, TOKENS)))


def test_exported_hf_dir_loads_in_transformers(hf_dir, tmp_path):
    ref = transformers_logits(hf_dir, TOKENS)
    gguf_path = save_pretrained(from_pretrained(hf_dir), tmp_path / "m.gguf", format="gguf", quant="tq1_0")
    out = save_pretrained(from_pretrained(gguf_path), tmp_path / "out", format="hf")
    np.testing.assert_allclose(transformers_logits(out, TOKENS), ref, atol=1e-5, rtol=0)


def test_training_form_model_is_quantized_on_export(tmp_path):
    from conftest import random_model

    latent = random_model("tiny", seed=1, packed=False)
    path = save_pretrained(latent, tmp_path / "t.gguf", format="gguf", quant="f32")  # F32: no embedding rounding
    np.testing.assert_allclose(
        np.asarray(forward(from_pretrained(path), [[1, 2, 3]])), np.asarray(forward(latent, [[1, 2, 3]])), atol=1e-4
    )


def test_unknown_quant_is_refused_before_anything_is_written(hf_dir, tmp_path):
    target = tmp_path / "m.gguf"
    with pytest.raises(CheckpointError, match="unknown GGUF quant 'q4_0'"):
        save_pretrained(from_pretrained(hf_dir), target, format="gguf", quant="q4_0")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_mid_write_leaves_the_old_output(hf_dir, tmp_path, monkeypatch):
    """A GGUF whose tensor data fails half-way, and an HF directory whose weights fail to write, leave
    the previous file / directory exactly as it was, and no temporary files behind."""
    import gguf

    model = from_pretrained(hf_dir)
    target = tmp_path / "m.gguf"
    target.write_bytes(b"GGUFold")  # an earlier GGUF (replaced only with overwrite=True)
    from conftest import random_model

    # the encoder fails on a tensor after the header and earlier tensors have gone into the temporary file
    with pytest.raises(CheckpointError, match="TQ2_0"):  # 64-wide rows do not fill 256-weight blocks
        save_pretrained(random_model("tiny"), target, format="gguf", quant="tq2_0", overwrite=True)
    assert target.read_bytes() == b"GGUFold" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]

    written = []

    def fail_after_header(self, *args, **kwargs):  # header and metadata are in the temporary file by now
        written.append(True)
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail_after_header)
    with pytest.raises(CheckpointError, match="disk full"):
        save_pretrained(model, target, format="gguf", quant="i2_s", overwrite=True)
    assert written and target.read_bytes() == b"GGUFold" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]

    out = save_pretrained(model, tmp_path / "hf", format="hf")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import safetensors.numpy

    def partial_save(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", partial_save)
    with pytest.raises(CheckpointError, match="disk full"):
        save_pretrained(model, out, format="hf", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.gguf"]


def test_int8_head_model_is_refused_by_every_format(hf_dir, tmp_path):
    """The int8 head is an inference option: no format stores it, so saving it is refused (writing its
    codes as float embeddings gave logits off by thousands)."""
    from bitnet_jax import with_int8_head

    int8 = with_int8_head(from_pretrained(hf_dir))
    for fmt, name in (("gguf", "m.gguf"), ("hf", "hf")):
        with pytest.raises(CheckpointError, match="int8 head"):
            save_pretrained(int8, tmp_path / name, format=fmt)
    assert list(tmp_path.iterdir()) == []


def test_convert_cli(hf_dir, tmp_path, capsys):
    assert main(["convert", str(hf_dir), str(tmp_path / "m.gguf"), "--quant", "tq2_0"]) == 0
    assert main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert_same_checkpoint(read_checkpoint(hf_dir), read_checkpoint(tmp_path / "hf"))
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x.gguf")]) == 2
