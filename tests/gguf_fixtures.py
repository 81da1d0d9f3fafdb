"""Independent references for the format tests: tiny transformers BitNet models and GGUFs written by hand.

Nothing here uses bitnet_jax's writers or codecs: HF packing is transformers' ``pack_weights``, GGUF files
come from ``gguf.GGUFWriter`` with llama.cpp's names/keys and ``gguf.quants``, and I2_S bytes are built
element by element from bitnet.cpp's definition.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import save_file

LINEARS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORMS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.attn_sub_norm": "attn_sub_norm",
    "mlp.ffn_sub_norm": "ffn_sub_norm",
}
OFFLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}


def tiny_hf_config(**overrides):
    """A small transformers BitNetConfig whose linear widths are multiples of 256 (TQ blocks)."""
    from transformers import BitNetConfig

    kw = dict(
        vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )
    kw.update(overrides)
    return BitNetConfig(**kw)


def ternary_model(seed: int = 0, **overrides) -> dict:
    """Random BitNet weights already ternarised: {hf name: float32 array}, {linear prefix: (int8 w, scale)}.

    Scales and float tensors are fp16-representable, so fp16 storage is exact.
    """
    from transformers import BitNetForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_hf_config(**overrides)
    model = BitNetForCausalLM(cfg).float()
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(seed)
    floats, ternary = {}, {}
    for name, value in state.items():
        prefix = name.rsplit(".", 1)[0]
        if any(prefix.endswith(p) for p in LINEARS):
            w = value.astype(np.float32)
            s_w = 1.0 / max(float(np.mean(np.abs(w))), 1e-5)  # absmean (BitNet b1.58)
            q = np.clip(np.round(w * s_w), -1, 1).astype(np.int8)
            scale = float(np.float16(1.0 / s_w))
            ternary[prefix] = (q, scale)
        elif name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        else:
            if name.endswith("norm.weight"):
                value = 1.0 + 0.1 * rng.standard_normal(value.shape)
            floats[name] = value.astype(np.float16).astype(np.float32)
    return {"config": cfg, "floats": floats, "ternary": ternary}


def write_hf_packed(spec: dict, path: Path) -> Path:
    """A transformers packed (offline, autobitlinear) directory, packed with transformers' pack_weights."""
    from transformers.integrations.bitnet import pack_weights

    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in spec["floats"].items()}
    for prefix, (q, scale) in spec["ternary"].items():
        tensors[prefix + ".weight"] = pack_weights(torch.from_numpy(q.astype(np.int8).copy()))
        tensors[prefix + ".weight_scale"] = torch.tensor([scale], dtype=torch.float32)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = spec["config"].to_dict()
    cfg["quantization_config"] = OFFLINE
    cfg["torch_dtype"] = "float32"
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def transformers_logits(hf_dir: Path, tokens: np.ndarray) -> np.ndarray:
    """Logits of transformers' own packed BitNet model."""
    from transformers import BitNetForCausalLM

    model = BitNetForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def i2s_reference(q: np.ndarray, scale: float) -> np.ndarray:
    """I2_S bytes from bitnet.cpp's definition, one weight at a time (index arithmetic, no reshapes)."""
    flat = (q.reshape(-1).astype(np.int64) + 1).astype(np.uint8)
    n = flat.size
    j = np.arange(n) % 128
    byte = (np.arange(n) // 128) * 32 + j % 32
    shift = 6 - 2 * (j // 32)
    out = np.zeros(n // 4 + 32, dtype=np.uint8)
    np.bitwise_or.at(out, byte, (flat << shift.astype(np.uint8)).astype(np.uint8))
    out[n // 4 : n // 4 + 4] = np.frombuffer(np.float32(scale).tobytes(), dtype=np.uint8)
    return out


def write_reference_gguf(spec: dict, path: Path, kind: str, arch: str = "bitnet", scale_tensor: bool = False,
                         vocab: dict | None = None, extra_scales: dict | None = None,
                         hidden_activation: str | None = "relu2") -> Path:
    """A GGUF written with gguf.GGUFWriter: ``kind`` in i2_s, tq1_0, tq2_0, f16, f32, bf16 for the linears.

    ``scale_tensor``: ternary values stored with unit scale plus a ``<name>.scale`` F32 tensor (upstream
    llama.cpp); otherwise the scale sits in the encoding (TQ ``d`` / I2_S float / float magnitude).
    ``hidden_activation``: the ``{arch}.hidden_activation`` key for arch ``bitnet`` (whose activation is
    SiLU without it), the spec's relu2 by default; None leaves the key out.
    """
    cfg = spec["config"]
    w = gguf.GGUFWriter(path, arch)
    if arch == "bitnet" and hidden_activation is not None:
        w.add_string("bitnet.hidden_activation", hidden_activation)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    if vocab:
        for key, value in vocab.items():
            w.add_key_value(key, value[0], value[1], sub_type=value[2] if len(value) > 2 else None)
    fl = spec["floats"]
    embd_dtype = np.float32 if kind == "f32" else np.float16
    w.add_tensor("token_embd.weight", fl["model.embed_tokens.weight"].astype(embd_dtype))
    if "lm_head.weight" in fl:
        w.add_tensor("output.weight", fl["lm_head.weight"].astype(embd_dtype))
    w.add_tensor("output_norm.weight", fl["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, g in NORMS.items():
            w.add_tensor(f"blk.{i}.{g}.weight", fl[f"model.layers.{i}.{hf}.weight"])
        for hf, g in LINEARS.items():
            q, scale = spec["ternary"][f"model.layers.{i}.{hf}"]
            name = f"blk.{i}.{g}.weight"
            unit = 1.0 if scale_tensor else scale
            values = q.astype(np.float32) * np.float32(unit)
            if kind == "i2_s":
                w.add_tensor(name, i2s_reference(q, unit).view(np.int8), raw_shape=q.shape, raw_dtype=36)
            elif kind in ("tq1_0", "tq2_0"):
                qt = gguf.GGMLQuantizationType[kind.upper()]
                w.add_tensor(name, gguf.quants.quantize(values, qt), raw_dtype=qt)
            elif kind == "bf16":
                bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact: values are bf16-representable
                w.add_tensor(name, bits.view(np.uint8).reshape(q.shape[0], -1), raw_dtype=gguf.GGMLQuantizationType.BF16)
            else:
                w.add_tensor(name, values.astype(np.float16 if kind == "f16" else np.float32))
            if scale_tensor:
                w.add_tensor(f"blk.{i}.{g}.scale", np.array([scale], dtype=np.float32))
            elif extra_scales and f"blk.{i}.{g}" in extra_scales:
                w.add_tensor(f"blk.{i}.{g}.scale", np.array([extra_scales[f"blk.{i}.{g}"]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
