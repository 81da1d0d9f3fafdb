"""The int8 head's perplexity on the bundled (trained) default model stays within a small tolerance.

The text is held out from the model's training: ``ipaddress.py`` is one of the four stdlib files its
run config kept for validation (docs/default_model.md). Full measurements over the held-out sets:
``scripts/head_perplexity.py`` -> ``benchmarks/results/cpu_head_perplexity.json``.
"""

from __future__ import annotations

import dataclasses
import math
import sysconfig
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from bitnet_jax import DEFAULT_MODEL
from bitnet_jax.inference import perplexity
from bitnet_jax.model.head import with_int8_head
from bitnet_jax.io.loading import from_pretrained

HELD_OUT = Path(sysconfig.get_paths()["stdlib"]) / "ipaddress.py"
WINDOWS, SEQ_LEN = 16, 256
TOLERANCE = 0.0025  # relative perplexity change allowed for the int8 head (measured: about 1e-5)


@pytest.fixture(scope="module")
def scored():
    """(exact model, int8-head model, held-out ids, exact nll)."""
    if not HELD_OUT.is_file():
        pytest.skip(f"{HELD_OUT} is not installed (a stripped standard library)")
    model = from_pretrained(DEFAULT_MODEL)
    ids = model.tokenizer.encode(HELD_OUT.read_text(encoding="utf-8"), add_bos=True)[: WINDOWS * SEQ_LEN + 1]
    nll, count = perplexity(model, ids, SEQ_LEN)
    assert count == WINDOWS * SEQ_LEN
    return model, with_int8_head(model), ids, nll


def test_default_model_predicts_held_out_text(scored):
    _, _, _, nll = scored
    assert math.exp(nll) < 200  # a uniform guess over the 4096 ids scores 4096


def test_int8_head_perplexity_within_tolerance(scored):
    model, int8, ids, nll_exact = scored
    assert int8.params["embed_tokens"].dtype == jnp.int8 and "embed_scales" in int8.params
    nll_int8, _ = perplexity(int8, ids, SEQ_LEN)
    assert abs(math.exp(nll_int8 - nll_exact) - 1) < TOLERANCE


def test_tolerance_catches_a_coarser_head(scored):
    """A 4-bit-like head (15 levels per row) must fail the same tolerance: the check has teeth."""
    _, int8, ids, nll_exact = scored
    params = dict(int8.params)
    codes = np.asarray(params["embed_tokens"], np.float32)
    params["embed_tokens"] = jnp.asarray(np.clip(np.rint(codes / 17) * 17, -127, 127).astype(np.int8))
    nll_coarse, _ = perplexity(dataclasses.replace(int8, params=params), ids, SEQ_LEN)
    assert abs(math.exp(nll_coarse - nll_exact) - 1) > TOLERANCE
