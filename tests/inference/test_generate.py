"""generate(): KV-cache decoding equals full recomputation; sampling, stopping, buckets, errors."""

from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest

import bitnet_jax as bj
from bitnet_jax.inference.sampling import SamplingParams, filter_logits, sample
from conftest import random_model

gen = importlib.import_module("bitnet_jax.inference.generate")  # the module (the package exports the function)

PROMPTS = [[1, 17, 33, 250, 9, 4, 100], [1, 5], [1, 300, 301, 302, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]


def greedy_by_recompute(model, prompt, n, width=64):
    """Greedy continuation by re-running the whole-sequence forward (no cache) on the growing sequence.

    The sequence is right-padded to a fixed ``width`` so every step reuses one compiled program; the
    forward is causal, so the logits at the last real position do not see the padding.
    """
    seq = list(prompt)
    for _ in range(n):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(seq)] = seq
        logits = np.asarray(bj.forward(model, padded))[0, len(seq) - 1]
        seq.append(int(np.argmax(logits)))
    return seq[len(prompt) :]


# the cache is the same code under either head: the default run takes the tied one
@pytest.mark.parametrize("preset", ["tiny", pytest.param("tiny-untied", marks=pytest.mark.slow)])
def test_kv_cache_generation_equals_recompute_for_batched_prompts(preset):
    model = random_model(preset, seed=3)
    n = 12
    out = bj.generate(model, PROMPTS, max_new_tokens=n, stop_tokens=())
    assert len(out) == len(PROMPTS)
    for prompt, got in zip(PROMPTS, out):
        assert got.dtype == np.int32 and got.shape == (n,)
        assert list(got) == greedy_by_recompute(model, prompt, n)


def test_batched_equals_single(tiny_model):
    batched = bj.generate(tiny_model, PROMPTS, max_new_tokens=8, stop_tokens=())
    for prompt, row in zip(PROMPTS, batched):
        single = bj.generate(tiny_model, [prompt], max_new_tokens=8, stop_tokens=())[0]
        np.testing.assert_array_equal(row, single)


def test_stream_yields_the_same_tokens(tiny_model):
    kwargs = dict(max_new_tokens=9, temperature=0.8, top_k=50, seed=11, stop_tokens=())
    full = bj.generate(tiny_model, PROMPTS, **kwargs)
    steps = list(bj.generate_stream(tiny_model, PROMPTS, **kwargs))
    assert len(steps) == 9
    for i, row in enumerate(full):
        assert [s[i] for s in steps] == list(row)


def test_sampling_is_reproducible_per_seed(tiny_model):
    kwargs = dict(max_new_tokens=16, temperature=1.0, stop_tokens=())
    a = bj.generate(tiny_model, PROMPTS, seed=5, **kwargs)
    b = bj.generate(tiny_model, PROMPTS, seed=5, **kwargs)
    c = bj.generate(tiny_model, PROMPTS, seed=6, **kwargs)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_per_row_stop_token(tiny_model):
    free = bj.generate(tiny_model, PROMPTS[:2], max_new_tokens=10, stop_tokens=())
    stop = int(free[0][3])
    first = int(np.nonzero(free[0] == stop)[0][0])
    out = bj.generate(tiny_model, PROMPTS[:2], max_new_tokens=10, stop_tokens=[stop])
    np.testing.assert_array_equal(out[0], free[0][: first + 1])  # the stop token is included
    hits = np.nonzero(free[1] == stop)[0]
    expected = free[1][: hits[0] + 1] if hits.size else free[1]
    np.testing.assert_array_equal(out[1], expected)


