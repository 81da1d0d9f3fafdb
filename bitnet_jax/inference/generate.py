"""``forward`` and ``generate``: whole-sequence logits and KV-cached, jit-compiled generation.

Generation = one prefill over the prompts (right-padded to a length bucket) and a ``lax.while_loop``
of single-token decode steps, all inside one ``jax.jit``; the loop carries a :class:`SamplerState`.
Static shapes: prompt bucket ``P`` (power of two, at least 16) and cache length ``S`` (power of two,
at least ``MIN_CACHE_BUCKET``, holding ``P + max_new_tokens``); the output holds ``S - P`` tokens and
the loop stops after ``max_new_tokens`` (a traced value). Every ``max_new_tokens`` that fits the same
``S`` -- a one-token call included -- reuses the compiled program (:func:`generate_stream`'s prefill
and decode step likewise). Each row keeps its own position, so prompts of different lengths share a batch.
"""

from __future__ import annotations

import functools
from typing import Iterator, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax._memory import compiled_programs, release_host_memory
from bitnet_jax.config import ModelConfig
from bitnet_jax.errors import GenerationError
from bitnet_jax.inference._args import check_generate_args
from bitnet_jax.inference.sampling import SamplingParams, sample
from bitnet_jax.model import BitNetModel, KVCache, Transformer, init_cache
from bitnet_jax.model import head as head_lib
from bitnet_jax.parallel.rules import place_batch

MIN_PROMPT_BUCKET = 16
MIN_CACHE_BUCKET = 128  # cache slots: a 32-token prompt serves every max_new_tokens <= 96 with one program
PAD_ID = -1

Prompt = str | Sequence[int]


def _module(model: BitNetModel) -> Transformer:
    return Transformer(model.config, model.form)


@functools.partial(jax.jit, static_argnames=("module",))
def _forward(params, tokens, module: Transformer):
    logits, _ = module.apply({"params": params}, tokens)
    return logits


