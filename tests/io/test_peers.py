"""llama.cpp (llama-cpp-python) on our GGUF exports of tiny models of each family: the peer computes the
function bitnet-jax computes. Marked ``peers``; skipped where llama-cpp-python is not installed
(``pip install bitnet-jax[peers]`` builds it from source)."""

from __future__ import annotations

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from bitnet_jax import ModelConfig, forward, save_pretrained  # noqa: E402
from bitnet_jax.io.checkpoint import Checkpoint, random_checkpoint  # noqa: E402
from bitnet_jax.io.loading import model_from_checkpoint  # noqa: E402
from bitnet_jax.io.tokenizer import tokenizer_from_gguf_metadata  # noqa: E402

pytestmark = pytest.mark.peers

TOKENS = [5, 77, 140, 9, 300, 42, 250, 17, 3, 199, 64, 128]
# every linear 256 wide: llama.cpp's Q8_K activation blocks are then whole rows, like BitNet's per-token scales
BASE = dict(vocab_size=320, hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5,
            bos_token_id=None, eos_token_id=None)


def byte_tokenizer():
    """A byte-level BPE llama.cpp accepts (llama.cpp refuses a file without a vocabulary)."""
    from tokenizers import pre_tokenizers

    return tokenizer_from_gguf_metadata({
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": sorted(pre_tokenizers.ByteLevel.alphabet()) + ["\u0120\u0120"],
        "tokenizer.ggml.merges": ["\u0120 \u0120"],
    }, "peer test tokenizer")


def tiny_model(**changes):
    cfg = ModelConfig(**{**BASE, **changes})
    ckpt = random_checkpoint(cfg, seed=4)
    rng = np.random.default_rng(4)
    tensors = dict(ckpt.tensors)
    for name, t in tensors.items():  # a larger embedding / head and non-unit norms: logits worth comparing
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensors[name] = (t * 15).astype(np.float16).astype(np.float32)
        elif name.endswith("norm.weight") or "inner_attn_ln" in name or "ffn_layernorm" in name:
            tensors[name] = rng.uniform(0.5, 1.5, t.shape).astype(np.float32)
    ckpt = Checkpoint(cfg, tensors, "peer test", byte_tokenizer())
    return model_from_checkpoint(ckpt)


def peer_logits(path) -> np.ndarray:
    # F32 KV cache: the default F16 cache alone moves logits by about 1% (facts sheet section 9)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=1,
                          type_k=0, type_v=0)
    try:
        llm.eval(TOKENS)
        return np.array(llm.scores[: len(TOKENS)], dtype=np.float32)
    finally:
        llm.close()


def ours(model) -> np.ndarray:
    return np.asarray(forward(model, [TOKENS]))[0]


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest logit difference relative to the spread of the logits."""
    return float(np.abs(a - b).max() / b.std())


FAMILIES = {
    "llama (Falcon3, Llama3-8B-1.58)": dict(hidden_act="silu", sub_norms=False, tie_word_embeddings=False),
    "1bitLLM": dict(hidden_act="silu", sub_norm_names=("self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
                    tie_word_embeddings=True),
}


@pytest.mark.parametrize("quant", ["tq2_0", "tq1_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_computes_our_function(tmp_path, family, quant):
    model = tiny_model(**FAMILIES[family])
    path = save_pretrained(model, tmp_path / "m.gguf", format="gguf", quant=quant)
    theirs, mine = peer_logits(path), ours(model)
    assert distance(theirs, mine) < 0.01  # measured 8e-4 (Q8_K rounds ties away from zero, ours to even)
    assert np.mean(theirs.argmax(-1) == mine.argmax(-1)) >= 0.9


def test_relu2_model_is_not_silently_computed_with_silu(tmp_path):
    """2B4T (relu²) is exported as bitnet-b1.58, which llama.cpp refuses; forced to arch 'bitnet' it is run
    with SiLU by llama-cpp-python's llama.cpp (the negative control: the comparison above can fail)."""
    model = tiny_model(tie_word_embeddings=True)
    default = save_pretrained(model, tmp_path / "m.gguf", format="gguf", quant="tq2_0")
    with pytest.raises(ValueError):  # llama-cpp-python: "Failed to load model from file" (unknown arch)
        peer_logits(default)
    with pytest.warns(UserWarning, match="compute SiLU"):
        forced = save_pretrained(model, tmp_path / "b.gguf", format="gguf", quant="tq2_0", arch="bitnet")
    assert distance(peer_logits(forced), ours(model)) > 0.2