def test_no_recompile_within_a_bucket(tiny_model):
    batch = 5  # a batch size no other test uses, so the compile cache starts without these programs
    bj.generate(tiny_model, [[1, 2, 3]] * batch, max_new_tokens=5, stop_tokens=())
    size = gen._generate_loop._cache_size()
    bj.generate(tiny_model, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]] * batch, max_new_tokens=12, stop_tokens=())
    bj.generate(tiny_model, [[4, 4]] * batch, max_new_tokens=16, temperature=0.0, stop_tokens=[3])
    one = bj.generate(tiny_model, [[1, 2, 3]] * batch, max_new_tokens=1, stop_tokens=())  # a one-token call
    assert gen._generate_loop._cache_size() == size
    assert [len(r) for r in one] == [1] * batch
    bj.generate(tiny_model, [list(range(1, 30))] * batch, max_new_tokens=5, stop_tokens=())  # next prompt bucket
    assert gen._generate_loop._cache_size() == size + 1


def np_filter(logits, temperature, top_k, top_p):
    """Reference top-k / top-p filtering from the definitions (one row)."""
    z = logits.astype(np.float64) / temperature
    keep = np.ones_like(z, bool)
    order = np.argsort(-z, kind="stable")
    if top_k is not None:
        keep[order[top_k:]] = False
    if top_p is not None:
        p = np.exp(z[order] - z[order].max())
        p /= p.sum()
        cum = np.cumsum(p)
        n_keep = int(np.searchsorted(cum, top_p - 1e-12) + 1)  # smallest prefix with mass >= top_p
        keep[order[n_keep:]] = False
    return keep


@pytest.mark.parametrize("top_k,top_p", [(5, None), (None, 0.5), (20, 0.9), (None, 0.05)])
def test_filter_logits_matches_reference(top_k, top_p):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (3, 64)).astype(np.float32)
    params = SamplingParams.create(0.7, top_k, top_p, 64)
    got = np.isfinite(np.asarray(filter_logits(jax.numpy.asarray(logits), params)))
    for row in range(3):
        np.testing.assert_array_equal(got[row], np_filter(logits[row], 0.7, top_k, top_p))


def test_top_k_one_is_greedy():
    rng = np.random.default_rng(1)
    logits = jax.numpy.asarray(rng.normal(0, 1, (4, 100)), jax.numpy.float32)
    params = SamplingParams.create(1.5, 1, None, 100)
    got = sample(logits, jax.random.PRNGKey(0), params)
    np.testing.assert_array_equal(np.asarray(got), np.argmax(np.asarray(logits), -1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=4, temperature=-1.0), "temperature"),
        (dict(max_new_tokens=4, temperature=1.0, top_k=0), "top_k"),
        (dict(max_new_tokens=4, temperature=1.0, top_p=0.0), "top_p"),
        (dict(max_new_tokens=4, temperature=1.0, top_p=1.5), "top_p"),
        (dict(max_new_tokens=300), "context"),
    ],
)
def test_invalid_arguments_raise_clear_errors(tiny_model, kwargs, match):
    with pytest.raises(bj.BitNetError, match=match):
        bj.generate(tiny_model, [[1, 2, 3]], **kwargs)


def test_invalid_prompts_raise_clear_errors(tiny_model):
    with pytest.raises(bj.GenerationError, match="context"):
        bj.generate(tiny_model, [list(range(1, 300))], max_new_tokens=1)
    with pytest.raises(bj.GenerationError, match="prompt 1 holds token id 9999"):
        bj.generate(tiny_model, [[1], [9999]], max_new_tokens=1)
    with pytest.raises(bj.GenerationError, match="no tokenizer"):
        bj.generate(tiny_model, "hello", max_new_tokens=1)
    with pytest.raises(bj.GenerationError, match="prompt 0 is empty"):
        bj.generate(tiny_model, [[]], max_new_tokens=1)
    with pytest.raises(bj.GenerationError, match="tokens"):
        bj.forward(tiny_model, [[1, 600]])


def test_bfloat16_activations_track_float32():
    model32 = random_model("tiny", seed=2)
    model16 = bj.BitNetModel(model32.config.replace(dtype="bfloat16"), model32.params, form=model32.form)
    tokens = [[1, 50, 60, 70, 80, 90]]
    a = np.asarray(bj.forward(model32, tokens))
    b = np.asarray(bj.forward(model16, tokens))
    assert b.dtype == np.float32
    assert np.max(np.abs(a - b)) < 0.05 * np.max(np.abs(a)) + 0.05
