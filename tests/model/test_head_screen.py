"""The screened greedy head: the exact head's argmax, read through an int8 screen of the table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitnet_jax as bj
from bitnet_jax.errors import ConfigError, KernelError
from bitnet_jax.model import head as head_lib
from pallas_kernels import cpu

pytestmark = pytest.mark.skipif(not cpu.AVAILABLE, reason="the CPU kernel extension is not built")


@pytest.fixture(params=cpu.supported_isas() or ["none"])
def isa(request):
    """Every instruction-set path this CPU can run, each forced in turn."""
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa(None)


def _screen(table):
    codes, scales = head_lib.screen_table(np.asarray(table))
    return jnp.asarray(cpu.pack_screen(codes)), jnp.asarray(scales)


def _greedy(x, table):
    tokens, rescored = jax.jit(cpu.head_greedy)(jnp.asarray(x), table, *_screen(table))
    return np.asarray(tokens), np.asarray(rescored)


def _exact_argmax(x, table):
    return np.asarray(jnp.argmax(jax.jit(cpu.head_float)(jnp.asarray(x), table), axis=-1))


@pytest.mark.parametrize("table_dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("shape", [(1, 300, 64), (3, 1000, 200), (9, 2000, 2560)], ids=lambda s: "x".join(map(str, s)))
def test_greedy_is_the_exact_heads_argmax(shape, table_dtype, isa):
    m, v, d = shape
    rng = np.random.default_rng(v + d)
    x = rng.standard_normal((m, d)).astype(np.float32)
    x[:, rng.random(d) < 0.02] *= 30  # outlier channels, as a real hidden state has
    table = rng.standard_normal((v, d)).astype(np.float32) * 0.02
    table[7] = 0.0  # a zero row: scale 0, exactly 0
    table = jnp.asarray(table).astype(table_dtype)
    tokens, rescored = _greedy(x, table)
    np.testing.assert_array_equal(tokens, _exact_argmax(x, table))
    # against an independent float64 product (the float32 head can only differ on a near-tie)
    ref = x.astype(np.float64) @ np.asarray(table.astype(jnp.float32), np.float64).T
    assert (ref[np.arange(m), tokens] >= ref.max(axis=1) - 1e-4).all()
    assert (rescored < v / 4).all(), rescored  # the screen really prunes the table


def test_near_ties_the_screen_cannot_see_are_decided_exactly(isa):
    """Rows with the same int8 codes, one bfloat16 step apart, and exact ties (first index wins)."""
    rng = np.random.default_rng(3)
    d = 256
    base = (rng.standard_normal(d) * 0.02).astype(np.float32)
    x = (np.sign(base) * np.abs(rng.standard_normal((4, d)))).astype(np.float32)  # the planted rows lead
    rows = rng.standard_normal((64, d)).astype(np.float32) * 0.002  # far below the planted rows
    bumped = jnp.asarray(base).astype(jnp.bfloat16)
    bits = np.asarray(bumped).view(np.uint16).copy()
    small = int(np.argmin(np.abs(base)))
    bits[small] += 1  # one bfloat16 step up in magnitude (sign-magnitude bits) at the smallest value
    above = jnp.asarray(bits.view(jnp.bfloat16))
    table = jnp.concatenate([jnp.asarray(rows).astype(jnp.bfloat16), bumped[None], above[None], bumped[None]])
    codes, _ = head_lib.screen_table(np.asarray(table))
    assert (codes[64] == codes[65]).all()  # the screen alone cannot order them
    tokens, rescored = _greedy(x, table)
    np.testing.assert_array_equal(tokens, _exact_argmax(x, table))
    assert (rescored >= 3).all() and (tokens != 66).all()  # all three recomputed; the first of a tie wins
    x_neg = -x
    np.testing.assert_array_equal(_greedy(x_neg, table)[0], _exact_argmax(x_neg, table))


def test_degenerate_rows_take_the_full_head(isa):
    rng = np.random.default_rng(5)
    table = jnp.asarray(rng.standard_normal((500, 96)).astype(np.float32)).astype(jnp.bfloat16)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    x[0] = 0.0  # every logit 0: argmax is 0
    x[1, 5] = np.nan  # every logit NaN: argmax is 0 (the first NaN)
    tokens, rescored = _greedy(x, table)
    np.testing.assert_array_equal(tokens, _exact_argmax(x, table))
    assert rescored[0] == rescored[1] == 500 and rescored[2] < 500


def test_float_head_is_batch_invariant(isa):
    """Each output is computed alike for every M: what lets the screen recompute single rows bit for bit."""
    rng = np.random.default_rng(8)
    table = jnp.asarray(rng.standard_normal((300, 2560)).astype(np.float32)).astype(jnp.bfloat16)
    x = jnp.asarray(rng.standard_normal((9, 2560)).astype(np.float32))
    full = np.asarray(cpu.head_float(x, table))
    for i in range(9):
        np.testing.assert_array_equal(np.asarray(cpu.head_float(x[i : i + 1], table))[0], full[i])


def test_head_greedy_checks_its_operands():
    table = jnp.zeros((10, 64), jnp.bfloat16)
    codes, scales = _screen(table)
    with pytest.raises(KernelError, match="head_greedy"):
        cpu.head_greedy(jnp.zeros((1, 64)), table, codes[:, :64], scales)
    with pytest.raises(KernelError, match="pack_screen"):  # row-major codes: not the layout the kernel reads
        cpu.head_greedy(jnp.zeros((1, 64)), table, jnp.zeros((10, 64), jnp.int8), scales)
    with pytest.raises(KernelError, match="head_greedy"):
        cpu.head_greedy(jnp.zeros((1, 64)), table, codes.astype(jnp.int32), scales)


def test_screen_layout_definition():
    """Byte 4 r + t of block b of group g is codes[16 g + r, 4 b + t]; zero past the last row and column,
    and a table packed a chunk of rows at a time is the same."""
    rng = np.random.default_rng(11)
    codes = rng.integers(-127, 128, (37, 10), dtype=np.int8)
    packed = cpu.pack_screen(codes)
    assert packed.shape == cpu.screen_shape(37, 10) == (3, 3 * 64)
    for g in range(3):
        for b in range(3):
            for r in range(16):
                for t in range(4):
                    v, k = 16 * g + r, 4 * b + t
                    assert packed[g, 64 * b + 4 * r + t] == (codes[v, k] if v < 37 and k < 10 else 0), (g, b, r, t)
    out = np.full(cpu.screen_shape(37, 10), 99, np.int8)
    cpu.pack_screen(codes[:32], out, 0)
    cpu.pack_screen(codes[32:], out, 32)
    np.testing.assert_array_equal(out, packed)
    with pytest.raises(KernelError, match="row0"):
        cpu.pack_screen(codes[8:], out, 8)


def test_screen_table_definition():
    t = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]], np.float32)
    codes, scales = head_lib.screen_table(t)
    np.testing.assert_array_equal(codes, [[64, -127, 32], [0, 0, 0]])
    np.testing.assert_allclose(scales, [1 / 127, 0.0])
    assert (np.abs(codes * scales[:, None] - t) <= scales[:, None] / 2 + 1e-9).all()


def test_generate_with_the_screen_gives_the_same_tokens():
    model = bj.from_pretrained(bj.DEFAULT_MODEL)
    screened = bj.from_pretrained(bj.DEFAULT_MODEL, head_screen=True)
    assert head_lib.SCREEN_NAMES[0] not in model.params  # the bundled head is too small to pay for one
    assert screened.params[head_lib.SCREEN_NAMES[0]].dtype == jnp.int8
    prompts = ["def fibonacci(n):", "import os\n"]
    for a, b in zip(bj.generate(model, prompts, max_new_tokens=24), bj.generate(screened, prompts, max_new_tokens=24)):
        np.testing.assert_array_equal(a, b)
    streamed = [t for step in bj.generate_stream(screened, prompts[0], max_new_tokens=12) for t in step]
    np.testing.assert_array_equal(streamed, bj.generate(model, prompts[0], max_new_tokens=12)[0])
    # sampling takes the logits, unchanged by the screen
    kw = dict(max_new_tokens=12, temperature=0.7, seed=3)
    np.testing.assert_array_equal(bj.generate(screened, prompts[0], **kw)[0], bj.generate(model, prompts[0], **kw)[0])


def test_the_screen_is_what_greedy_decoding_calls():
    screened = bj.from_pretrained(bj.DEFAULT_MODEL, head_screen=True)
    import importlib

    gen = importlib.import_module("bitnet_jax.inference.generate")  # the module (the package exports the function)

    text = gen._generate_loop.lower(
        screened.params, jnp.zeros((1, 16), jnp.int32), jnp.full((1,), 4, jnp.int32), jnp.int32(4),
        jax.random.key(0), gen.SamplingParams.create(), jnp.zeros((1,), jnp.int32),
        module=gen._module(screened), cache_len=128, out_len=8).as_text()
    assert cpu.HEAD_GREEDY_TARGET in text and cpu.HEAD_FLOAT_TARGET not in text


def test_with_head_screen_rules():
    model = bj.from_pretrained(bj.DEFAULT_MODEL)
    screened = head_lib.with_head_screen(model)
    assert head_lib.with_head_screen(screened) is screened
    int8 = bj.with_int8_head(screened)  # an int8 head has no float table: the screen goes
    assert head_lib.SCREEN_NAMES[0] not in int8.params
    with pytest.raises(ConfigError, match="exact head"):
        head_lib.with_head_screen(int8)
