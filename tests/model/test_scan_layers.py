"""``scan_layers``: one compiled layer body over stacked weights gives the unrolled model's numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import packed_form

from bitnet_jax import BitNetModel, ConfigError, ModelConfig, forward, from_pretrained, generate, save_pretrained
from bitnet_jax.model import Form, Transformer, init_cache, stack_layers, unstack_layers

from pallas_kernels import cpu  # noqa: E402

BACKENDS = ["xla"] + (["cpu"] if cpu.AVAILABLE else [])


def _models(backend: str, preset: str = "tiny") -> tuple[BitNetModel, BitNetModel]:
    config = ModelConfig.preset(preset)
    params = Transformer(config, packed_form(backend)).init(jax.random.PRNGKey(3), jnp.zeros((1, 1), jnp.int32))["params"]
    unrolled = BitNetModel(config, params, form=packed_form(backend))
    scanned = BitNetModel(config, stack_layers(params, config.num_hidden_layers),
                          form=packed_form(backend, scan_layers=True))
    return unrolled, scanned


# every backend scans with both heads; the default run takes one head per backend (the scanned layers are
# the same code under either head; tests/model/test_head.py covers the heads)
SLOW_SCAN_CASES = {("xla", "tiny"), ("cpu", "tiny-untied")}
SCAN_CASES = [pytest.param(b, p, marks=[pytest.mark.slow] if (b, p) in SLOW_SCAN_CASES else [])
              for b in BACKENDS for p in ("tiny", "tiny-untied")]


@pytest.mark.parametrize("backend,preset", SCAN_CASES)
def test_scanned_logits_and_tokens_equal_unrolled(backend, preset):
    unrolled, scanned = _models(backend, preset)
    tokens = np.random.default_rng(0).integers(0, unrolled.config.vocab_size, (3, 11))
    a, b = np.asarray(forward(unrolled, tokens)), np.asarray(forward(scanned, tokens))
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    prompts = [[1, 5, 9], [7, 8, 9, 10, 11, 12, 13], [42]]  # different lengths: per-row cache writes
    ref = generate(unrolled, prompts, max_new_tokens=12, stop_tokens=())
    got = generate(scanned, prompts, max_new_tokens=12, stop_tokens=())
    assert [t.tolist() for t in got] == [t.tolist() for t in ref]


def test_stacked_cache_matches_per_layer_cache():
    unrolled, scanned = _models("xla")
    config = unrolled.config
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 512, (2, 6)), jnp.int32)
    positions = jnp.asarray([[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]], jnp.int32)  # row 1 starts at slot 3
    _, per_layer = Transformer(config, unrolled.form).apply(
        {"params": unrolled.params}, tokens, positions, init_cache(config, 2, 16))
    _, stacked = Transformer(config, scanned.form).apply(
        {"params": scanned.params}, tokens, positions, init_cache(config, 2, 16, stacked=True))
    for i, layer in enumerate(per_layer):
        for name in ("k", "v"):
            np.testing.assert_allclose(np.asarray(stacked[name][i]), np.asarray(layer[name]), atol=1e-6)
    assert not np.asarray(stacked["k"][:, 1, :3]).any()  # slots before row 1's start stay empty


def test_stack_roundtrip_and_load_save(tmp_path):
    unrolled, scanned = _models("xla")
    back = unstack_layers(scanned.params)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(unrolled.params)
    for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(unrolled.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    save_pretrained(scanned, tmp_path / "m")  # exported through the unrolled names
    loaded = from_pretrained(tmp_path / "m", kernel="xla", scan_layers=True)
    assert loaded.form.scan_layers and "layers" in loaded.params and "layers_0" not in loaded.params
    tokens = [[1, 2, 3, 4]]
    np.testing.assert_allclose(np.asarray(forward(loaded, tokens)), np.asarray(forward(unrolled, tokens)), atol=1e-5)


def test_training_form_refuses_scan_layers():
    with pytest.raises(ConfigError, match="scan_layers and the int8 head exist only in the packed form"):
        Form(scan_layers=True)


def test_scanned_model_initialises_stacked_parameters():
    """``init`` of a scanned model creates the same stacks stack_layers builds (one layer per row)."""
    config = ModelConfig.preset("tiny")
    form = packed_form("xla", scan_layers=True)
    params = Transformer(config, form).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
    assert "layers" in params and "layers_0" not in params
    codes = params["layers"]["self_attn"]["q_proj"]["weight_packed"].codes
    assert codes.shape[0] == config.num_hidden_layers
    assert np.isfinite(np.asarray(forward(BitNetModel(config, params, form=form), [[1, 2, 3]]))).all()


@pytest.mark.skipif(not cpu.AVAILABLE, reason="the CPU kernel reads stacked layers in place")
def test_loading_scans_deep_models_on_a_kernel_that_reads_stacks_in_place(tmp_path, monkeypatch):
    """``scan_layers=None`` (from_pretrained's default): deep models on the CPU kernel are scanned, shallow
    ones, kernels without an in-place stacked read and models whose layers differ are unrolled; both
    forms give the same tokens, and the packed-layout cache gives back the form it stored."""
    import dataclasses

    from bitnet_jax.io import model_from_checkpoint, random_checkpoint
    from bitnet_jax.io.loading import SCAN_MIN_LAYERS, resolve_scan_layers
    from pallas_kernels import get_kernel

    deep = dataclasses.replace(ModelConfig.preset("tiny"), num_hidden_layers=SCAN_MIN_LAYERS)
    ckpt = random_checkpoint(deep, seed=5)
    cpu_kernel, xla_kernel = get_kernel("cpu"), get_kernel("xla")
    assert resolve_scan_layers(None, SCAN_MIN_LAYERS, cpu_kernel)
    assert not resolve_scan_layers(None, SCAN_MIN_LAYERS - 1, cpu_kernel)
    assert not resolve_scan_layers(None, SCAN_MIN_LAYERS, xla_kernel)
    assert resolve_scan_layers(True, 1, xla_kernel) and not resolve_scan_layers(False, 64, cpu_kernel)
    auto = model_from_checkpoint(ckpt, cpu_kernel, scan_layers=None)
    assert auto.form.scan_layers and "layers" in auto.params
    unrolled = model_from_checkpoint(ckpt, cpu_kernel, scan_layers=False)
    assert not model_from_checkpoint(ckpt, xla_kernel, scan_layers=None).form.scan_layers
    prompts = [[1, 5, 9], [7, 8, 9, 10, 11]]
    assert ([t.tolist() for t in generate(auto, prompts, max_new_tokens=6, stop_tokens=())]
            == [t.tolist() for t in generate(unrolled, prompts, max_new_tokens=6, stop_tokens=())])

    odd = dataclasses.replace(deep, modules_to_not_convert=("lm_head", "model.layers.1.self_attn.q_proj"))
    assert not model_from_checkpoint(random_checkpoint(odd, seed=5), cpu_kernel, scan_layers=None).form.scan_layers

    monkeypatch.setenv("BITNET_JAX_PACKED_CACHE", str(tmp_path / "cache"))
    path = save_pretrained(unrolled, tmp_path / "deep.gguf", "gguf")
    first = from_pretrained(path, kernel="cpu", packed_cache=True)  # decodes the file, fills the cache
    second = from_pretrained(path, kernel="cpu", packed_cache=True)  # reads the cache
    assert first.form.scan_layers and second.form.scan_layers and "layers" in second.params
    assert not from_pretrained(path, kernel="cpu", scan_layers=False, packed_cache=True).form.scan_layers
