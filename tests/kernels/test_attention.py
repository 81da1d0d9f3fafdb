"""The fused prefill attention chosen with the kernel: used exactly where it computes the model's
function (a prompt from position 0, 16-bit activations, T >= MIN_FUSED_T), the model's attention
everywhere else. cuDNN and the TPU flash kernel cannot run on a CPU host, so a stand-in fused
function (``jax.nn.dot_product_attention``'s XLA path) exercises the dispatch here; the TPU kernel's
compile is checked through libtpu (test_kernels_compile.py), cuDNN's by scripts/device_check.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import jax
import jax.numpy as jnp

import pallas_kernels
from bitnet_jax.model.transformer import attend
from pallas_kernels import attention

T = attention.MIN_FUSED_T


def _qkv(seed: int, t: int, s: int, dtype=jnp.bfloat16, b: int = 2, h: int = 4, kv: int = 2, d: int = 16):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (b, t, h, d), dtype)
    k, v = (jax.random.normal(key, (b, s, kv, d), dtype) for key in keys[1:])
    return q, k, v


def _stand_in():
    traced = []

    def fused(q, k, v):
        traced.append(q.shape)
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")

    return fused, traced


def test_prompt_from_zero_takes_the_fused_path_and_agrees():
    fused, traced = _stand_in()
    attn = attention.prefill_attention(fused, "stand-in")
    q, k, v = _qkv(0, T, T + 32)  # a cache longer than the prompt: slots T.. are masked
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (2, T))
    got = jax.jit(lambda *a: attn(*a, attend))(q, k, v, pos)
    assert traced, "the fused function was not used"
    want = fused(q, k[:, :T], v[:, :T]).reshape(got.shape)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))  # its branch ran
    ref = np.asarray(attend(q, k, v, pos), np.float32)
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=2e-2, atol=2e-2)  # bf16 tolerance


def test_other_positions_take_the_models_path_exactly():
    fused, _ = _stand_in()
    attn = attention.prefill_attention(fused, "stand-in")
    q, k, v = _qkv(1, T, T + 32)
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32) + 5, (2, T))  # a continued prompt
    got = jax.jit(lambda *a: attn(*a, attend))(q, k, v, pos)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(jax.jit(attend)(q, k, v, pos), np.float32))


def test_short_float32_and_decode_inputs_never_trace_the_fused_path():
    fused, traced = _stand_in()
    attn = attention.prefill_attention(fused, "stand-in")
    for t, s, dtype in ((T // 2, T, jnp.bfloat16), (T, T, jnp.float32), (1, T, jnp.bfloat16)):
        q, k, v = _qkv(2, t, s, dtype)
        pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (2, t))
        np.testing.assert_array_equal(np.asarray(attn(q, k, v, pos, attend)), np.asarray(attend(q, k, v, pos)))
    assert traced == []


def test_backends_bring_their_attention_and_a_mesh_drops_it():
    from bitnet_jax.parallel import make_mesh, on_mesh

    assert attention.for_backend("mosaic_gpu") is attention.for_backend("triton") is not None
    assert attention.for_backend("tpu") is not None
    assert attention.for_backend("xla") is None and attention.for_backend("cpu") is None
    assert pallas_kernels.get_kernel("tpu", interpret=True).attention_fn is None  # interpreted: CPU host
    compiled = pallas_kernels.get_kernel("tpu", interpret=False, guard=False)
    assert compiled.attention_fn is attention.for_backend("tpu")
    if jax.device_count() > 1:
        assert on_mesh(compiled, make_mesh()).attention_fn is None


def test_model_uses_the_kernels_attention_for_prompts():
    """A bf16 tiny model whose kernel carries the stand-in fused attention: prompt logits agree with the
    plain kernel's within bf16 tolerance, and the fused path was traced."""
    from bitnet_jax.config import ModelConfig
    from bitnet_jax.model import Form, Transformer

    cfg = ModelConfig.preset("tiny").replace(dtype="bfloat16")
    fused, traced = _stand_in()
    plain = pallas_kernels.get_kernel("xla")
    with_attention = dataclasses.replace(plain, attention_fn=attention.prefill_attention(fused, "stand-in"))
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, cfg.vocab_size, (1, T)), jnp.int32)
    params = Transformer(cfg, Form(kernel=plain)).init(jax.random.key(0), tokens)
    ref, _ = jax.jit(Transformer(cfg, Form(kernel=plain)).apply)(params, tokens)
    got, _ = jax.jit(Transformer(cfg, Form(kernel=with_attention)).apply)(params, tokens)
    assert len(traced) >= cfg.num_hidden_layers  # one per layer (+ the compile probe of the shape)
    scale = float(np.abs(np.asarray(ref)).max())
    assert float(np.abs(np.asarray(got) - np.asarray(ref)).max()) <= 0.05 * scale
