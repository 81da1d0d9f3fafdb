"""Every BitNet family against an independent reference: Llama + BitNetQuantConfig (transformers itself),
1bitLLM's BitnetForCausalLM (its published naming, a forward written from its definition), and their GGUFs
in the converters' conventions (gguf-py) against the HF load of the same weights."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np
import pytest
from family_fixtures import (
    converter_permute,
    gguf_hparams,
    llama_ternary,
    load_llama_reference,
    onebitllm_config,
    onebitllm_greedy,
    onebitllm_logits,
    onebitllm_weights,
    positions_close,
    random_llama,
    save_llama,
    save_onebitllm,
    write_llama_gguf,
    write_onebitllm_gguf,
)
from hf_reference import reference_greedy, reference_logits

from bitnet_jax import CheckpointError, ConfigError, forward, from_pretrained, generate, read_checkpoint, save_pretrained

rng = np.random.default_rng(7)
TOKENS = rng.integers(3, 300, (2, 12))
PROMPT = [1, 17, 250, 9, 42]
NEW = 8


def _ours(path):
    return np.asarray(forward(from_pretrained(path), TOKENS))


def _greedy(path):
    return [int(t) for t in generate(from_pretrained(path), PROMPT, max_new_tokens=NEW, stop_tokens=())[0]]


# ------------------------------------------------------------------------------- Llama + BitNetQuantConfig
LLAMA_FORMS = [
    dict(linear_class="bitlinear"),  # transformers' default: weight_scale divides
    dict(linear_class="autobitlinear"),  # multiplies
    dict(linear_class="autobitlinear", mode="online"),  # latent weights quantized at load
    dict(linear_class="bitlinear", use_rms_norm=True),  # BitLinear-internal RMSNorm
    dict(linear_class="autobitlinear", modules_to_not_convert=["lm_head", "model.layers.0.mlp.down_proj"]),
]


@pytest.fixture(scope="module")
def llama_model():
    return random_llama(seed=3, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=32)  # explicit head_dim: heads * head_dim (128) != hidden (64)


@pytest.mark.parametrize("form", LLAMA_FORMS, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_llama_family_matches_transformers(llama_model, tmp_path, form):
    path = save_llama(llama_model, tmp_path / "m", **form)
    ref_model = load_llama_reference(path)
    ref = reference_logits(ref_model, TOKENS)
    ours = _ours(path)
    assert positions_close(ours, ref) >= 0.6, np.abs(ours - ref).max()
    assert _greedy(path) == reference_greedy(ref_model, PROMPT, NEW)
    cfg = read_checkpoint(path).config
    assert (cfg.hidden_act, cfg.sub_norms, cfg.tie_word_embeddings, cfg.head_dim) == ("silu", False, False, 32)


def test_llama_family_saved_by_us_loads_in_transformers(llama_model, tmp_path):
    """Our HF writer keeps the family (LlamaForCausalLM + bitnet config, float linears, linear norms)."""
    src = save_llama(llama_model, tmp_path / "src", linear_class="bitlinear", use_rms_norm=True,
                     modules_to_not_convert=["lm_head", "model.layers.1.self_attn.q_proj"])
    out = save_pretrained(from_pretrained(src), tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    a, b = read_checkpoint(src), read_checkpoint(out)
    assert a.config == b.config and set(a.tensors) == set(b.tensors)
    for name, t in a.tensors.items():
        if hasattr(t, "codes"):
            np.testing.assert_array_equal(b.tensors[name].codes, t.codes, err_msg=name)
            assert b.tensors[name].scale == pytest.approx(t.scale, rel=1e-6), name
        else:
            np.testing.assert_array_equal(b.tensors[name], t, err_msg=name)
    # transformers runs our directory: the scale now multiplies (autobitlinear) where it divided, and its
    # last-bit rounding can tip one int8 activation tie, which moves a whole row by a few 1e-2
    ref = reference_logits(load_llama_reference(src), TOKENS)
    theirs = reference_logits(load_llama_reference(out), TOKENS)
    assert np.abs(theirs - ref).max() < 0.2 and np.mean(theirs.argmax(-1) == ref.argmax(-1)) >= 0.9


def test_llama_without_bitnet_quantization_config_is_refused(llama_model, tmp_path):
    llama_model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ConfigError, match="without a bitnet quantization_config.*not a ternary model"):
        from_pretrained(tmp_path / "plain")


@pytest.mark.parametrize(
    "qc, fragment",
    [
        ({"quant_method": "bitnet", "use_rms_norm": "yes"}, "use_rms_norm"),
        ({"quant_method": "bitnet", "rms_norm_eps": -1}, "rms_norm_eps"),
        ({"quant_method": "bitnet", "modules_to_not_convert": "lm_head"}, "modules_to_not_convert"),
        ({"quant_method": "bitnet", "modules_to_not_convert": ["model.layers.0.mlp.up_proj"]}, "must include lm_head"),
        ({"quant_method": "bitnet", "modules_to_not_convert": ["lm_head", "(("]}, "not a valid pattern"),
        ({"quant_method": "bitnet", "quantization_mode": "later"}, "quantization_mode"),
    ],
)
def test_bad_quantization_config_fields_are_named(llama_model, tmp_path, qc, fragment):
    path = save_llama(llama_model, tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = qc
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=fragment) as e:
        from_pretrained(path)
    assert "config.json" in str(e.value) and "\n" not in str(e.value)


def test_generation_config_eos_list_is_the_default_stop(llama_model, tmp_path):
    path = save_llama(llama_model, tmp_path / "m")
    free = [int(t) for t in generate(from_pretrained(path), PROMPT, max_new_tokens=NEW, stop_tokens=())[0]]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, free[2]]}))
    model = from_pretrained(path)
    assert free[2] in model.config.eos_token_ids and 2 in model.config.eos_token_ids
    assert [int(t) for t in generate(model, PROMPT, max_new_tokens=NEW)[0]] == free[: free.index(free[2]) + 1]


# -------------------------------------------------------------------------------------------- 1bitLLM
@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def onebit(request, tmp_path_factory):
    cfg = onebitllm_config(tie_word_embeddings=request.param)
    weights = onebitllm_weights(cfg, seed=5)
    return cfg, weights, save_onebitllm(cfg, weights, tmp_path_factory.mktemp("onebit") / "m")


def test_onebitllm_matches_its_definition(onebit):
    cfg, weights, path = onebit
    ref = onebitllm_logits(cfg, weights, TOKENS)
    ours = _ours(path)
    assert positions_close(ours, ref) >= 0.6, np.abs(ours - ref).max()
    assert _greedy(path) == onebitllm_greedy(cfg, weights, PROMPT, NEW)
    c = read_checkpoint(path).config
    assert (c.hidden_act, c.sub_norms, c.sub_norm_names) == ("silu", True, ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"))


def test_onebitllm_exported_as_transformers_bitnet(onebit, tmp_path):
    """Saved by us it becomes a transformers BitNetForCausalLM (hidden_act silu) computing the same logits."""
    from hf_reference import load_reference

    cfg, weights, path = onebit
    out = save_pretrained(from_pretrained(path), tmp_path / "out")
    ref = onebitllm_logits(cfg, weights, TOKENS)
    theirs = reference_logits(load_reference(out, "packed-autobitlinear"), TOKENS)
    assert positions_close(theirs, ref) >= 0.6


# ------------------------------------------------------------------------ GGUF in converters' conventions
@pytest.fixture(scope="module")
def llama_gguf_source(tmp_path_factory):
    model = random_llama(seed=11)  # hidden 256 / ffn 512: whole TQ blocks
    path = save_llama(model, tmp_path_factory.mktemp("lg") / "hf", linear_class="autobitlinear")  # exact scales
    return model, path


@pytest.mark.parametrize("kind", ["tq2_0", "tq1_0", "f16"])
def test_llama_gguf_equals_hf_load(llama_gguf_source, tmp_path, kind):
    model, hf = llama_gguf_source
    path = write_llama_gguf(llama_ternary(model), gguf_hparams(model.config), tmp_path / "m.gguf", kind)
    gg, ref = read_checkpoint(path), read_checkpoint(hf)
    assert (gg.config.sub_norms, gg.config.hidden_act, gg.config.tie_word_embeddings) == (False, "silu", False)
    for name, t in ref.tensors.items():  # q/k unpermuted back to the HF row order
        if hasattr(t, "codes"):
            np.testing.assert_array_equal(gg.tensors[name].codes, t.codes, err_msg=name)
    np.testing.assert_allclose(_ours(path), _ours(hf), atol=1e-5, rtol=0)


def test_llama_gguf_full_precision_is_refused(llama_gguf_source, tmp_path):
    import gguf

    model, _ = llama_gguf_source
    weights = llama_ternary(model)
    state = model.state_dict()
    weights = dict(weights, ternary={k: (state[k + ".weight"].numpy(), 1.0) for k in weights["ternary"]})
    path = write_llama_gguf(weights, gguf_hparams(model.config), tmp_path / "fp.gguf", "f16")
    with pytest.raises(CheckpointError, match="not ternary.*llama GGUF of full-precision weights"):
        read_checkpoint(path)
    del gguf


def test_onebitllm_bitnet_gguf_equals_hf_load(tmp_path):
    cfg = onebitllm_config(tie_word_embeddings=True)
    weights = onebitllm_weights(cfg, seed=2)
    hf = save_onebitllm(cfg, weights, tmp_path / "hf")
    path = write_onebitllm_gguf(cfg, weights, tmp_path / "m.gguf")  # no hidden_activation: SiLU
    assert read_checkpoint(path).config.hidden_act == "silu"
    np.testing.assert_allclose(_ours(path), _ours(hf), atol=1e-5, rtol=0)
    relu = write_onebitllm_gguf(cfg, weights, tmp_path / "r.gguf", hidden_activation="relu2")
    assert read_checkpoint(relu).config.hidden_act == "relu2"
    assert np.abs(_ours(relu) - _ours(hf)).max() > 1e-2  # the key is honoured: another function


def test_hidden_activation_key_is_checked(tmp_path):
    cfg = onebitllm_config(tie_word_embeddings=True)
    weights = onebitllm_weights(cfg, seed=2)
    with pytest.raises(CheckpointError, match="bitnet.hidden_activation = 'gelu'"):
        read_checkpoint(write_onebitllm_gguf(cfg, weights, tmp_path / "g.gguf", hidden_activation="gelu"))


def test_converter_permutation_is_undone_by_the_reader():
    from bitnet_jax.io._codecs import llama_qk_permutation

    w = np.arange(64 * 3).reshape(64, 3)
    assert np.array_equal(converter_permute(w, 4), w[llama_qk_permutation(64, 4)])