def _check_ids(ids: np.ndarray, config: ModelConfig, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
        bad = int(ids[(ids < 0) | (ids >= config.vocab_size)][0])
        raise GenerationError(f"{what} holds token id {bad}, outside the vocabulary [0, {config.vocab_size})")


def forward(model: BitNetModel, tokens: jax.Array | np.ndarray | Sequence[Sequence[int]]) -> jax.Array:
    """Float32 logits ``[B, T, vocab]`` of whole token sequences ``[B, T]`` (causal, no cache)."""
    arr = np.asarray(tokens)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise GenerationError(f"tokens must be a non-empty integer array [B, T], got shape {arr.shape} {arr.dtype}")
    if arr.shape[1] > model.config.max_position_embeddings:
        raise GenerationError(
            f"tokens length {arr.shape[1]} exceeds the context ({model.config.max_position_embeddings})"
        )
    _check_ids(arr, model.config, "tokens")
    return _forward(model.params, place_batch(arr.astype(np.int32), model.params), _module(model))


@flax.struct.dataclass
class SamplerState:
    """The decode loop's carry."""

    step: jax.Array  # tokens generated so far (scalar)
    last_token: jax.Array  # [B] the token to feed next
    position: jax.Array  # [B] that token's position
    done: jax.Array  # [B] row has produced a stop token
    output: jax.Array  # [B, out_len] generated ids, PAD_ID after a row is done
    cache: KVCache
    rng: jax.Array


def _apply(params, module: Transformer, sampling: SamplingParams, *args):
    """The model on ``args``: ``(logits or None, greedy tokens or None, cache)``. Greedy decoding of a model
    with a head screen takes the exact head's argmax through it (:func:`head_lib.greedy_tokens`)."""
    if sampling.greedy and head_lib.has_screen(params, module.form):
        x, cache = module.apply({"params": params}, *args, hidden=True)
        return None, head_lib.greedy_tokens(x[:, -1, :], params, module.config.tie_word_embeddings,
                                            module.form.kernel), cache
    logits, cache = module.apply({"params": params}, *args)
    return logits, None, cache


def _emit(state: SamplerState, logits, sampling, stop_tokens, token=None) -> SamplerState:
    rng, key = jax.random.split(state.rng)
    if token is None:
        token = sample(logits[:, -1, :], key, sampling)
    token = jnp.where(state.done, PAD_ID, token)
    output = jax.lax.dynamic_update_slice_in_dim(state.output, token[:, None], state.step, axis=1)
    done = state.done | jnp.isin(token, stop_tokens)
    return state.replace(step=state.step + 1, last_token=jnp.maximum(token, 0), done=done, output=output, rng=rng)


def _prefill(params, tokens, lengths, rng, sampling, stop_tokens, module: Transformer, cache_len: int, out_len: int):
    b = tokens.shape[0]
    cache = init_cache(module.config, b, cache_len, stacked=module.form.scan_layers)
    logits, token, cache = _apply(params, module, sampling, tokens, None, cache, lengths - 1)
    state = SamplerState(
        step=jnp.int32(0),
        last_token=jnp.zeros((b,), jnp.int32),
        position=lengths,
        done=jnp.zeros((b,), bool),
        output=jnp.full((b, out_len), PAD_ID, jnp.int32),
        cache=cache,
        rng=rng,
    )
    return _emit(state, logits, sampling, stop_tokens, token)


def _decode_step(params, state: SamplerState, sampling, stop_tokens, module: Transformer) -> SamplerState:
    logits, token, cache = _apply(params, module, sampling, state.last_token[:, None], state.position[:, None],
                                  state.cache)
    state = state.replace(cache=cache, position=state.position + 1)
    return _emit(state, logits, sampling, stop_tokens, token)


@functools.partial(jax.jit, static_argnames=("module", "cache_len", "out_len"))
def _generate_loop(params, tokens, lengths, max_new, rng, sampling, stop_tokens, module, cache_len, out_len):
    state = _prefill(params, tokens, lengths, rng, sampling, stop_tokens, module, cache_len, out_len)

    def cond(s: SamplerState):
        return (s.step < max_new) & ~jnp.all(s.done)

    def body(s: SamplerState):
        return _decode_step(params, s, sampling, stop_tokens, module)

    return jax.lax.while_loop(cond, body, state).output


_prefill_jit = jax.jit(_prefill, static_argnames=("module", "cache_len", "out_len"))
_decode_step_jit = jax.jit(_decode_step, static_argnames=("module",), donate_argnames=("state",))


def bucket(n: int, minimum: int, cap: int | None = None) -> int:
    """The smallest power of two >= max(n, minimum), capped at ``cap``."""
    size = max(minimum, 1 << max(n - 1, 0).bit_length())
    return min(size, cap) if cap is not None else size


def _encode_prompts(model: BitNetModel, prompts) -> list[list[int]]:
    if isinstance(prompts, str) or (
        isinstance(prompts, (list, tuple, np.ndarray)) and len(prompts) and isinstance(prompts[0], (int, np.integer))
    ):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise GenerationError("prompts must be a non-empty list of strings or token-id lists")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if model.tokenizer is None:
                raise GenerationError(f"prompt {i} is a string but the model has no tokenizer; pass token ids")
            ids = model.tokenizer.encode(p, add_bos=model.config.bos_token_id is not None)
        else:
            try:
                ids = [int(t) for t in p]
            except (TypeError, ValueError):
                raise GenerationError(f"prompt {i} must be a string or a list of token ids, got {p!r:.80}") from None
        if not ids:
            raise GenerationError(f"prompt {i} is empty")
        _check_ids(np.asarray(ids), model.config, f"prompt {i}")
        out.append(ids)
    return out


def default_stop_tokens(model: BitNetModel) -> tuple[int, ...]:
    """The checkpoint's stops: the config's EOS ids (``generation_config.json``'s included) and the
    tokenizer's end-of-turn tokens (``<|eot_id|>``, ``<|im_end|>``, ...)."""
    ids = list(model.config.eos_token_ids)
    if model.tokenizer is not None and hasattr(model.tokenizer, "end_of_turn_ids"):
        ids += [i for i in model.tokenizer.end_of_turn_ids() if 0 <= i < model.config.vocab_size]
    return tuple(dict.fromkeys(ids))


def _prepare(model: BitNetModel, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens):
    config = model.config
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(seed, int):
        raise GenerationError(f"seed must be an integer, got {seed!r}")
    sampling = SamplingParams.create(temperature, top_k, top_p, config.vocab_size)
    ids = _encode_prompts(model, prompts)
    context = config.max_position_embeddings
    for i, p in enumerate(ids):
        if len(p) + max_new_tokens > context:
            raise GenerationError(
                f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} it exceeds the "
                f"context of {context} tokens"
            )
    longest = max(len(p) for p in ids)
    prompt_len = bucket(longest, MIN_PROMPT_BUCKET, context)
    cache_len = bucket(prompt_len + max_new_tokens, MIN_CACHE_BUCKET, context)
    # a cache capped at the context can be shorter than the padded prompt plus the output; each row's
    # own prompt plus max_new_tokens still fits it (checked above)
    out_len = max(cache_len - prompt_len, max_new_tokens)
    tokens = np.zeros((len(ids), prompt_len), np.int32)
    for i, p in enumerate(ids):
        tokens[i, : len(p)] = p
    lengths = np.array([len(p) for p in ids], np.int32)
    stops = default_stop_tokens(model) if stop_tokens is None else tuple(int(t) for t in stop_tokens)
    stop_arr = np.array(stops or (PAD_ID - 1,), np.int32)  # an id no token can match when there are none
    return dict(
        tokens=place_batch(tokens, model.params),
        lengths=place_batch(lengths, model.params),
        rng=jax.random.PRNGKey(seed),
        sampling=sampling,
        stop_tokens=jnp.asarray(stop_arr),
        cache_len=cache_len,
        out_len=out_len,
    )


