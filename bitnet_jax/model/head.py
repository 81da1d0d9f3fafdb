"""The output projection ("head") and the embedding lookup: exact float (default) or int8 per-row.

The exact head multiplies by the table as stored (bfloat16 or float32), accumulating in float32. The
int8 head (as bitnet.cpp quantizes its embedding) stores the table as ``codes int8 [V, D]`` in
[-127, 127] with a float32 scale per row (``max|row| / 127``), quantizes the hidden state per token
like every BitLinear input (absmax int8), takes the exact int32 product and rescales: about half the
bytes of a bfloat16 head per decoded token. Which head a model has is its :class:`Form`'s ``head``
(``"exact"`` or ``"int8"``); the int8 table's scales are ``embed_scales`` (tied head) or
``lm_head_scales`` (untied). :func:`with_int8_head` converts a loaded model. The products themselves are
the kernel's (:meth:`pallas_kernels.Kernel.head_float` / ``head_int8``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax._memory import aligned_empty
from bitnet_jax.errors import ConfigError
from bitnet_jax.model import quant
from bitnet_jax.model.form import BitNetModel
from pallas_kernels import Kernel

INT8_MAX = 127
HEADS = ("exact", "int8")
QUANTIZE_ROWS = 4096  # rows per chunk: float32 temporaries stay ~40 MB even for a 128256-row table


def table_names(tie_word_embeddings: bool) -> tuple[str, str]:
    """(table parameter, its int8 scales parameter) of the head."""
    return ("embed_tokens", "embed_scales") if tie_word_embeddings else ("lm_head", "lm_head_scales")


def quantize_table(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int8: ``codes = clip(round(t * 127 / max|row|), -127, 127)``, ``scale = max|row| / 127``.

    Works through the rows in chunks, so the only full-size array it allocates is the int8 result.
    """
    table = np.asarray(table)
    if table.ndim != 2:
        raise ConfigError(f"the head table must be 2-D [vocab, hidden], got shape {table.shape}")
    codes = aligned_empty(table.shape, np.int8)  # the CPU device adopts it without a copy
    scale = np.empty(table.shape[0], np.float32)
    for start in range(0, table.shape[0], QUANTIZE_ROWS):
        rows = slice(start, start + QUANTIZE_ROWS)
        t = table[rows].astype(np.float32)
        amax = np.max(np.abs(t), axis=1)
        s = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
        np.rint(t / s[:, None], out=t)
        np.clip(t, -INT8_MAX, INT8_MAX, out=t)
        codes[rows] = t
        scale[rows] = s
    return codes, scale


def quantize_head_params(params: dict, tie_word_embeddings: bool) -> dict:
    """A copy of a packed parameter tree whose head table is int8 with per-row scales.

    Tied: ``embed_tokens`` becomes int8 (lookup and head both use it) plus ``embed_scales [V]``;
    untied: ``lm_head`` becomes int8 plus ``lm_head_scales [V]`` and the embedding stays as it is.
    """
    name, scales_name = table_names(tie_word_embeddings)
    if name not in params:
        raise ConfigError(f"the parameter tree has no {name!r} table (tie_word_embeddings={tie_word_embeddings})")
    if scales_name in params:
        raise ConfigError(f"the head is already int8 ({scales_name!r} is present)")
    out = {k: v for k, v in params.items() if k not in SCREEN_NAMES}  # an int8 head has no float table to screen
    codes, scale = quantize_table(params[name])
    out[name] = jnp.asarray(codes).block_until_ready()  # the transfer holds ``codes`` until it completes
    out[scales_name] = jnp.asarray(scale)
    return out


def with_int8_head(model: BitNetModel) -> BitNetModel:
    """The same model with its head table quantized to int8 per row (an inference option)."""
    if not model.packed:
        raise ConfigError("the int8 head is an inference option; this model is in training (latent float) form")
    if model.form.head == "int8":
        raise ConfigError("the model's head is already int8")
    params = quantize_head_params(model.params, model.config.tie_word_embeddings)
    return dataclasses.replace(model, params=params, form=dataclasses.replace(model.form, head="int8"))


SCREEN_NAMES = ("head_screen", "head_screen_scales")  # the exact head's int8 screen (greedy decoding)
SCREEN_MIN_VALUES = 1 << 24  # tables of at least this many values get a screen by default (2B4T: 328 M)


