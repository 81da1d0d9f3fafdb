"""Starting a fine-tune from checkpoints written by transformers itself (BitNet latent and packed, a full-
precision Llama), from a GGUF and from a bitnet-jax run; exports after training load in transformers
with the logits bitnet-jax computes; the quantization warm-up and remat change the numbers as defined."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import bitnet_jax as bj
from bitnet_jax.config import config_from_dict
from bitnet_jax.config.run import InitConfig
from bitnet_jax.errors import ConfigError
from bitnet_jax.model import Form, Transformer
from bitnet_jax.model.linear import QATLinear
from bitnet_jax.train.init import latent_from_ternary, load_init
from bitnet_jax.train.loop import train
from bitnet_jax.train.step import blended, make_module, token_nll
from bitnet_jax.io.checkpoint import TernaryTensor
from hf_reference import Spec, eager_torch, load_reference, random_latent_model, reference_logits, save_form

# hidden 256 and intermediate 256: every row fills TQ2_0's 256-weight blocks
SPEC = Spec("init-256", 389, 4, 2, 64, 256, 2, True)
TOKENS = np.array([[1, 5, 17, 200, 33, 8, 99, 3, 250, 12, 44, 71]])


def _tokenizer_json(path, vocab: int) -> None:
    """A word-level tokenizer.json whose ids cover the model's vocabulary (the run needs the model's tokenizer)."""
    from tokenizers import Tokenizer as HFTok, models, pre_tokenizers

    vocab_map = {f"w{i}": i for i in range(vocab)}
    tok = HFTok(models.WordLevel(vocab_map, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))


def _data(tmp_path, n=40, seed=0):
    rng = np.random.default_rng(seed)
    lines = [json.dumps({"text": " ".join(f"w{int(i)}" for i in rng.integers(3, 389, rng.integers(8, 40)))})
             for _ in range(n)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_config(tmp_path, source, *extra, **sections):
    data = {"paths": [str(_data(tmp_path))], "seq_len": 32, "val_fraction": 0.2}
    raw = {"init": {"from": str(source)}, "data": data,
           "training": {"steps": 3, "batch_size": 4}, "schedule": {"warmup_steps": 1},
           "checkpoint": {"dir": str(tmp_path / "run"), "every": 3},
           "logging": {"every": 1, "eval_every": 3, "eval_batches": 1, "progress": False}}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent")
    save_form(random_latent_model(SPEC, seed=3), "latent-online", out)
    _tokenizer_json(out, SPEC.vocab_size)
    return out


def test_hf_latent_start_is_transformers_model(latent_dir):
    start = load_init(InitConfig(from_=str(latent_dir)))
    assert "latent" in start.note and start.tokenizer is not None
    ref = reference_logits(load_reference(latent_dir, "latent-online"), TOKENS)
    ours = np.asarray(Transformer(start.config, Form()).apply({"params": start.params}, jnp.asarray(TOKENS))[0])
    close = np.isclose(ours, ref, atol=1e-4, rtol=0).mean()
    assert close > 0.6, close  # int8 rounding ties flip the rest (facts sheet section 2)
    np.testing.assert_allclose(ours, ref, atol=5e-2)


def test_packed_start_keeps_the_packed_model_function(tmp_path):
    save_form(random_latent_model(SPEC, seed=4), "packed-autobitlinear", tmp_path)
    _tokenizer_json(tmp_path, SPEC.vocab_size)
    start = load_init(InitConfig(from_=str(tmp_path)))
    assert "packed codes only" in start.note
    packed = bj.from_pretrained(tmp_path, scan_layers=False)  # per-layer names, as the latent tree's
    # exactly: every latent weight quantizes to the packed model's codes and scale
    from flax.traverse_util import flatten_dict
    from pallas_kernels.layouts import unpack
    from bitnet_jax.model.quant import quantize_weights

    latent, stored = flatten_dict(start.params), flatten_dict(packed.params)
    checked = 0
    for path, w in latent.items():
        if path[-1] != "weight" or not path[-2].endswith("_proj"):
            continue
        wq, s_w = quantize_weights(np.asarray(w))
        np.testing.assert_array_equal(np.asarray(unpack(stored[path[:-1] + ("weight_packed",)])), wq, err_msg=str(path))
        np.testing.assert_allclose(float(stored[path[:-1] + ("weight_scale",)]), 1.0 / float(s_w), rtol=1e-6)
        checked += 1
    assert checked == 7 * SPEC.num_hidden_layers
    # and the function: the float fake-quantized form sums in float32, the packed one in int32, so an
    # activation a hair from a rounding boundary can round the other way in one form (facts sheet
    # section 2) and shift the later positions' logits by a few hundredths
    ours = np.asarray(Transformer(start.config, Form()).apply({"params": start.params}, jnp.asarray(TOKENS))[0])
    theirs = np.asarray(bj.forward(packed, TOKENS))
    np.testing.assert_allclose(ours, theirs, atol=0.15)
    # codes * scale / p quantizes back to exactly those codes and that scale
    rng = np.random.default_rng(0)
    codes = rng.choice([-1, 0, 1], size=(8, 16), p=[0.3, 0.4, 0.3]).astype(np.int8)
    from pallas_kernels.layouts import pack_rows4

    t = TernaryTensor(pack_rows4(codes), 0.37)
    back = TernaryTensor.from_latent(latent_from_ternary(t))
    np.testing.assert_array_equal(back.codes, t.codes)
    assert abs(back.scale - 0.37) < 1e-6


def test_llama_start_keeps_its_architecture_or_maps_onto_bitnet(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=389, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                         tie_word_embeddings=False)).float()
    llama.save_pretrained(tmp_path / "llama")
    _tokenizer_json(tmp_path / "llama", 389)
    own = load_init(InitConfig(from_=str(tmp_path / "llama")))  # the ternary Llama family (Llama3-8B-1.58 style)
    assert own.config.hidden_act == "silu" and not own.config.sub_norms and not own.config.tie_word_embeddings
    np.testing.assert_array_equal(own.params["layers_1"]["mlp"]["up_proj"]["weight"],
                                  llama.state_dict()["model.layers.1.mlp.up_proj.weight"].numpy())
    start = load_init(InitConfig(from_=str(tmp_path / "llama"), architecture="bitnet"))
    assert start.config.hidden_act == "relu2" and not start.config.tie_word_embeddings
    assert "2 sub-norms" not in start.note and "4 sub-norms inserted" in start.note
    sd = llama.state_dict()
    np.testing.assert_array_equal(start.params["layers_1"]["mlp"]["up_proj"]["weight"],
                                  sd["model.layers.1.mlp.up_proj.weight"].numpy())
    np.testing.assert_array_equal(start.params["lm_head"], sd["lm_head.weight"].numpy())
    np.testing.assert_array_equal(start.params["layers_0"]["self_attn"]["attn_sub_norm"]["weight"], np.ones(64))
    # a conversion run with the quantization warm-up: lambda rises 0, 1/2, 1 over the first steps
    cfg = _run_config(tmp_path, tmp_path / "llama", init={"architecture": "bitnet"},
                      training={"steps": 4, "quant_warmup_steps": 2})
    train(cfg, quiet=True)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("quant_blend") for r in records if "loss" in r] == [0.0, 0.5, None, None]


def test_blend_is_the_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 16)).astype(np.float32)
    w = (rng.normal(size=(8, 16)) * 0.05).astype(np.float32)
    full = np.asarray(QATLinear(8, quantize=False).apply({"params": {"weight": w}}, x))
    quantized = np.asarray(QATLinear(8).apply({"params": {"weight": w}}, x))
    from bitnet_jax.model import quant

    for lam in (0.0, 0.3, 1.0):
        lam_a = jnp.float32(lam)
        layer = QATLinear(8, weight_quantizer=blended(quant.fake_quantize_weights, lam_a),
                          activation_quantizer=blended(quant.fake_quantize_activations, lam_a))
        y = np.asarray(layer.apply({"params": {"weight": w}}, x))
        s_x = 127.0 / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
        xq = np.clip(np.round(x * s_x), -128, 127) / s_x
        s_w = 1.0 / np.abs(w).mean()
        wq = np.clip(np.round(w * s_w), -1, 1) / s_w
        xb, wb = x + lam * (xq - x), w + lam * (wq - w)
        np.testing.assert_allclose(y, xb @ wb.T, rtol=1e-4, atol=1e-5)
        g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x)))({"weight": jnp.asarray(w)})["weight"]
        np.testing.assert_allclose(np.asarray(g), np.broadcast_to(xb.sum(0), w.shape), rtol=1e-4, atol=1e-5)  # STE
    np.testing.assert_allclose(np.asarray(QATLinear(8, weight_quantizer=blended(quant.fake_quantize_weights, jnp.float32(0)),
                                                   activation_quantizer=blended(quant.fake_quantize_activations,
                                                                                jnp.float32(0))).apply(
        {"params": {"weight": w}}, x)), full, rtol=1e-5, atol=1e-6)
    assert not np.allclose(full, quantized, atol=1e-3)


def test_remat_gives_the_same_loss_and_gradients():
    from tests.conftest import random_model

    model = random_model("tiny", packed=False)
    windows = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 17)), jnp.int32)
    out = {}
    for policy in ("none", "nothing_saveable", "dots_saveable"):
        module = make_module(model.config, remat=policy)
        out[policy] = jax.jit(jax.value_and_grad(lambda p: token_nll(module, p, windows)))(model.params)
    for policy in ("nothing_saveable", "dots_saveable"):
        np.testing.assert_allclose(float(out[policy][0]), float(out["none"][0]), rtol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(out[policy][1]), jax.tree_util.tree_leaves(out["none"][1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_fine_tune_exports_load_in_transformers_with_equal_logits(latent_dir, tmp_path):
    export = tmp_path / "export"
    cfg = _run_config(tmp_path, latent_dir, export={"dir": str(export),
                                                    "formats": ["hf", "hf-latent", "gguf-i2_s", "gguf-tq2_0"]})
    final = train(cfg, quiet=True)
    assert "before_val_loss" in final  # a fine-tune evaluates its start
    ours = {fmt: np.asarray(bj.forward(bj.from_pretrained(export / name), TOKENS))
            for fmt, name in (("hf", "hf"), ("hf-latent", "hf-latent"), ("i2_s", "model-i2_s.gguf"),
                              ("tq2_0", "model-tq2_0.gguf"))}
    for fmt, form in (("hf", "packed-autobitlinear"), ("hf-latent", "latent-online")):
        hf_model = load_reference(export / fmt, form)
        ref = reference_logits(hf_model, TOKENS)
        # float round-off tips the odd int8 activation tie, and a flip spreads to the later positions:
        # most logits agree to 1e-4, none by more than a flip's size (facts sheet section 2)
        diff = np.abs(ours[fmt] - ref)
        assert np.median(diff) < 1e-4 and np.mean(diff < 1e-4) > 0.5 and diff.max() < 0.25, (fmt, diff.max())
    # the latent export, quantized by transformers' own online weight quantizer, is exactly the packed export
    from hf_reference import absmean_ternary
    from safetensors.numpy import load_file

    packed = load_file(str(export / "hf" / "model.safetensors"))
    with eager_torch():
        layer = load_reference(export / "hf-latent", "latent-online").model.layers[1].mlp.down_proj
        q, s_w = absmean_ternary(layer.weight)
    from pallas_kernels.layouts import unpack_rows4

    np.testing.assert_array_equal(unpack_rows4(packed["model.layers.1.mlp.down_proj.weight"]), q.numpy())
    np.testing.assert_allclose(packed["model.layers.1.mlp.down_proj.weight_scale"], [1 / float(s_w)], rtol=1e-5)
    # every export holds the same ternary model: the HF latent one exactly; the GGUF files store the
    # embedding (the tied head too) in F16 and TQ2_0 its block scales in F16, so they agree to F16 round-off (and the int8 activation codes that tips)
    np.testing.assert_allclose(ours["hf-latent"], ours["hf"], atol=1e-4)
    np.testing.assert_allclose(ours["tq2_0"], ours["i2_s"], atol=2e-2)
    scale = np.abs(ours["hf"]).mean()
    assert np.median(np.abs(ours["i2_s"] - ours["hf"])) < 3e-2 * scale  # F16 inputs tip many int8 codes
    assert np.corrcoef(ours["i2_s"].ravel(), ours["hf"].ravel())[0, 1] > 0.999


def test_run_and_gguf_starts(latent_dir, tmp_path):
    cfg = _run_config(tmp_path, latent_dir)
    train(cfg, quiet=True)
    from bitnet_jax.train.checkpoint import RunCheckpointer

    ckpt = RunCheckpointer(tmp_path / "run", keep=5)
    trained = ckpt.restore_params(3)
    ckpt.close()
    start = load_init(InitConfig(from_=str(tmp_path / "run")))
    assert "bitnet-jax run" in start.note
    for a, b in zip(jax.tree_util.tree_leaves(start.params), jax.tree_util.tree_leaves(trained)):
        np.testing.assert_array_equal(a, np.asarray(b))
    packed = bj.from_pretrained(latent_dir)
    from bitnet_jax.train.export import write_export
    from bitnet_jax.model import BitNetModel

    latent = BitNetModel(start.config, start.params, start.tokenizer, form=Form())
    gguf = write_export(latent, tmp_path / "m.gguf", "gguf-tq2_0")
    from_gguf = load_init(InitConfig(from_=str(gguf)))  # GGUF now carries any tokenizers model, word-level too
    text = "def add(a, b): return a + b"
    assert from_gguf.tokenizer is not None
    assert from_gguf.tokenizer.encode(text) == start.tokenizer.encode(text)
    assert packed is not None


def test_model_section_must_match_the_checkpoint(latent_dir, tmp_path):
    cfg = config_from_dict({"init": {"from": str(latent_dir)}, "model": {"preset": "tiny"},
                            "data": {"paths": [str(_data(tmp_path))], "seq_len": 32},
                            "checkpoint": {"dir": str(tmp_path / "run")}})
    with pytest.raises(ConfigError, match=r"model.vocab_size: the run config says 512 but .* has 389"):
        train(cfg, quiet=True)
    with pytest.raises(ConfigError, match=r"init.from: .*nope does not exist"):
        load_init(InitConfig(from_=str(tmp_path / "nope")))
