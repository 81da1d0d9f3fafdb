"""Independent references for the model families beyond 2B4T, none using bitnet_jax's readers or writers.

* Llama-architecture ternary models (Llama3-8B-1.58, Falcon3, Falcon-E): transformers' own
  ``LlamaForCausalLM`` with a bitnet ``quantization_config`` (``BitNetQuantConfig``) written by its
  ``save_pretrained``, packed with its ``pack_weights``, and loaded back by its ``from_pretrained``.
* 1bitLLM (``BitnetForCausalLM``, remote code, not part of transformers): the checkpoint is written in
  its published naming (``inner_attn_ln`` / ``ffn_layernorm``, latent fp16 weights, ``model_type:
  llama``) and :func:`onebitllm_logits` is a torch forward written from its definition (fake-quantized
  BitLinear, SiLU, rotate-half RoPE).
* GGUF files in the converters' conventions, by ``gguf.GGUFWriter`` and ``gguf.quants``: arch ``llama``
  with q/k rows permuted as llama.cpp's converter permutes them and an untied F16 ``output``; arch
  ``bitnet`` as upstream's converter writes 1bitLLM (ternary-valued floats, no ``hidden_activation``).

Scales and float tensors are fp16-representable where a GGUF holds them in fp16, so GGUF and HF hold
exactly the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from hf_reference import absmean_ternary, eager_torch, fill_random
from safetensors.torch import save_file

LINEARS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}
ONEBIT_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                "self_attn.inner_attn_ln": "attn_sub_norm", "mlp.ffn_layernorm": "ffn_sub_norm"}


def fp16(a: np.ndarray) -> np.ndarray:
    """float32 values that fp16 holds exactly."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


# --------------------------------------------------------------------------------------------- Llama
def llama_config(**overrides):
    """A tiny transformers LlamaConfig (SiLU, untied head, GQA)."""
    from transformers import LlamaConfig

    kw = dict(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, hidden_act="silu", attention_bias=False, mlp_bias=False)
    kw.update(overrides)
    return LlamaConfig(**kw)


def random_llama(seed: int = 0, **overrides):
    """A float32 LlamaForCausalLM with non-trivial random weights (all fp16-representable)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(**overrides)).to(torch.float32).eval()
    return fill_random(model, seed, np.float16)


def _converted(name: str, skip: list[str] | None) -> bool:
    from transformers.quantizers.quantizers_utils import should_convert_module

    return should_convert_module(name, skip if skip is not None else ["lm_head"])


def save_llama(model, out: Path, linear_class: str = "bitlinear", mode: str = "offline", use_rms_norm: bool = False,
               modules_to_not_convert: list[str] | None = None, seed: int = 0) -> Path:
    """``model`` written by transformers as a Llama + BitNetQuantConfig directory.

    Offline: ternary linears ``pack_weights``-packed with ``weight_scale`` (fp16-representable; ``s_w``
    for bitlinear, which divides, ``1/s_w`` for autobitlinear). Online: the latent weights. With
    ``use_rms_norm`` every converted linear gets a random ``rms_norm.weight``.
    """
    from transformers.integrations.bitnet import pack_weights

    rng = np.random.default_rng(seed + 100)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    state = {}
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if module not in linears or not _converted(module, modules_to_not_convert):
            state[name] = tensor
            continue
        if use_rms_norm:
            state[f"{module}.rms_norm.weight"] = torch.from_numpy(fp16(rng.uniform(0.5, 1.5, tensor.shape[1])))
        if mode == "online":
            state[name] = tensor
            continue
        q, s_w = absmean_ternary(tensor)
        inv = float(fp16(np.float32(1.0 / float(s_w))))  # the dequantization scale, fp16-representable
        state[name] = pack_weights(q.clone())
        scale = inv if linear_class == "autobitlinear" else 1.0 / inv
        state[module + ".weight_scale"] = torch.tensor([scale], dtype=torch.float32)
    qc = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode,
          "use_rms_norm": use_rms_norm, "rms_norm_eps": 1e-6, "modules_to_not_convert": modules_to_not_convert}
    model.config.quantization_config = qc
    try:
        model.save_pretrained(out, state_dict=state)
    finally:
        del model.config.quantization_config
    return Path(out)


def load_llama_reference(path: Path):
    """transformers' own load of a Llama + bitnet directory (float32, eager attention)."""
    from transformers import LlamaForCausalLM
    from transformers.integrations.bitnet import AutoBitLinear, BitLinear

    with eager_torch():
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    kinds = {type(m) for n, m in model.named_modules() if n.endswith("_proj")}
    if not kinds & {AutoBitLinear, BitLinear}:
        raise AssertionError(f"{path}: transformers built no BitNet linears ({kinds})")
    return model


