"""ModelConfig: presets, validation errors naming the field, HF config mapping."""

from __future__ import annotations

import pytest

from bitnet_jax import ConfigError, ModelConfig


def test_2b4t_preset_has_shipped_values():
    c = ModelConfig.preset("bitnet-b1.58-2b-4t")
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (128256, 2560, 6912, 30)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_size) == (20, 5, 128)
    assert c.max_position_embeddings == 4096 and c.tie_word_embeddings is True
    assert c.rope_theta == 500000.0 and c.rms_norm_eps == 1e-5 and c.hidden_act == "relu2"
    assert (c.bos_token_id, c.eos_token_ids) == (128000, (128001,))


def test_presets_all_load():
    for name in ("tiny", "tiny-untied", "bitnet-b1.58-2b-4t"):
        assert isinstance(ModelConfig.preset(name), ModelConfig)
    with pytest.raises(ConfigError, match="unknown model preset 'nope'"):
        ModelConfig.preset("nope")


@pytest.mark.parametrize(
    "changes,field",
    [
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_attention_heads=3), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(dtype="float16"), "dtype"),
        (dict(rms_norm_eps=-1.0), "rms_norm_eps"),
        (dict(vocab_size=2.5), "vocab_size"),
        (dict(intermediate_size=130), "intermediate_size"),
    ],
)
def test_invalid_fields_are_named(changes, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig.preset("tiny").replace(**changes)


def test_unknown_yaml_key_is_named(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("hidden_size: 64\nhiden_layers: 2\n")
    with pytest.raises(ConfigError, match=r"m.yaml.*hiden_layers"):
        ModelConfig.from_yaml(p)


def test_hf_config_round_trip_and_errors():
    c = ModelConfig.preset("tiny-untied")
    hf = c.to_hf_config()
    assert ModelConfig.from_hf_config(hf).replace(head_dim=None) == c
    with pytest.raises(ConfigError, match="model_type 'llama'"):
        ModelConfig.from_hf_config({**hf, "model_type": "llama"})
    with pytest.raises(ConfigError, match="rope type 'yarn'"):
        ModelConfig.from_hf_config({**hf, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}})