def screen_table(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """The int8 screen of a float head table: :func:`quantize_table`'s codes and scales, scale 0 for a zero
    row (its codes say exactly 0), so ``codes * scales`` is within half a step of every value."""
    codes, scale = quantize_table(table)
    for start in range(0, codes.shape[0], QUANTIZE_ROWS):
        rows = slice(start, start + QUANTIZE_ROWS)
        scale[rows][~codes[rows].any(axis=1)] = 0.0
    return codes, scale


def wants_screen(model: BitNetModel) -> bool:
    """Whether a screen pays for ``model``: an exact head, a kernel whose screened greedy head is faster
    than its float head (:meth:`pallas_kernels.Kernel.head_screen_pays`), a table of at least
    :data:`SCREEN_MIN_VALUES` values."""
    cfg, kernel = model.config, model.form.kernel
    if kernel is None or model.form.head != "exact" or not kernel.head_screen_pays():
        return False
    return cfg.vocab_size * cfg.hidden_size >= SCREEN_MIN_VALUES


def with_head_screen(model: BitNetModel) -> BitNetModel:
    """The same model with an int8 screen of its exact head table, which greedy decoding reads instead of
    the float table (:meth:`pallas_kernels.Kernel.head_greedy`): the same tokens, about half the bytes
    per decoded token for a bfloat16 table. Logits (``forward``, sampling, perplexity) still use the table."""
    if not model.packed or model.form.head != "exact":
        raise ConfigError("the head screen needs a packed model with the exact head")
    if model.form.kernel.head_greedy_fn is None:
        raise ConfigError(f"kernel {model.form.kernel.name!r} has no screened greedy head")
    if SCREEN_NAMES[0] in model.params:
        return model
    name, _ = table_names(model.config.tie_word_embeddings)
    kernel, table = model.form.kernel, np.asarray(model.params[name])
    vocab = table.shape[0]
    codes = aligned_empty(kernel.screen_shape(*table.shape), np.int8)  # the CPU device adopts it without a copy
    scale = np.empty(vocab, np.float32)
    for start in range(0, vocab, QUANTIZE_ROWS):  # a chunk at a time: no row-major copy of the whole table
        chunk_codes, scale[start : start + QUANTIZE_ROWS] = screen_table(table[start : start + QUANTIZE_ROWS])
        kernel.pack_screen(chunk_codes, codes, start)
    params = dict(model.params)
    params[SCREEN_NAMES[0]] = jax.device_put(codes).block_until_ready()
    params[SCREEN_NAMES[1]] = jnp.asarray(scale)
    return dataclasses.replace(model, params=params)


def row_read_tables(params: dict, tie_word_embeddings: bool) -> tuple[str, ...]:
    """The tables of ``params`` a decoding step reads only a few rows of: the embedding when the head has a
    table of its own, and the head's table when greedy decoding goes through its screen."""
    names = [] if tie_word_embeddings else ["embed_tokens"]
    if SCREEN_NAMES[0] in params:
        names.append(table_names(tie_word_embeddings)[0])
    return tuple(n for n in dict.fromkeys(names) if n in params)


def has_screen(params: dict, form: Any) -> bool:
    """Whether greedy decoding of a model of ``form`` (a :class:`~bitnet_jax.model.Form`) with ``params`` goes
    through the head screen (:func:`greedy_tokens`): an exact head, its screen in ``params``, a kernel that
    reads it."""
    kernel = form.kernel
    return form.head == "exact" and SCREEN_NAMES[0] in params and kernel is not None and kernel.head_greedy_fn is not None


def greedy_tokens(x: jax.Array, params: dict, tie_word_embeddings: bool, kernel: Kernel) -> jax.Array:
    """The exact head's argmax token ids ``[B]`` for hidden states ``x [B, D]`` through the head screen
    (for a model :func:`has_screen` accepts)."""
    table = params[table_names(tie_word_embeddings)[0]]
    return kernel.head_greedy(x, table, params[SCREEN_NAMES[0]], params[SCREEN_NAMES[1]])


def embed(table: jax.Array, tokens: jax.Array, scales: jax.Array | None = None) -> jax.Array:
    """Rows of the embedding table for ``tokens`` (dequantized when ``scales`` is given)."""
    if table.dtype == jnp.bfloat16:
        # XLA's CPU backend widens a bfloat16 gather to float32; inside a loop it then hoists a float32
        # copy of the whole table (1.3 GB for 128256 x 2560) out of the loop, converted on every call. The
        # barrier keeps the gather on the table as stored (compiled temporaries: 1.34 GB -> 0)
        table, tokens = jax.lax.optimization_barrier((table, tokens))
    rows = jnp.take(table, tokens, axis=0)
    if scales is None:
        return rows
    return rows.astype(jnp.float32) * jnp.take(scales, tokens, axis=0)[..., None]


def project(x: jax.Array, table: jax.Array, scales: jax.Array | None, kernel: Kernel) -> jax.Array:
    """Float32 logits ``x @ table.T`` for ``x [..., D]``: exact float, or int8 when ``scales`` is given."""
    lead, d = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, d)
    if scales is None:
        logits = kernel.head_float(x2, table)
    else:
        xq, s_x = quant.quantize_activations(x2)
        logits = kernel.head_int8(xq, table).astype(jnp.float32) * scales[None, :] / s_x
    return logits.reshape(*lead, table.shape[0])
