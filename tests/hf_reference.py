"""The independent reference: tiny random transformers BitNet models, saved in every checkpoint form.

Everything here is transformers' own code path: ``BitNetForCausalLM`` builds the model,
``save_pretrained`` writes the directories, ``integrations.bitnet.pack_weights`` packs the ternary
weights, and ``from_pretrained`` loads every directory back as the reference the tests compare against.

Forms (the same latent model in each):

* ``latent-online``: float weights, ``quantization_config`` autobitlinear / online (transformers
  quantizes weights with absmean at every forward);
* ``latent-plain``: float weights, no ``quantization_config``. transformers alone would run plain
  ``nn.Linear`` on such a directory (no quantizer, no replacement), which is not a BitNet model; the
  reference therefore loads the same directory with the online autobitlinear config set on its
  config object (a config-borne ``quantization_config`` counts as pre-quantized, so the BitNet
  quantizer accepts it, unlike ``from_pretrained(quantization_config=...)`` which it refuses);
* ``packed-autobitlinear``: ``weight`` = ``pack_weights(ternary)`` uint8 ``[out/4, in]`` and a
  multiplicative ``weight_scale`` = ``1 / s_w`` (about mean|W|), config offline autobitlinear;
* ``packed-bitlinear``: same codes, ``weight_scale`` = ``s_w`` (transformers' ``BitLinear`` divides
  by it), config offline bitlinear.

torch.compile (used by transformers' BitNet quantizers) is switched off around reference calls: the
eager ops are the definition, and compiling on CPU would cost minutes per test session. Reference
calls also run torch on one thread: on the shared 2-core machine that made generation 40x faster.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from transformers import AutoConfig, BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import AutoBitLinear, BitLinear, pack_weights

FORMS = ("latent-online", "latent-plain", "packed-autobitlinear", "packed-bitlinear")
ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
QUANT_CONFIGS = {
    "latent-online": ONLINE,
    "latent-plain": None,
    "packed-autobitlinear": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"},
    "packed-bitlinear": {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"},
}
BOS_ID, EOS_ID = 1, 2


@dataclasses.dataclass(frozen=True)
class Spec:
    """A tiny BitNet shape. transformers sizes ``attn_sub_norm`` by ``hidden_size``, so heads * head_dim == hidden."""

    name: str
    vocab_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    num_hidden_layers: int
    tie_word_embeddings: bool

    @property
    def hidden_size(self) -> int:
        """heads * head_dim."""
        return self.num_attention_heads * self.head_dim

    def hf_config(self) -> BitNetConfig:
        """The transformers config of this shape (no quantization_config)."""
        return BitNetConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=None,
        )


SPECS = (
    Spec("gqa4-tied-v389-hd16", 389, 4, 1, 16, 128, 2, True),
    Spec("gqa2-untied-v1000-hd16", 1000, 4, 2, 16, 96, 3, False),
    Spec("mha-untied-v389-hd32", 389, 3, 3, 32, 160, 2, False),
)


@contextlib.contextmanager
def eager_torch() -> Iterator[None]:
    """No torch.compile, no autograd and one intra-op thread inside (tiny ops: threads only contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch._dynamo.config.patch(disable=True), torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


def random_latent_model(spec: Spec, seed: int = 0) -> BitNetForCausalLM:
    """A float32 transformers BitNet model with plain linears and non-trivial random weights.

    Linear weights: normal with a per-tensor std in [0.02, 0.1]; norms: uniform [0.5, 1.5];
    embedding: normal std 0.3 (residual comparable to the sub-layer outputs); untied head: std 0.1.
    """
    torch.manual_seed(seed)
    model = BitNetForCausalLM(spec.hf_config()).to(torch.float32).eval()
    return fill_random(model, seed)


def fill_random(model, seed: int, dtype=np.float32):
    """Overwrite a transformers model's parameters with the random values above (rounded through ``dtype``)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied head is the embedding, listed once
            shape = tuple(p.shape)
            if name.endswith("norm.weight"):
                value = rng.uniform(0.5, 1.5, shape)
            elif name == "model.embed_tokens.weight":
                value = rng.normal(0.0, 0.3, shape)
            elif name == "lm_head.weight":
                value = rng.normal(0.0, 0.1, shape)
            else:
                value = rng.normal(0.0, rng.uniform(0.02, 0.1), shape)
            p.copy_(torch.from_numpy(value.astype(dtype).astype(np.float32)))
    return model


def absmean_ternary(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' WeightQuant split in two: ternary values and ``s_w`` (float32)."""
    w = weight.float()
    s_w = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * s_w).round().clamp(-1, 1), s_w


