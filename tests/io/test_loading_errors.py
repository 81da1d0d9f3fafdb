"""Loading transformers BitNet directories: bad input fails with an error naming the file/tensor at fault;
sharded checkpoints and tokenizer.json load correctly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import bitnet_jax as bj
from hf_reference import SPECS, load_reference, random_latent_model, reference_logits, save_form

SPEC = SPECS[0]
PACKED = "model.safetensors"
LAYER = "model.layers.1.mlp.up_proj"


@pytest.fixture(scope="session")
def saved(tmp_path_factory) -> dict[str, Path]:
    """One tiny model saved as packed autobitlinear, latent online, and packed sharded over several files."""
    root = tmp_path_factory.mktemp("loading")
    model = random_latent_model(SPEC, seed=7)
    return {
        "packed": save_form(model, "packed-autobitlinear", root / "packed"),
        "latent": save_form(model, "latent-online", root / "latent"),
        "sharded": save_form(model, "packed-autobitlinear", root / "sharded", max_shard_size="40KB"),
    }


def corrupted(src: Path, dst: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> Path:
    """A copy of ``src`` whose single safetensors file went through ``edit`` (in place on the dict)."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / PACKED)
    edit(tensors)
    save_file(tensors, dst / PACKED, metadata={"format": "pt"})
    return dst


def edit_config(dst: Path, **changes) -> None:
    """Rewrite fields of ``dst/config.json``."""
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))


def assert_fails(path: Path, error: type, *fragments: str) -> None:
    """from_pretrained raises ``error`` and its message holds every fragment."""
    with pytest.raises(error) as info:
        bj.from_pretrained(path)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in: {info.value}"


def _pop(name):
    return lambda t: t.pop(name)


def _set(name, value):
    def edit(t):
        t[name] = value(t[name]) if callable(value) else value

    return edit


def _with_code_3(packed):
    packed = packed.copy()
    packed[0, 0] = 0xFF
    return packed


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (_pop(f"{LAYER}.weight"), [f"{LAYER}.weight", "missing"]),
        (_pop(f"{LAYER}.weight_scale"), [f"{LAYER}.weight_scale", "missing"]),
        (_pop("model.norm.weight"), ["model.norm.weight", "missing"]),
        (_set("model.layers.0.mlp.extra_proj.weight", np.zeros((4, 4), np.float32)), ["model.layers.0.mlp.extra_proj.weight"]),
        (_set("model.layers.0.input_layernorm.weight", np.ones(7, np.float32)), ["model.layers.0.input_layernorm.weight", "(7,)"]),
        (_set(f"{LAYER}.weight", lambda w: w[:, :-1].copy()), [f"{LAYER}.weight", "shape"]),
        (_set(f"{LAYER}.weight", lambda w: w.astype(np.int8)), [f"{LAYER}.weight", "uint8", "int8"]),
        (_set(f"{LAYER}.weight", lambda w: w.astype(np.float32)), [f"{LAYER}.weight", "uint8", "float32"]),
        (_set(f"{LAYER}.weight", _with_code_3), [f"{LAYER}.weight", "invalid 2-bit code"]),
        (_set(f"{LAYER}.weight_scale", np.zeros(1, np.float32)), [f"{LAYER}.weight_scale", "0.0"]),
        (_set(f"{LAYER}.weight_scale", np.full(1, np.nan, np.float32)), [f"{LAYER}.weight_scale", "nan"]),
        (_set(f"{LAYER}.weight_scale", np.full(1, -0.5, np.float32)), [f"{LAYER}.weight_scale", "-0.5"]),
        (_set(f"{LAYER}.weight_scale", np.ones(2, np.float32)), [f"{LAYER}.weight_scale", "(2,)"]),
        (_set("model.embed_tokens.weight", lambda w: np.where(w > 0.5, np.inf, w).astype(np.float32)), ["model.embed_tokens.weight", "non-finite"]),
    ],
    ids=[
        "missing-packed-weight",
        "missing-weight-scale",
        "missing-norm",
        "extra-tensor",
        "misshaped-norm",
        "misshaped-packed-weight",
        "packed-weight-int8",
        "packed-weight-float32",
        "code-3",
        "scale-zero",
        "scale-nan",
        "scale-negative",
        "scale-two-values",
        "inf-in-embedding",
    ],
)
def test_corrupt_packed_checkpoint_names_the_tensor(saved, tmp_path, edit, fragments):
    """Each corruption of a packed checkpoint raises CheckpointError naming the tensor."""
    path = corrupted(saved["packed"], tmp_path / "bad", edit)
    assert_fails(path, bj.CheckpointError, str(path), *fragments)


def test_latent_checkpoint_with_packed_weight_names_the_tensor(saved, tmp_path):
    """A uint8 weight in an online (latent) checkpoint is rejected by name."""
    packed = load_file(saved["packed"] / PACKED)[f"{LAYER}.weight"]
    path = corrupted(saved["latent"], tmp_path / "bad", _set(f"{LAYER}.weight", packed))
    assert_fails(path, bj.CheckpointError, f"{LAYER}.weight", "online")


