"""Parity with transformers' BitNetForCausalLM: logits and greedy generation, every checkpoint form.

The reference is transformers itself loading the very directory we load (see ``hf_reference.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitnet_jax as bj
from bitnet_jax.model.layers import RMSNorm
from bitnet_jax.model import Transformer
from hf_reference import (
    FORMS,
    SPECS,
    Spec,
    load_reference,
    random_latent_model,
    reference_greedy,
    reference_linear_inputs,
    reference_logits,
    save_form,
    ternary_fractions,
)

LOGIT_ATOL = 1e-4
INPUT_ATOL = 1e-4  # the norm outputs feeding each quantizer are O(1)
TIE_MARGIN = 1e-3  # a legitimate int8 rounding flip sits this close (in quantized units) to a .5 boundary;
# the quantizers' scaled inputs of the two implementations differ by up to ~1e-4 of a unit (measured)
FLIPPED_ATOL = 0.1  # logits downstream of such a flip: a sanity bound only
NEW_TOKENS = 40


class ModelCache:
    """Checkpoint directories, our models and reference models, each built once per session."""

    def __init__(self, root: Path):
        self.root = root

    @functools.cache
    def path(self, spec: Spec, form: str) -> Path:
        """The directory of ``spec`` saved in ``form`` (every form holds the same latent model)."""
        return save_form(self.latent(spec), form, self.root / spec.name / form)

    @functools.cache
    def latent(self, spec: Spec):
        """The latent transformers model of ``spec``."""
        return random_latent_model(spec, seed=len(spec.name))

    @functools.cache
    def ours(self, spec: Spec, form: str, dtype: str = "float32") -> bj.BitNetModel:
        """Our packed model loaded from the directory, layers unrolled: the checks compare each layer's
        quantizer inputs by its name (scanned layers give the same logits: tests/model/test_scan_layers.py)."""
        return bj.from_pretrained(self.path(spec, form), dtype=dtype, scan_layers=False)

    @functools.cache
    def reference(self, spec: Spec, form: str):
        """transformers' model loaded from the directory."""
        return load_reference(self.path(spec, form), form)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> ModelCache:
    """The per-session cache of built checkpoints and loaded models."""
    return ModelCache(tmp_path_factory.mktemp("hf_parity"))