def packed_state_dict(model: BitNetForCausalLM, linear_class: str) -> dict[str, torch.Tensor]:
    """The offline state dict: ternary linears packed with transformers' ``pack_weights`` plus weight_scale."""
    ternary = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    out = {}
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if module not in ternary:
            out[name] = tensor
            continue
        q, s_w = absmean_ternary(tensor)
        out[name] = pack_weights(q.clone())
        scale = 1.0 / s_w if linear_class == "autobitlinear" else s_w
        out[module + ".weight_scale"] = scale.reshape(1).to(torch.float32)
    return out


def save_form(model: BitNetForCausalLM, form: str, out_dir: Path, max_shard_size: str | None = None) -> Path:
    """Write ``model`` as a checkpoint directory of ``form`` with transformers' ``save_pretrained``."""
    qc = QUANT_CONFIGS[form]
    state_dict = packed_state_dict(model, qc["linear_class"]) if form.startswith("packed") else None
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    config = model.config
    try:
        if qc is not None:
            config.quantization_config = dict(qc)
        model.save_pretrained(out_dir, state_dict=state_dict, **kwargs)
    finally:
        if hasattr(config, "quantization_config"):
            del config.quantization_config
    return Path(out_dir)


def load_reference(path: Path, form: str) -> BitNetForCausalLM:
    """transformers' own load of a directory written by :func:`save_form` (float32, eager attention)."""
    config = AutoConfig.from_pretrained(path)
    if form == "latent-plain":
        config.quantization_config = dict(ONLINE)
    with eager_torch():
        model = BitNetForCausalLM.from_pretrained(
            path, config=config, dtype=torch.float32, attn_implementation="eager"
        ).eval()
    kinds = {type(m) for n, m in model.named_modules() if n.endswith("_proj")}
    expected = BitLinear if form == "packed-bitlinear" else AutoBitLinear
    if kinds != {expected}:
        raise AssertionError(f"{path}: transformers built {kinds}, expected only {expected.__name__}")
    return model


def reference_logits(model: BitNetForCausalLM, tokens: np.ndarray) -> np.ndarray:
    """Float32 logits ``[B, T, V]`` of ``tokens [B, T]`` (no padding)."""
    with eager_torch():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def reference_greedy(model: BitNetForCausalLM, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """transformers greedy continuation of one prompt, never stopping at EOS.

    ``use_cache=False``: every step re-runs the full forward, the definition of greedy decoding.
    transformers' KV-cached decode runs other matmul shapes, and its float round-off can tip an int8
    activation tie the other way: on one spec here its cached step-22 logits moved by 0.028 from its
    own full forward and changed the argmax, while ours matched the full forward to 1e-6.
    """
    ids = torch.as_tensor([list(prompt)], dtype=torch.long)
    with eager_torch():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=None,
            pad_token_id=0,
            use_cache=False,
        )
    new = out[0, len(prompt) :].tolist()
    if len(new) != max_new_tokens:
        raise AssertionError(f"transformers stopped after {len(new)} of {max_new_tokens} tokens")
    return new


def ternary_fractions(model: BitNetForCausalLM) -> dict[int, float]:
    """Fraction of -1/0/+1 over all ternary weights of a reference model (as transformers quantizes them)."""
    counts = {-1: 0, 0: 0, 1: 0}
    total = 0
    with eager_torch():
        for name, m in model.named_modules():
            if isinstance(m, BitLinear):
                from transformers.integrations.bitnet import unpack_weights

                q = unpack_weights(m.weight, dtype=torch.float32)
            elif isinstance(m, AutoBitLinear):
                q = absmean_ternary(m.weight)[0] if m.online_quant else m.weight
            else:
                continue
            for v in counts:
                counts[v] += int((q == v).sum())
            total += q.numel()
    return {v: c / total for v, c in counts.items()}


def reference_linear_inputs(model: BitNetForCausalLM, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The float input of every ternary linear (what its activation quantizer sees), by module name."""
    captured: dict[str, np.ndarray] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (AutoBitLinear, BitLinear)):

            def hook(mod, args, name=name):
                captured[name] = args[0].float().numpy().copy()

            handles.append(module.register_forward_pre_hook(hook))
    try:
        reference_logits(model, tokens)
    finally:
        for h in handles:
            h.remove()
    return captured
