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
    from bitnet_jax.io.hf import config_from_hf, config_to_hf

    c = ModelConfig.preset("tiny-untied")
    hf = config_to_hf(c)
    assert config_from_hf(hf).replace(head_dim=None) == c
    with pytest.raises(ConfigError, match="Llama checkpoint without a bitnet quantization_config"):
        config_from_hf({**hf, "model_type": "llama"})
    with pytest.raises(ConfigError, match="model_type 'gpt2'"):
        config_from_hf({**hf, "model_type": "gpt2"})
    llama = ModelConfig.preset("llama3-8b-1.58")
    back = config_from_hf({**config_to_hf(llama), "quantization_config": {"quant_method": "bitnet"}})
    assert back.replace(head_dim=None, dtype=llama.dtype) == llama
    with pytest.raises(ConfigError, match="rope type 'yarn'"):
        config_from_hf({**hf, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}})
    with pytest.raises(ConfigError, match=r"config.json: hidden_size: must be a positive integer, got -8"):
        config_from_hf({**hf, "hidden_size": -8})


def test_errors_name_the_full_key_without_rewriting_messages():
    """Built from a mapping, a field error names SOURCE: PREFIX.KEY; built directly, Class.KEY."""
    with pytest.raises(ConfigError, match=r"^ModelConfig.rms_norm_eps: must be a finite number > 0, got inf$"):
        ModelConfig(rms_norm_eps=float("inf"))
    with pytest.raises(ConfigError, match=r"^run.yaml: model.rope_theta: expected float, got 'big' \(str\)$"):
        ModelConfig.from_dict({"rope_theta": "big"}, source="run.yaml")
    with pytest.raises(ConfigError, match=r"^model.tie_word_embeddings: expected bool, got 1 \(int\)$"):
        ModelConfig.from_dict({"tie_word_embeddings": 1})