def random_tokens(spec: Spec, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random ids in ``[3, vocab)`` (clear of BOS/EOS, not that it matters)."""
    return np.random.default_rng(seed).integers(3, spec.vocab_size, size=shape).astype(np.int32)


spec_params = pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
form_params = pytest.mark.parametrize("form", FORMS)


# Execution order of the activation quantizers in a layer: (a linear reading it, our norm producing it).
QUANTIZER_INPUTS = (
    ("self_attn.q_proj", ("input_layernorm",)),
    ("self_attn.o_proj", ("self_attn", "attn_sub_norm")),
    ("mlp.gate_proj", ("post_attention_layernorm",)),
    ("mlp.down_proj", ("mlp", "ffn_sub_norm")),
)


@functools.cache
def _capturing_forward(module: Transformer):
    """jit(apply) that also returns every RMSNorm output (the quantizer inputs)."""

    def run(params, tokens):
        (logits, _), state = module.apply(
            {"params": params},
            tokens,
            capture_intermediates=lambda mdl, _: isinstance(mdl, RMSNorm),
            mutable=["intermediates"],
        )
        return logits, state["intermediates"]

    return jax.jit(run)


def our_forward_with_inputs(model: bj.BitNetModel, tokens: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Our jitted forward's logits and the float input of each quantizer, by transformers module name."""
    module = Transformer(model.config, model.form)
    logits, inter = _capturing_forward(module)(model.params, jnp.asarray(tokens))
    out = {}
    for i in range(model.config.num_hidden_layers):
        for linear, path in QUANTIZER_INPUTS:
            node = inter[f"layers_{i}"]
            for key in path:
                node = node[key]
            out[f"model.layers.{i}.{linear}"] = np.asarray(node["__call__"][0], np.float32)
    return np.asarray(logits), out


def int8_codes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token absmax int8 codes of ``x`` (from the definition, float32) and the pre-rounding values."""
    x = x.astype(np.float32)
    scaled = x * (np.float32(127) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(1e-5)))
    return np.clip(np.rint(scaled), -128, 127), scaled


def rounding_flip_onsets(ours: dict, ref: dict, config: bj.ModelConfig, batch: int, length: int) -> np.ndarray:
    """Per row, the first position downstream of an int8 rounding flip between ours and transformers.

    Quantizers are visited in execution order. Before its row's onset, a position must have matching
    inputs (within INPUT_ATOL) and every code that differs must sit within TIE_MARGIN of a rounding
    boundary in transformers' own value: then the flip is float round-off deciding a tie, not a bug.
    A flip at position t reaches positions >= t of its row (through attention) in later stages.
    """
    onset = np.full(batch, length)
    clean = np.arange(length)[None, :] < onset[:, None]
    for i in range(config.num_hidden_layers):
        for linear, _ in QUANTIZER_INPUTS:
            name = f"model.layers.{i}.{linear}"
            clean = np.arange(length)[None, :] < onset[:, None]
            input_diff = np.abs(ours[name] - ref[name]).max(-1)
            assert np.all(input_diff[clean] <= INPUT_ATOL), f"{name}: input differs by {input_diff[clean].max():.3e}"
            our_codes, _ = int8_codes(ours[name])
            ref_codes, ref_scaled = int8_codes(ref[name])
            flipped = (our_codes != ref_codes) & clean[..., None]
            tie_distance = np.abs(ref_scaled - np.floor(ref_scaled) - 0.5)
            assert np.all(tie_distance[flipped] < TIE_MARGIN), f"{name}: int8 codes differ away from a rounding tie"
            for b, t in zip(*np.nonzero(flipped.any(-1))):
                onset[b] = min(onset[b], t)
    return onset


@spec_params
@form_params
def test_logits_match_transformers(models, spec, form):
    """Float32 logits of two random sequences agree with transformers within 1e-4, layer by layer too.

    Two implementations may round an activation exactly at a .5 tie differently (float round-off);
    positions downstream of such a (checked) tie flip get a loose bound instead of 1e-4.
    """
    tokens = random_tokens(spec, (2, 20), seed=1)
    ours_model, ref_model = models.ours(spec, form), models.reference(spec, form)
    ours, our_inputs = our_forward_with_inputs(ours_model, tokens)
    public = np.asarray(bj.forward(ours_model, tokens))
    assert np.max(np.abs(public - ours)) <= LOGIT_ATOL, "bj.forward differs from the same jitted apply"
    ref = reference_logits(ref_model, tokens)
    assert ours.shape == ref.shape == (2, 20, spec.vocab_size)
    assert ref.std() > 0.1, "reference logits are near-constant: the test would prove little"
    onset = rounding_flip_onsets(our_inputs, reference_linear_inputs(ref_model, tokens), ours_model.config, 2, 20)
    clean = np.arange(20)[None, :] < onset[:, None]
    diff = np.abs(ours - ref).max(-1)
    print(
        f"[parity] {spec.name} {form}: max |logit diff| = {diff[clean].max():.3e} over {clean.sum()}/40 positions"
        f"; downstream of a tie flip: {diff[~clean].max() if (~clean).any() else 0.0:.3e}"
    )
    assert clean.sum() >= 30, f"too many positions downstream of rounding flips: {onset}"
    assert diff[clean].max() <= LOGIT_ATOL
    assert np.all(diff[~clean] <= FLIPPED_ATOL)


@spec_params
def test_reference_weights_are_mixed_ternary(models, spec):
    """The random latent weights quantize to a real mix of -1, 0 and +1 (else parity would be trivial)."""
    fractions = ternary_fractions(models.reference(spec, "packed-bitlinear"))
    assert all(f > 0.15 for f in fractions.values()), fractions


def test_forms_hold_the_same_model(models):
    """All four directories of one spec give transformers the same logits (so every form is exercised alike)."""
    spec = SPECS[0]
    tokens = random_tokens(spec, (1, 12), seed=2)
    logits = [reference_logits(models.reference(spec, f), tokens) for f in FORMS]
    for other in logits[1:]:
        np.testing.assert_allclose(other, logits[0], atol=1e-4)


@spec_params
@form_params
def test_greedy_generation_matches_transformers(models, spec, form):
    """40 greedy tokens for a batch of prompts of lengths 9, 1 and 13 equal transformers' generate(do_sample=False)
    run on each prompt alone, token for token."""
    rng = np.random.default_rng(4)
    prompts = [rng.integers(3, spec.vocab_size, size=n).tolist() for n in (9, 1, 13)]
    ours = bj.generate(models.ours(spec, form), prompts, max_new_tokens=NEW_TOKENS, stop_tokens=())
    ref = models.reference(spec, form)
    for prompt, row in zip(prompts, ours):
        assert row.tolist() == reference_greedy(ref, prompt, NEW_TOKENS), f"prompt of length {len(prompt)}"


@pytest.mark.parametrize("form", ["latent-plain", "packed-bitlinear"])
def test_bfloat16_logits_stay_close_to_float32(models, form):
    """dtype="bfloat16" keeps the packed weights and only rounds activations: logits stay close to f32."""
    spec = SPECS[1]
    tokens = random_tokens(spec, (2, 20), seed=5)
    f32 = np.asarray(bj.forward(models.ours(spec, form), tokens))
    bf16_model = models.ours(spec, form, "bfloat16")
    assert bf16_model.config.dtype == "bfloat16"
    bf16 = np.asarray(bj.forward(bf16_model, tokens))
    assert bf16.dtype == np.float32 and np.all(np.isfinite(bf16))
    scale = float(np.std(f32))
    err = float(np.max(np.abs(bf16 - f32)))
    print(f"[parity] bf16 {spec.name} {form}: max |bf16 - f32| = {err:.3e} (logit std {scale:.3f})")
    assert err < 0.25 * scale
    assert np.mean(np.argmax(bf16, -1) == np.argmax(f32, -1)) > 0.9
