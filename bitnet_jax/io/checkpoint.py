"""The format-neutral checkpoint every loader produces, and its conversion to a parameter pytree.

A loader (HF safetensors, GGUF, ...) returns a :class:`Checkpoint`: a :class:`ModelConfig` plus tensors
keyed by their transformers names (:mod:`bitnet_jax.io.names`). Ternary linears arrive (under their
``.weight`` name) as :class:`TernaryTensor` (2-bit codes in the ``rows4`` layout, one multiplicative
scale); everything else as float arrays. :func:`checkpoint_to_params` checks every name and shape
against the config and builds the packed parameter tree for a kernel; :func:`params_to_tensors` is the
way back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax._memory import ALIGN, aligned_empty, release_pages  # noqa: F401 (ALIGN: re-exported)
from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import CheckpointError
from bitnet_jax.io.names import TensorName, get_node, set_node, tensor_names, ternary_tensors
from bitnet_jax.model import quant
from bitnet_jax.model.scan import LAYERS, unstack_layers
from pallas_kernels import Kernel, PackedWeight, layouts


# The largest magnitude a float parameter or ternary scale may hold (float16's largest finite value): beyond
# it, a norm weight or scale overflows the forward pass to inf/NaN in float32 or bfloat16.
MAX_PARAM = 65504.0


@dataclasses.dataclass(frozen=True)
class TernaryTensor:
    """A ternary weight ``[out, in]`` kept packed: ``rows4`` codes ``uint8 [out // 4, in]`` and ``scale``.

    ``scale`` multiplies the integer product (it is ``1 / s_w``, about ``mean|W|``).
    """

    codes: np.ndarray
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        """The unpacked ``[out, in]`` shape."""
        return (self.codes.shape[0] * 4, self.codes.shape[1])

    @classmethod
    def from_latent(cls, weight: Any) -> "TernaryTensor":
        """Absmean-quantize a latent float weight ``[out, in]`` (the one latent -> packed conversion)."""
        wq, s_w = quant.quantize_weights(np.asarray(weight, dtype=np.float32))
        return cls(layouts.pack_rows4(wq), float(1.0 / s_w))

    @classmethod
    def from_packed(cls, weight: PackedWeight, scale: Any) -> "TernaryTensor":
        """A packed parameter (any layout) and its scale, as ``rows4`` codes."""
        rows4 = layouts.repack(jax.tree_util.tree_map(np.asarray, weight), layouts.ROWS4)
        return cls(np.ascontiguousarray(rows4.codes, dtype=np.uint8), float(np.asarray(scale)))


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What a loader read: config, tensors by HF name, optional tokenizer, and where it came from."""

    config: ModelConfig
    tensors: dict[str, Any]
    source: str
    tokenizer: Any = None


TABLES = ("embed_tokens", "lm_head")  # the [vocab, hidden] tables (embedding, untied head)
CHUNK_ROWS = 4096  # rows converted at a time: temporaries stay small even for a 128256-row table


def float_tensor(src: str, t: TensorName, value: Any, dtype: Any = np.float32) -> np.ndarray:
    """A checkpoint's float tensor ``t`` as ``dtype``, checked (not ternary, shape, finite).

    Converted (or copied into a 64-byte aligned buffer the CPU device adopts) in chunks of rows, so a
    2-byte tensor (a memory-mapped F16 table, say) never exists as a whole float32 copy, and a
    memory-mapped file's rows leave the resident set once copied (:func:`~bitnet_jax._memory.release_pages`). ``dtype="table"`` picks bfloat16 when every value is exactly a bfloat16 (a
    table exported from a bfloat16 model: the exact head then reads half the bytes), else float32.
    """
    if isinstance(value, TernaryTensor):
        raise CheckpointError(f"{src}: tensor {t.hf} must be a float tensor, found a ternary one")
    if tuple(value.shape) != t.shape:
        raise CheckpointError(f"{src}: tensor {t.hf} has shape {tuple(value.shape)}, expected {t.shape}")
    try:
        bf16 = np.dtype(jnp.bfloat16)
        want = bf16 if isinstance(dtype, str) and dtype == "table" else np.dtype(dtype)
        if np.ndim(value) < 2:
            arr = np.asarray(value).astype(want, copy=False)
            _check_values(src, t, arr.astype(np.float32, copy=False))
            return arr
        out = aligned_empty(t.shape, want)
        for start in range(0, t.shape[0], CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            part = value[rows]
            chunk = np.asarray(part, dtype=np.float32)
            _check_values(src, t, chunk)
            same = np.dtype(getattr(part, "dtype", np.float32)) == want
            conv = np.asarray(part) if same else chunk.astype(want)
            if not same and dtype == "table" and want == bf16 and not np.array_equal(conv.astype(np.float32), chunk):
                wide = aligned_empty(t.shape, np.float32)  # not a bfloat16 table: keep it exact in float32
                wide[:start] = out[:start]
                out, want = wide, np.dtype(np.float32)
                conv = chunk
            out[rows] = conv
            if isinstance(part, np.ndarray):
                release_pages(part)  # a memory-mapped file's rows, copied: out of the resident set now
        return out
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{src}: tensor {t.hf} is not a float tensor ({e})") from None


def _check_values(src: str, t: TensorName, arr: np.ndarray) -> None:
    """Refuse non-finite values and magnitudes the forward pass cannot hold (a float32 view of ``t``)."""
    if not np.all(np.isfinite(arr)):
        raise CheckpointError(f"{src}: tensor {t.hf} holds non-finite values (NaN or inf)")
    peak = float(np.max(np.abs(arr))) if arr.size else 0.0
    if peak > MAX_PARAM:
        raise CheckpointError(f"{src}: tensor {t.hf} holds {peak:.3g}, beyond the {MAX_PARAM:g} a weight can hold "
                              "without overflowing the forward pass")


def check_no_extra(src: str, tensors: dict[str, Any], expected: set[str]) -> None:
    """Every tensor of a checkpoint must belong to its model config."""
    extra = sorted(set(tensors) - expected)
    if extra:
        shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
        raise CheckpointError(f"{src}: unexpected tensor(s) not part of this model config: {shown}")


def checkpoint_to_params(ckpt: Checkpoint, kernel: Kernel, consume: bool = False) -> dict:
    """Validate a checkpoint against its config and build the packed parameter tree (NumPy leaves)
    with the ternary weights in ``kernel``'s layout.

    ``consume=True`` drops each of ``ckpt``'s tensors once converted (the checkpoint is unusable
    afterwards), so the source and packed copies of the weights never all exist at once.
    """
    config, src = ckpt.config, ckpt.source
    tensors = ckpt.tensors if consume else dict(ckpt.tensors)
    if config.tie_word_embeddings and "lm_head.weight" in tensors:
        tensors.pop("lm_head.weight")  # a tied head stored explicitly is the embedding again
    params: dict = {}
    expected = set()
    for t in tensor_names(config):
        expected.add(t.hf)
        value = tensors.get(t.hf)
        if value is None:
            raise CheckpointError(f"{src}: missing tensor {t.hf}")
        if t.ternary:
            if not isinstance(value, TernaryTensor):
                raise CheckpointError(f"{src}: tensor {t.hf} is not a ternary weight")
            if value.shape != t.shape:
                raise CheckpointError(f"{src}: tensor {t.hf} has shape {value.shape}, expected {t.shape}")
            if not (np.isfinite(value.scale) and 0 < value.scale <= MAX_PARAM):
                raise CheckpointError(f"{src}: tensor {t.hf} has an invalid scale {value.scale!r} "
                                      f"(must be finite, > 0 and at most {MAX_PARAM:g})")
            invalid = layouts.invalid_code_count(value.codes)
            if invalid:
                raise CheckpointError(f"{src}: tensor {t.hf} holds {invalid} invalid 2-bit code(s) (3)")
            codes = np.ascontiguousarray(value.codes, dtype=np.uint8)
            packed = layouts.repack(PackedWeight(codes, None, layouts.ROWS4.name, t.shape), kernel.layout)
            set_node(params, t.path + ("weight_packed",), packed)
            set_node(params, t.path + ("weight_scale",), np.float32(value.scale))
        else:
            table = len(t.path) == 1 and t.path[0] in TABLES
            dtype = ("table" if np.dtype(config.dtype) == np.float32 else config.dtype) if table else np.float32
            set_node(params, t.path, float_tensor(src, t, value, dtype))
        if consume:
            tensors[t.hf] = None  # (the key stays for the check of unexpected tensors below)
        del value
    check_no_extra(src, tensors, expected)
    return params


def params_to_tensors(config: ModelConfig, params: Any, packed: bool = True, latent: bool = False) -> dict[str, Any]:
    """Every tensor of a parameter tree by transformers name, ternary linears as :class:`TernaryTensor`
    (a training-form tree is absmean-quantized, or with ``latent`` kept as its float weights); floats as
    float32 NumPy arrays."""
    params = jax.device_get(params)
    if LAYERS in params:
        params = unstack_layers(params)
    out: dict[str, Any] = {}
    for t in tensor_names(config):
        if not t.ternary:
            out[t.hf] = np.asarray(get_node(params, t.path), dtype=np.float32)
            continue
        node = get_node(params, t.path)
        if packed:
            out[t.hf] = TernaryTensor.from_packed(node["weight_packed"], node["weight_scale"])
        elif latent:
            out[t.hf] = np.asarray(node["weight"], dtype=np.float32)
        else:
            out[t.hf] = TernaryTensor.from_latent(node["weight"])
    return out


def random_checkpoint(config: ModelConfig, seed: int = 0, source: str = "random") -> Checkpoint:
    """A checkpoint of random ternary weights (uniform over -1/0/+1) for benchmarks and examples.

    Built layer by layer in NumPy, so even the 2B4T shape needs no more memory than its packed size
    plus the float embedding.
    """
    rng = np.random.default_rng(seed)
    tensors: dict[str, Any] = {}
    for t in tensor_names(config):
        if t.ternary:
            w = rng.integers(-1, 2, t.shape, dtype=np.int8)
            tensors[t.hf] = TernaryTensor(layouts.pack_rows4(w), scale=float(1.0 / np.sqrt(t.shape[1])))
        elif len(t.path) > 1 and t.path[-2].endswith("norm"):
            tensors[t.hf] = np.ones(t.shape, np.float32)
        else:
            tensors[t.hf] = rng.normal(0.0, 0.02, t.shape).astype(np.float32)
    return Checkpoint(config=config, tensors=tensors, source=source)


__all__ = ["Checkpoint", "TernaryTensor", "checkpoint_to_params", "params_to_tensors", "random_checkpoint",
           "ternary_tensors"]
