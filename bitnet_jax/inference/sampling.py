"""Token selection from logits: greedy, temperature, top-k and top-p (nucleus), jit-friendly."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from bitnet_jax.errors import SamplingError


@flax.struct.dataclass
class SamplingParams:
    """Sampling settings: values are traced (no recompile when they change); the flags are static."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    greedy: bool = flax.struct.field(pytree_node=False, default=True)
    use_top_k: bool = flax.struct.field(pytree_node=False, default=False)
    use_top_p: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def create(
        cls, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, vocab_size: int = 0
    ) -> "SamplingParams":
        """Validate the user's arguments (clear errors naming the argument) and build the params."""
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
            raise SamplingError(f"temperature must be a number >= 0, got {temperature!r}")
        if top_k is not None:
            if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
                raise SamplingError(f"top_k must be a positive integer or None, got {top_k!r}")
            if vocab_size and top_k > vocab_size:
                raise SamplingError(f"top_k ({top_k}) exceeds the vocabulary size ({vocab_size})")
        if top_p is not None:
            if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not (0.0 < top_p <= 1.0):
                raise SamplingError(f"top_p must be in (0, 1], got {top_p!r}")
        greedy = temperature == 0
        return cls(
            temperature=jnp.float32(temperature if not greedy else 1.0),
            top_k=jnp.int32(top_k or 1),
            top_p=jnp.float32(top_p or 1.0),
            greedy=greedy,
            use_top_k=(not greedy) and top_k is not None,
            use_top_p=(not greedy) and top_p is not None and top_p < 1.0,
        )


def _per_row(value: jax.Array, logits: jax.Array) -> jax.Array:
    """A scalar setting as is; a per-row ``[B]`` setting as ``[B, 1]`` (broadcasts against ``[B, V]``)."""
    value = jnp.asarray(value)
    return value[..., None] if value.ndim == logits.ndim - 1 else value


def filter_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature-scale ``logits [B, V]`` and mask (to -inf) what top-k / top-p exclude.

    The settings are scalars, or ``[B]`` arrays (one value per row: the serving engine's slots; a row's
    ``top_k = V`` and ``top_p = 1`` keep every token)."""
    logits = logits.astype(jnp.float32) / _per_row(params.temperature, logits)
    if not (params.use_top_k or params.use_top_p):
        return logits
    sorted_desc = -jnp.sort(-logits, axis=-1)
    threshold = jnp.full(logits.shape[:-1] + (1,), -jnp.inf, jnp.float32)
    if params.use_top_k:
        index = jnp.broadcast_to(_per_row(params.top_k - 1, logits), threshold.shape)
        threshold = jnp.maximum(threshold, jnp.take_along_axis(sorted_desc, index, axis=-1))
    if params.use_top_p:
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
        top_p = _per_row(params.top_p, logits)
        # the first token is always kept; top_p = 1 keeps all (a rounded cumsum may reach 1 early)
        kept = jnp.where((before < top_p) | (top_p >= 1.0), sorted_desc, jnp.inf)
        threshold = jnp.maximum(threshold, jnp.min(kept, axis=-1, keepdims=True))
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample(logits: jax.Array, rng: jax.Array, params: SamplingParams) -> jax.Array:
    """One token id per row of ``logits [B, V]`` (int32)."""
    if params.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits, params), axis=-1).astype(jnp.int32)

