"""Where a fine-tune starts (``init: {from: PATH|ID}``): latent weights, config and tokenizer of a checkpoint.

Each kind of source has a loader (:data:`LOADERS`, picked by :func:`detect_kind` or ``init.kind``) that
returns an :class:`InitModel`: the model config, the training-form parameter tree (float32 latent
weights, NumPy) and the tokenizer, plus a one-line ``note`` of what was done, which the run prints and
records. A model family's loader plugs in by adding an entry.

* ``hf`` -- a transformers BitNet directory: latent (``-bf16``, ``quantization_mode: online`` or no
  quantization config) weights are taken as they are; a packed (``offline``) one has no latents.
* ``llama`` -- a Llama-architecture directory (``model_type: llama``): full precision (a conversion to
  ternary by training, with ``training.quant_warmup_steps`` to blend the quantizers in), latent or
  packed ternary (Falcon-E, Llama3-8B-1.58). ``init.architecture: bitnet`` maps it onto the BitNet
  b1.58 architecture (relu^2, ``attn_sub_norm``/``ffn_sub_norm`` inserted at 1) when this build has
  no family for the checkpoint's own (SiLU, no sub-norms).
* ``gguf`` -- a GGUF file: packed ternary codes only.
* ``run`` -- a bitnet-jax run directory: its latest checkpoint's latent weights.

Packed-only sources start from ``codes * scale / p`` (``p`` = the share of non-zero codes): the latent
whose absmean quantization gives back exactly these codes and this scale, so the training form computes
the packed model's function at step 0. A source that is not a local path is looked up as a Hugging Face
Hub id (the local cache first; ``HF_HUB_OFFLINE=1`` is honoured).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bitnet_jax.config import ModelConfig
from bitnet_jax.config.run import InitConfig
from bitnet_jax.errors import BitNetError, CheckpointError, ConfigError
from bitnet_jax.io.checkpoint import Checkpoint, TernaryTensor, check_no_extra, float_tensor
from bitnet_jax.io.names import set_node, tensor_names
from bitnet_jax.io.tokenizer import Tokenizer
from pallas_kernels import layouts

HUB_FILES = ["*.json", "*.safetensors", "*.gguf", "tokenizer*"]
DEFAULT_MODEL_TOKEN = "{default_model}"  # init.from: the bundled default model
SUB_NORMS = ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")


@dataclasses.dataclass(frozen=True)
class InitModel:
    """What a fine-tune starts from: config, latent parameter tree, tokenizer, and how it was made."""

    config: ModelConfig
    params: dict
    tokenizer: Tokenizer
    source: str
    note: str


def latent_from_ternary(t: TernaryTensor) -> np.ndarray:
    """The latent ``[out, in]`` whose absmean quantization is exactly ``t``: ``codes * scale / p``."""
    codes = layouts.unpack_rows4(np.asarray(t.codes, np.uint8), np.float32)
    nonzero = float(np.mean(codes != 0))
    if nonzero == 0.0:
        return np.zeros_like(codes)
    return codes * np.float32(t.scale / nonzero)


def latent_params(ckpt: Checkpoint) -> tuple[dict, int]:
    """The training-form parameter tree of a checkpoint (ternary linears as float32 latent ``weight``),
    and how many linears were packed-only (started from their codes)."""
    config, tensors, src = ckpt.config, dict(ckpt.tensors), ckpt.source
    if config.tie_word_embeddings and "lm_head.weight" in tensors:
        tensors.pop("lm_head.weight")
    params: dict = {}
    packed = 0
    for t in tensor_names(config):
        value = tensors.get(t.hf)
        if value is None:
            raise CheckpointError(f"{src}: missing tensor {t.hf}")
        if not t.ternary:
            set_node(params, t.path, float_tensor(src, t, value))
            continue
        if isinstance(value, TernaryTensor):
            if value.shape != t.shape:
                raise CheckpointError(f"{src}: tensor {t.hf} has shape {value.shape}, expected {t.shape}")
            if layouts.invalid_code_count(value.codes):
                raise CheckpointError(f"{src}: tensor {t.hf} holds invalid 2-bit codes (3)")
            value, packed = latent_from_ternary(value), packed + 1
        set_node(params, t.path + ("weight",), float_tensor(src, t, value))
    check_no_extra(src, tensors, {t.hf for t in tensor_names(config)})
    return params, packed


def _packed_note(packed: int, total: int) -> str:
    if not packed:
        return ""
    return (f"; {packed} of {total} ternary linears hold packed codes only (no latent weights): they start "
            "from codes x scale (the latent that quantizes back to exactly these codes and scale)")


def _tokenizer(path: Path, config: ModelConfig, spec: str) -> Tokenizer:
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"init.from: {spec} has no tokenizer.json; a fine-tune needs the model's own tokenizer")
    return Tokenizer.from_file(path / "tokenizer.json", config)


def load_hf(path: Path, cfg: InitConfig, spec: str) -> InitModel:
    """A transformers BitNet directory (``model_type: bitnet``), latent or packed."""
    from bitnet_jax.io.hf import read_hf_checkpoint

    ckpt = read_hf_checkpoint(path, latent=True)
    params, packed = latent_params(ckpt)
    total = sum(t.ternary for t in tensor_names(ckpt.config))
    kind = "packed" if packed == total else "latent"
    note = f"init: {spec}: BitNet b1.58 ({kind} transformers checkpoint){_packed_note(packed, total)}"
    return InitModel(ckpt.config, params, _tokenizer(path, ckpt.config, spec), str(path), note)


def llama_config(hf: dict[str, Any], architecture: str, source: str) -> ModelConfig:
    """The model config of a full-precision Llama-architecture ``config.json``: its own architecture as the
    ternary Llama family (SiLU, no sub-norms, untied head; the Llama3-8B-1.58 conversion), or (``bitnet``)
    the BitNet b1.58 one with the same dimensions (relu^2, sub-norms)."""
    from bitnet_jax.io.hf import config_from_hf

    if hf.get("mlp_bias"):
        raise ConfigError(f"{source}: mlp_bias=true is not part of BitNet b1.58 and is not supported")
    if architecture == "bitnet":
        mapped = {**hf, "model_type": "bitnet", "hidden_act": "relu2"}
        mapped.setdefault("tie_word_embeddings", False)  # LlamaConfig's default
        return config_from_hf(mapped, source)
    ternary = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
    return config_from_hf({**hf, "quantization_config": ternary}, source)


def load_llama(path: Path, cfg: InitConfig, spec: str) -> InitModel:
    """A Llama-architecture transformers directory: full precision, latent or packed ternary."""
    from bitnet_jax.io.hf import load_hf_config_file, read_hf_checkpoint

    cfg_file = path / "config.json"
    hf = load_hf_config_file(cfg_file)
    config = llama_config(hf, cfg.architecture, str(cfg_file))
    ckpt = read_hf_checkpoint(path, latent=True, config=config)
    tensors = {k: v for k, v in ckpt.tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    inserted = 0
    if cfg.architecture == "bitnet":  # BitNet's sub-norms, absent from a Llama: start as the identity gain
        for t in tensor_names(config):
            if t.hf.removesuffix(".weight").endswith(SUB_NORMS) and t.hf not in tensors:
                tensors[t.hf] = np.ones(t.shape, np.float32)
                inserted += 1
    ckpt = dataclasses.replace(ckpt, tensors=tensors)
    params, packed = latent_params(ckpt)
    total = sum(t.ternary for t in tensor_names(config))
    precision = "full-precision" if "quantization_config" not in hf else "ternary"
    note = f"init: {spec}: {precision} Llama-architecture checkpoint"
    if cfg.architecture == "bitnet":
        note += (f" mapped onto BitNet b1.58 (FFN activation {hf.get('hidden_act', 'silu')} -> relu2, "
                 f"{inserted} sub-norms inserted at 1)")
    return InitModel(config, params, _tokenizer(path, config, spec), str(path), note + _packed_note(packed, total))


def load_gguf(path: Path, cfg: InitConfig, spec: str) -> InitModel:
    """A GGUF file (packed ternary codes only)."""
    from bitnet_jax.io.loading import read_checkpoint

    ckpt = read_checkpoint(path)
    if ckpt.tokenizer is None:
        raise CheckpointError(f"init.from: {spec} has no tokenizer metadata; a fine-tune needs the model's tokenizer")
    params, packed = latent_params(ckpt)
    total = sum(t.ternary for t in tensor_names(ckpt.config))
    note = f"init: {spec}: GGUF{_packed_note(packed, total)}"
    return InitModel(ckpt.config, params, ckpt.tokenizer, str(path), note)


def load_run(path: Path, cfg: InitConfig, spec: str) -> InitModel:
    """A bitnet-jax run directory: the latent weights of its latest checkpoint."""
    from bitnet_jax.train.checkpoint import RunCheckpointer

    ckpt = RunCheckpointer(path, keep=1_000_000)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"init.from: run directory {spec} holds no checkpoint")
        meta = ckpt.restore_meta(step)
        config = ModelConfig.from_dict(meta["model_config"], source=f"{spec} checkpoint {step}")
        params = _to_numpy(ckpt.restore_params(step))
    finally:
        ckpt.close()
    return InitModel(config, params, _tokenizer(path, config, spec), str(path),
                     f"init: {spec}: bitnet-jax run, checkpoint at step {step}")


def _to_numpy(tree: Any) -> Any:
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), jax.device_get(tree))


LOADERS: dict[str, Callable[[Path, InitConfig, str], InitModel]] = {
    "hf": load_hf,
    "llama": load_llama,
    "gguf": load_gguf,
    "run": load_run,
}


def detect_kind(path: Path) -> str:
    """The loader for a local path: a run directory, a transformers directory (by ``model_type``), a GGUF."""
    from bitnet_jax.io.hf import load_hf_config_file
    from bitnet_jax.io.loading import detect_format
    from bitnet_jax.train.checkpoint import CHECKPOINT_SUBDIR

    if path.is_dir() and (path / CHECKPOINT_SUBDIR).is_dir() and not (path / "config.json").is_file():
        return "run"
    if detect_format(path) == "gguf":
        return "gguf"
    model_type = load_hf_config_file(path / "config.json").get("model_type")
    if model_type == "bitnet":
        return "hf"
    if model_type == "llama":
        return "llama"
    raise CheckpointError(f"init.from: {path}/config.json has model_type {model_type!r}; "
                          f"known: bitnet, llama (or a bitnet-jax run directory, or a GGUF file)")


def resolve_source(spec: str, revision: str | None) -> Path:
    """``{default_model}`` (the bundled model), a local path as it is; otherwise a Hugging Face Hub id,
    from the local cache or downloaded."""
    if spec == DEFAULT_MODEL_TOKEN:
        from bitnet_jax import DEFAULT_MODEL

        return DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise ConfigError(f"init.from: {spec} does not exist (and is not a Hugging Face Hub id org/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, revision=revision, allow_patterns=HUB_FILES))
    except Exception as e:  # huggingface_hub raises many types (offline, missing repo, network)
        raise ConfigError(f"init.from: {spec} is not a local path and is neither in the Hugging Face cache nor "
                          f"reachable ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def load_init(cfg: InitConfig) -> InitModel:
    """Read the checkpoint ``init.from`` names with the loader of its kind."""
    if cfg.from_ is None:
        raise ConfigError("init.from: no checkpoint to start from")
    path = resolve_source(cfg.from_, cfg.revision)
    kind = detect_kind(path) if cfg.kind == "auto" else cfg.kind
    if path.is_dir() and kind == "gguf":
        path = next(iter(sorted(path.glob("*.gguf"))), path)
    try:
        return LOADERS[kind](path, cfg, cfg.from_)
    except BitNetError:
        raise
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"init.from: cannot read {cfg.from_} as {kind} ({type(e).__name__}: {e})") from None


ARCH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_size", "hidden_act", "rms_norm_eps", "rope_theta", "tie_word_embeddings")


def check_architecture(expected: ModelConfig, loaded: ModelConfig, spec: str) -> None:
    """A run config's ``model`` section, when given with ``init.from``, must describe the checkpoint."""
    for field in ARCH_FIELDS:
        a, b = getattr(expected, field), getattr(loaded, field)
        if a != b:
            raise ConfigError(f"model.{field}: the run config says {a!r} but {spec} has {b!r} "
                              f"(drop the model section to take the checkpoint's)")