def _trim(row: np.ndarray, max_new_tokens: int) -> np.ndarray:
    row = row[:max_new_tokens]
    pad = np.nonzero(row == PAD_ID)[0]
    return row[: pad[0]] if pad.size else row


def generate(
    model: BitNetModel,
    prompts: Prompt | Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop_tokens: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Generate new token ids for each prompt; returns one int32 array per prompt.

    Prompts are token-id lists (or strings when the model has a tokenizer; BOS is then prepended).
    ``temperature=0`` is greedy. A row stops after emitting one of ``stop_tokens`` (default:
    :func:`default_stop_tokens`, the config's EOS ids and the tokenizer's end-of-turn tokens; pass ``()``
    for none), and that stop token is included in its output.
    """
    check_generate_args(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens)
    prep = _prepare(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens)
    programs = compiled_programs(_generate_loop)
    out = _generate_loop(
        model.params,
        prep["tokens"],
        prep["lengths"],
        jnp.int32(max_new_tokens),
        prep["rng"],
        prep["sampling"],
        prep["stop_tokens"],
        module=_module(model),
        cache_len=prep["cache_len"],
        out_len=prep["out_len"],
    )
    rows = np.asarray(out)
    if compiled_programs(_generate_loop) > programs:
        release_host_memory()  # the compiler's freed working memory (about 1.4 GB for the 2B4T shape)
    return [_trim(row, max_new_tokens) for row in rows]


def generate_stream(
    model: BitNetModel,
    prompts: Prompt | Sequence[Prompt],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop_tokens: Sequence[int] | None = None,
) -> Iterator[list[int | None]]:
    """Like :func:`generate`, but yields after every step: one new id per prompt (None once it stopped).

    Produces exactly the tokens :func:`generate` returns for the same arguments.
    """
    check_generate_args(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens)
    prep = _prepare(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens)
    module = _module(model)
    def programs() -> int:
        return compiled_programs(_prefill_jit) + compiled_programs(_decode_step_jit)

    before = programs()
    state = _prefill_jit(
        model.params,
        prep["tokens"],
        prep["lengths"],
        prep["rng"],
        prep["sampling"],
        prep["stop_tokens"],
        module=module,
        cache_len=prep["cache_len"],
        out_len=prep["out_len"],
    )
    for step in range(max_new_tokens):
        if step:
            state = _decode_step_jit(model.params, state, prep["sampling"], prep["stop_tokens"], module=module)
        tokens = np.asarray(state.output[:, step])
        if step <= 1 and programs() > before:  # after the prefill's and the decode step's first compile
            release_host_memory()
            before = programs()
        yield [int(t) if t != PAD_ID else None for t in tokens]
        if bool(np.all(np.asarray(state.done))):
            return