def llama_ternary(model) -> dict:
    """What :func:`save_llama` stores (offline): {hf name: float32} and {linear: (int8 ternary, scale)}."""
    floats, ternary = {}, {}
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if any(module.endswith(s) for s in LINEARS):
            q, s_w = absmean_ternary(tensor)
            ternary[module] = (q.numpy().astype(np.int8), float(fp16(np.float32(1.0 / float(s_w)))))
        else:
            floats[name] = tensor.float().numpy()
    return {"floats": floats, "ternary": ternary}


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf q/k permutation (rotate-half rows -> adjacent pairs)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hparams(w: gguf.GGUFWriter, cfg: dict) -> None:
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(float(cfg["rope_theta"]))
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_vocab_size(cfg["vocab_size"])


def _ternary_tensor(w: gguf.GGUFWriter, name: str, q: np.ndarray, scale: float, kind: str) -> None:
    values = q.astype(np.float32) * np.float32(scale)
    if kind in ("tq1_0", "tq2_0"):
        qt = gguf.GGMLQuantizationType[kind.upper()]
        w.add_tensor(name, gguf.quants.quantize(values, qt), raw_dtype=qt)
    else:
        w.add_tensor(name, values.astype(np.float16 if kind == "f16" else np.float32))


def gguf_hparams(hf_config) -> dict:
    """The hyper-parameters a converter writes, from a transformers config."""
    d = hf_config.to_dict()
    d["rope_theta"] = (d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta", 10000.0))
    return d


def write_llama_gguf(weights: dict, cfg: dict, path: Path, kind: str = "tq2_0") -> Path:
    """A GGUF arch ``llama`` as llama.cpp's converter + llama-quantize write a ternary Llama."""
    w = gguf.GGUFWriter(path, "llama")
    _hparams(w, cfg)
    fl = weights["floats"]
    w.add_tensor("token_embd.weight", fl["model.embed_tokens.weight"].astype(np.float16))
    w.add_tensor("output.weight", fl["lm_head.weight"].astype(np.float16))
    w.add_tensor("output_norm.weight", fl["model.norm.weight"])
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    for i in range(cfg["num_hidden_layers"]):
        w.add_tensor(f"blk.{i}.attn_norm.weight", fl[f"model.layers.{i}.input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", fl[f"model.layers.{i}.post_attention_layernorm.weight"])
        for hf, g in LINEARS.items():
            q, scale = weights["ternary"][f"model.layers.{i}.{hf}"]
            if g in heads:
                q = converter_permute(q, heads[g])
            _ternary_tensor(w, f"blk.{i}.{g}.weight", q, scale, kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -------------------------------------------------------------------------------------------- 1bitLLM
def onebitllm_config(**overrides) -> dict:
    """1bitLLM's config.json (model_type llama, its remote-code class), tiny."""
    cfg = dict(architectures=["BitnetForCausalLM"], model_type="llama", vocab_size=300, hidden_size=128,
               intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
               hidden_act="silu", max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None,
               torch_dtype="float16", input_bits=8, weight_bits=1)
    cfg.update(overrides)
    return cfg


def onebitllm_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random latent weights under 1bitLLM's names (fp16 values)."""
    rng = np.random.default_rng(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
              "self_attn.o_proj": (d, d), "mlp.gate_proj": (f, d), "mlp.up_proj": (f, d), "mlp.down_proj": (d, f)}
    out = {"model.embed_tokens.weight": rng.normal(0, 0.3, (v, d)), "model.norm.weight": rng.uniform(0.5, 1.5, d)}
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = rng.normal(0, 0.1, (v, d))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm", "self_attn.inner_attn_ln"):
            out[p + n + ".weight"] = rng.uniform(0.5, 1.5, d)
        out[p + "mlp.ffn_layernorm.weight"] = rng.uniform(0.5, 1.5, f)
        for n, shape in shapes.items():
            out[p + n + ".weight"] = rng.normal(0, rng.uniform(0.02, 0.1), shape)
    return {k: fp16(v) for k, v in out.items()}


def save_onebitllm(cfg: dict, weights: dict[str, np.ndarray], out: Path) -> Path:
    """A 1bitLLM-style directory: config.json + fp16 model.safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.from_numpy(v.astype(np.float16)) for k, v in weights.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def onebitllm_logits(cfg: dict, weights: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """1bitLLM's forward from its definition, in float32 torch: fake-quantized BitLinear (absmean weights,
    per-token absmax int8 activations), SiLU gated FFN with ``ffn_layernorm`` before ``down_proj``,
    ``inner_attn_ln`` before ``o_proj``, rotate-half RoPE, causal softmax attention."""
    W = {k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items()}
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // heads

    def rms(x, g):
        return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def bitlinear(x, w):
        s_x = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        xq = (x * s_x).round().clamp(-128, 127) / s_x
        s_w = 1.0 / w.abs().mean().clamp(min=1e-5)
        return xq @ ((w * s_w).round().clamp(-1, 1) / s_w).T

    def rotate_half(x):
        return torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1)

    with eager_torch():
        ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
        b, t = ids.shape
        x = W["model.embed_tokens.weight"][ids]
        inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        ang = torch.outer(torch.arange(t, dtype=torch.float32), inv)
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        mask = torch.full((t, t), float("-inf")).triu(1)
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = rms(x, W[p + "input_layernorm.weight"])
            q = bitlinear(h, W[p + "self_attn.q_proj.weight"]).view(b, t, heads, hd).transpose(1, 2)
            k = bitlinear(h, W[p + "self_attn.k_proj.weight"]).view(b, t, kv_heads, hd).transpose(1, 2)
            v = bitlinear(h, W[p + "self_attn.v_proj.weight"]).view(b, t, kv_heads, hd).transpose(1, 2)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
            att = torch.softmax(q @ k.transpose(2, 3) / hd**0.5 + mask, -1) @ v
            att = rms(att.transpose(1, 2).reshape(b, t, heads * hd), W[p + "self_attn.inner_attn_ln.weight"])
            x = x + bitlinear(att, W[p + "self_attn.o_proj.weight"])
            h = rms(x, W[p + "post_attention_layernorm.weight"])
            m = torch.nn.functional.silu(bitlinear(h, W[p + "mlp.gate_proj.weight"])) * bitlinear(h, W[p + "mlp.up_proj.weight"])
            x = x + bitlinear(rms(m, W[p + "mlp.ffn_layernorm.weight"]), W[p + "mlp.down_proj.weight"])
        x = rms(x, W["model.norm.weight"])
        head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
        return (x @ head.T).numpy()


def onebitllm_greedy(cfg: dict, weights: dict, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation by full forwards of :func:`onebitllm_logits`."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(onebitllm_logits(cfg, weights, np.array([ids]))[0, -1])))
    return ids[len(prompt):]


def write_onebitllm_gguf(cfg: dict, weights: dict[str, np.ndarray], path: Path, hidden_activation: str | None = None) -> Path:
    """A GGUF arch ``bitnet`` as upstream's converter writes 1bitLLM: linears ternarized to ``±mean|W|``
    float32 values (its weight_quant), sub-norms renamed, head = token_embd (tied), no activation key."""
    w = gguf.GGUFWriter(path, "bitnet")
    _hparams(w, cfg)
    if hidden_activation is not None:
        w.add_string("bitnet.hidden_activation", hidden_activation)
    w.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"].astype(np.float16))
    w.add_tensor("output_norm.weight", weights["model.norm.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for hf, g in ONEBIT_NORMS.items():
            w.add_tensor(f"blk.{i}.{g}.weight", weights[p + hf + ".weight"])
        for hf, g in LINEARS.items():
            lat = torch.from_numpy(weights[p + hf + ".weight"])
            q, s_w = absmean_ternary(lat)
            w.add_tensor(f"blk.{i}.{g}.weight", (q / s_w).numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def positions_close(ours: np.ndarray, ref: np.ndarray, atol: float = 1e-4) -> float:
    """Fraction of positions whose whole logit row agrees within ``atol``."""
    return float(np.mean(np.all(np.abs(np.asarray(ours) - ref) <= atol, axis=-1)))