def test_latent_checkpoint_missing_tensor(saved, tmp_path):
    """A latent checkpoint missing a linear is rejected by name."""
    path = corrupted(saved["latent"], tmp_path / "bad", _pop("model.layers.0.self_attn.k_proj.weight"))
    assert_fails(path, bj.CheckpointError, "model.layers.0.self_attn.k_proj.weight")


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"model_type": "gpt2"}, ["model_type", "gpt2"]),
        ({"hidden_act": "gelu"}, ["hidden_act", "gelu"]),
        ({"quantization_config": {"quant_method": "bitnet", "linear_class": "fancy"}}, ["linear_class", "fancy"]),
        ({"quantization_config": {"quant_method": "awq"}}, ["quant_method", "awq"]),
        ({"num_key_value_heads": 3}, ["num_key_value_heads"]),
    ],
    ids=["model-type", "activation", "linear-class", "quant-method", "kv-heads"],
)
def test_bad_config_names_the_field(saved, tmp_path, changes, fragments):
    """Unsupported config.json fields raise ConfigError naming config.json and the field."""
    path = tmp_path / "bad"
    shutil.copytree(saved["packed"], path)
    edit_config(path, **changes)
    assert_fails(path, bj.ConfigError, "config.json", *fragments)


def test_malformed_config_json(saved, tmp_path):
    """A config.json that is not JSON is named."""
    path = tmp_path / "bad"
    shutil.copytree(saved["packed"], path)
    (path / "config.json").write_text("{not json")
    assert_fails(path, bj.ConfigError, "config.json", "invalid JSON")


def test_missing_weights_file(saved, tmp_path):
    """A directory with config.json but no safetensors says which files it looked for."""
    path = tmp_path / "bad"
    shutil.copytree(saved["packed"], path)
    (path / PACKED).unlink()
    assert_fails(path, bj.CheckpointError, "model.safetensors")


def test_sharded_checkpoint_matches_single_file_and_transformers(saved):
    """transformers' own sharded save (index + several files) loads to the same logits as the single file."""
    shards = sorted(p.name for p in saved["sharded"].glob("*.safetensors"))
    assert len(shards) >= 2 and (saved["sharded"] / "model.safetensors.index.json").is_file(), shards
    tokens = np.random.default_rng(0).integers(3, SPEC.vocab_size, size=(2, 12))
    sharded = np.asarray(bj.forward(bj.from_pretrained(saved["sharded"]), tokens))
    single = np.asarray(bj.forward(bj.from_pretrained(saved["packed"]), tokens))
    np.testing.assert_array_equal(sharded, single)
    ref = reference_logits(load_reference(saved["sharded"], "packed-autobitlinear"), tokens)
    assert np.max(np.abs(sharded - ref)) <= 1e-4


def test_sharded_index_pointing_at_missing_shard(saved, tmp_path):
    """An index entry whose shard file is absent names the shard and the tensor."""
    path = tmp_path / "bad"
    shutil.copytree(saved["sharded"], path)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    victim = sorted(index["weight_map"].values())[-1]
    (path / victim).unlink()
    assert_fails(path, bj.CheckpointError, victim, "does not exist")


def test_sharded_index_listing_a_tensor_missing_from_its_shard(saved, tmp_path):
    """An index entry for a tensor its shard does not hold names the tensor and the shard."""
    path = tmp_path / "bad"
    shutil.copytree(saved["sharded"], path)
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = index["weight_map"]["model.norm.weight"]
    index["weight_map"]["model.layers.0.mlp.ghost_proj.weight"] = shard
    index_file.write_text(json.dumps(index))
    assert_fails(path, bj.CheckpointError, "model.layers.0.mlp.ghost_proj.weight", shard)


def test_tokenizer_json_is_attached_when_present(saved, tmp_path):
    """A tokenizer.json beside the weights (a tiny byte-level BPE trained here) comes with the model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    assert bj.from_pretrained(saved["packed"]).tokenizer is None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the ternary weights of bitnet are packed two bits each"] * 20, trainer)
    assert tok.get_vocab_size() <= SPEC.vocab_size
    path = tmp_path / "with_tok"
    shutil.copytree(saved["packed"], path)
    tok.save(str(path / "tokenizer.json"))
    model = bj.from_pretrained(path)
    assert model.tokenizer is not None
    text = "packed bits of bitnet"
    ids = model.tokenizer.encode(text)
    assert ids == tok.encode(text).ids and len(ids) < len(text)
    assert model.tokenizer.decode(ids) == text
    assert model.tokenizer.encode(text, add_bos=True)[0] == SPEC.hf_config().bos_token_id


def test_corrupt_tokenizer_json_names_the_file(saved, tmp_path):
    """An unreadable tokenizer.json is named."""
    path = tmp_path / "bad"
    shutil.copytree(saved["packed"], path)
    (path / "tokenizer.json").write_text("{}")
    assert_fails(path, bj.CheckpointError, "tokenizer.json")


def test_a_broken_gguf_import_is_not_reported_as_unsupported_gguf(tmp_path, monkeypatch):
    """An ImportError inside the GGUF reader (a broken install) surfaces as itself, not as 'GGUF files
    are not supported by this version'."""
    import sys

    from gguf_fixtures import ternary_model, write_reference_gguf

    path = write_reference_gguf(ternary_model(seed=2), tmp_path / "m.gguf", "tq2_0")
    monkeypatch.setitem(sys.modules, "bitnet_jax.io.gguf", None)  # importing it now raises ImportError
    with pytest.raises(ImportError, match="bitnet_jax.io.gguf"):
        bj.read_checkpoint(path)
