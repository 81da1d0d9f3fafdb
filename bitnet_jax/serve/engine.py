"""The continuous-batching engine: a fixed set of decode slots stepped together by one jitted program.

The KV cache holds ``slots`` rows of ``context`` positions. Each step decodes one token for every slot
(``[slots]`` tokens at ``[slots]`` positions, per-slot temperature / top-k / top-p / greedy flag as arrays
and a per-slot RNG key), so requests with different lengths and sampling settings share one compiled
program. Between steps the waiting requests that fit the free slots are prefilled (each prompt
right-padded to a bucket, a power of two or 1.5x one: :func:`prompt_bucket`; prompts of one
bucket that arrive together are prefilled in one call of up to ``prefill_batch`` rows), their keys and
values are copied into free slots and their first tokens are sampled; a slot whose request has finished
(stop token, ``max_tokens``, the end of the context) or was cancelled is free for the next request at
once. While no request waits, one call may run a burst of up to ``BURST_STEPS`` steps (as many as fit
``BURST_SECONDS`` at the measured step time): a small model's per-call host work is then shared by
several tokens, and a large model (a step longer than ``BURST_SECONDS``) keeps one step per call. Compiled programs: one decode step per power-of-two count of leading slots in use (the lowest free
slot is filled first) and one prefill per prompt bucket and power-of-two row count (at most
``PREFILL_TOKENS`` tokens per call), whatever the traffic (:meth:`Engine.compile_counts`).

The engine runs in its own thread; :meth:`Engine.submit` is thread-safe and returns a :class:`Request`
whose events (tokens, then the finish reason) go to a callback or to a blocking iterator. An exception
inside one request (a failing callback, a bad prefill) fails that request alone.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bitnet_jax.errors import EngineClosedError, GenerationError, QueueFullError
from bitnet_jax.inference.generate import MIN_PROMPT_BUCKET, _check_ids, _module, bucket, default_stop_tokens
from bitnet_jax.inference.sampling import SamplingParams, filter_logits
from pallas_kernels.attention import MIN_FUSED_T
from bitnet_jax.model import BitNetModel, Transformer, init_cache
from bitnet_jax.model import head as head_lib

PREFILL_BATCH = 4  # prompts of one bucket prefilled together, at most (Engine's default)
PREFILL_TOKENS = 512  # rows x bucket of a batched prefill, at most (a longer prompt is prefilled alone)
BURST_STEPS = 16  # decode steps one call may run when no request waits (a fast model's host work, shared)
BURST_SECONDS = 0.01  # ... as many as fit this long at the measured step time


def prompt_bucket(n: int, minimum: int, cap: int) -> int:
    """The prefill length of an ``n``-token prompt: the smallest power of two or 1.5x a power of two
    >= max(n, minimum), capped at ``cap``; from 128 up only multiples of 128 (the fused attention's block).

    Half-steps pad a prompt by at most 50% (33 tokens: 48, not 64), for about twice the programs of
    powers of two; prefill is the engine's largest computation, and its cost grows with the padded length.
    """
    size = bucket(n, minimum)
    half = size // 4 * 3
    if size % 4 == 0 and half >= max(n, minimum) and (half < MIN_FUSED_T or half % MIN_FUSED_T == 0):
        size = half
    return min(size, cap)


def _sample_slots(logits, keys, temperature, top_k, top_p, greedy):
    """One token per row of ``logits [S, V]`` with per-row settings ``[S]`` and keys ``[S, 2]``."""
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sampled():
        params = SamplingParams(temperature, top_k, top_p, greedy=False, use_top_k=True, use_top_p=True)
        filtered = filter_logits(logits, params)
        # one key per row, drawn as bj.generate draws a single-row batch
        return jax.vmap(lambda k, row: jax.random.categorical(k, row[None])[0])(keys, filtered).astype(jnp.int32)

    drawn = jax.lax.cond(jnp.all(greedy), lambda: best, sampled)  # all-greedy steps skip the sort
    return jnp.where(greedy, best, drawn)


def _next_tokens(params, module: Transformer, args: tuple, keys, temperature, top_k, top_p, greedy):
    """The model on ``args`` and one token per row (``_sample_slots``' rule): ``(tokens [S], cache)``.

    With a head screen (an exact head whose int8 screen is in ``params``), a step whose rows are all greedy
    takes the exact head's argmax through it (:func:`head_lib.greedy_tokens`, the same tokens) instead of
    computing every logit; a step with a sampled row computes the logits from the same hidden states."""
    if not head_lib.has_screen(params, module.form):
        logits, cache = module.apply({"params": params}, *args)
        return _sample_slots(logits[:, -1, :], keys, temperature, top_k, top_p, greedy), cache
    x, cache = module.apply({"params": params}, *args, hidden=True)
    h, tie, kernel = x[:, -1, :], module.config.tie_word_embeddings, module.form.kernel

    def screened():
        return head_lib.greedy_tokens(h, params, tie, kernel)

    def from_logits():
        logits = head_lib.project(h, params[head_lib.table_names(tie)[0]], None, kernel)
        return _sample_slots(logits, keys, temperature, top_k, top_p, greedy)

    return jax.lax.cond(jnp.all(greedy), screened, from_logits), cache


@functools.partial(jax.jit, static_argnames=("module", "rows"), donate_argnames=("cache", "keys"))
def _decode_slots(params, cache, keys, tokens, positions, temperature, top_k, top_p, greedy, steps,
                  module: Transformer, rows: int):
    """``steps`` (1 .. BURST_STEPS, traced) decode steps of slots ``[0, rows)`` (inputs ``[rows]``): the
    tokens ``[BURST_STEPS, rows]`` (the first ``steps`` rows are meaningful), the cache and keys.

    ``rows`` is a power-of-two bucket covering the busy slots (the engine fills the lowest free slot
    first), so a lightly loaded engine does not pay for the head and layers of idle slots. The model runs
    on the whole cache (it reads and writes rows ``[0, rows)`` in place): slicing those rows out and writing
    them back would copy every slot's keys and values each step. Each step feeds a slot its own last
    token, so a burst of ``steps`` gives the tokens that ``steps`` single calls would.
    """
    def step(i, carry):
        token, cache, keys, out = carry
        pairs = jax.vmap(jax.random.split)(keys[:rows])  # [rows, 2, 2]: (carry, draw) as bj.generate splits
        token, cache = _next_tokens(params, module, (token[:, None], (positions + i)[:, None], cache), pairs[:, 1],
                                    temperature, top_k, top_p, greedy)
        return token, cache, keys.at[:rows].set(pairs[:, 0]), out.at[i].set(token)

    out = jnp.zeros((BURST_STEPS, rows), jnp.int32)
    _, cache, keys, out = jax.lax.fori_loop(0, steps, step, (tokens, cache, keys, out))
    return out, cache, keys


@functools.partial(jax.jit, static_argnames=("module",), donate_argnames=("cache", "keys"))
def _prefill_slots(params, cache, keys, slots, tokens, lengths, seed_keys, temperature, top_k, top_p, greedy,
                   module: Transformer):
    """Prefill prompts ``tokens [n, P]`` (``lengths [n]`` real tokens each) into slots ``slots [n]``.

    Returns each row's first token, the cache and the keys. A row may repeat another row exactly (the
    engine pads a batch to its power-of-two size that way): it writes the same values to the same slot.
    """
    n, size = tokens.shape
    local = init_cache(module.config, n, size, stacked=module.form.scan_layers)
    pairs = jax.vmap(jax.random.split)(seed_keys)  # [n, 2, 2]: (carry, draw) as bj.generate splits its key
    token, local = _next_tokens(params, module, (tokens, None, local, lengths - 1), pairs[:, 1], temperature, top_k,
                                top_p, greedy)

    def put(big, small):  # big [(L,) S, C, ...], small [(L,) n, P, ...]: one in-place write per row
        lead = big.ndim - 4
        for i in range(n):
            row = jax.lax.slice_in_dim(small, i, i + 1, axis=lead).astype(big.dtype)
            big = jax.lax.dynamic_update_slice(big, row, (0,) * lead + (slots[i], 0, 0, 0))
        return big

    cache = jax.tree.map(put, cache, local)
    return token, cache, keys.at[slots].set(pairs[:, 0])


@dataclass
class Request:
    """One generation request: prompt ids, limits and sampling settings, and its progress."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop_ids: frozenset[int] = frozenset()
    on_event: Callable[[str, object], None] | None = None
    id: int = 0
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: BaseException | None = None
    submitted_at: float = 0.0
    first_token_at: float | None = None
    finished_at: float | None = None
    _cancelled: bool = False
    _done: threading.Event = field(default_factory=threading.Event)
    _events: "queue.Queue | None" = None

    def cancel(self) -> None:
        """Ask the engine to stop this request; its slot is freed before the next decode step."""
        self._cancelled = True

    @property
    def done(self) -> bool:
        """Whether the request has finished (any reason)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> list[int]:
        """Block until the request finishes; its generated ids (raises the request's error, if any)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return list(self.tokens)

    def stream(self, timeout: float | None = None) -> Iterator[int]:
        """Yield generated ids as they come (a request submitted without ``on_event``)."""
        if self._events is None:
            raise GenerationError("stream() needs a request submitted without on_event")
        while True:
            kind, value = self._events.get(timeout=timeout)
            if kind == "token":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def _emit(self, kind: str, value: object) -> None:
        if self.on_event is not None:
            self.on_event(kind, value)
        else:
            self._events.put((kind, value))


class Engine:
    """Continuous batching over ``slots`` decode slots of ``context`` positions each (see the module doc)."""

    def __init__(self, model: BitNetModel, *, slots: int = 8, max_queue: int = 64, context: int | None = None,
                 prefill_batch: int = PREFILL_BATCH, metrics=None):
        limit = model.config.max_position_embeddings
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise GenerationError(f"slots must be a positive integer, got {slots!r}")
        if not isinstance(max_queue, int) or isinstance(max_queue, bool) or max_queue < 0:
            raise GenerationError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        if not isinstance(prefill_batch, int) or isinstance(prefill_batch, bool) or prefill_batch < 1:
            raise GenerationError(f"prefill_batch must be a positive integer, got {prefill_batch!r}")
        context = limit if context is None else context
        if not isinstance(context, int) or isinstance(context, bool) or not 2 <= context <= limit:
            raise GenerationError(f"context must be an integer in [2, {limit}] (the model's context), got {context!r}")
        self.model, self.slots, self.max_queue, self.context = model, slots, max_queue, context
        self.prefill_batch = min(prefill_batch, slots)
        self.metrics = metrics
        self.default_stop_ids = frozenset(default_stop_tokens(model))
        self._module = _module(model)
        self._cache = init_cache(model.config, slots, context, stacked=model.form.scan_layers)
        self._keys = jnp.zeros((slots, 2), jnp.uint32)
        vocab = model.config.vocab_size
        self._tokens = np.zeros(slots, np.int32)
        self._positions = np.zeros(slots, np.int32)
        self._temperature = np.ones(slots, np.float32)
        self._top_k = np.full(slots, vocab, np.int32)
        self._top_p = np.ones(slots, np.float32)
        self._greedy = np.ones(slots, bool)
        self._running: list[Request | None] = [None] * slots
        self._waiting: list[Request] = []
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run
        self.decode_calls = 0  # decode calls run (a call runs a burst of steps when no request waits)
        self._step_seconds: float | None = None  # a decode step's time (moving average): sizes the bursts
        self.prefills = 0  # prefill calls run (each serves up to prefill_batch requests)

    # -- public API -------------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        """Start the engine thread (idempotent); returns self."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="bitnet-jax-engine", daemon=True)
                self._thread.start()
        return self

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown(drain=exc[0] is None)

    def submit(self, prompt: Sequence[int], *, max_tokens: int, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, seed: int = 0, stop_ids: Sequence[int] | None = None,
               on_event: Callable[[str, object], None] | None = None) -> Request:
        """Queue a request (prompt token ids); raises :class:`QueueFullError` when the queue is full.

        ``stop_ids`` default to the model's stops (:func:`~bitnet_jax.inference.generate.default_stop_tokens`);
        a generated stop id ends the request and is included in its tokens. ``on_event(kind, value)`` is
        called from the engine thread with ``("token", id)`` per token and then ``("done", reason)`` or
        ``("error", exception)``; without it use :meth:`Request.stream` or :meth:`Request.wait`.
        """
        ids = [int(t) for t in prompt]
        if not ids:
            raise GenerationError("prompt is empty")
        _check_ids(np.asarray(ids), self.model.config, "prompt")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise GenerationError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if len(ids) + max_tokens > self.context:
            raise GenerationError(f"prompt has {len(ids)} tokens; with max_tokens={max_tokens} it exceeds the "
                                  f"context of {self.context} tokens")
        SamplingParams.create(temperature, top_k, top_p, self.model.config.vocab_size)  # validates
        if not isinstance(seed, int) or isinstance(seed, bool) or not -(2**31) <= seed < 2**32:
            raise GenerationError(f"seed must be an integer in [-2**31, 2**32), got {seed!r}")
        stops = self.default_stop_ids if stop_ids is None else frozenset(int(t) for t in stop_ids)
        request = Request(ids, max_tokens, float(temperature), top_k, top_p, seed, stops, on_event,
                          id=next(self._ids), submitted_at=time.perf_counter())
        if on_event is None:
            request._events = queue.Queue()
        with self._lock:
            if not self._accepting:
                raise EngineClosedError("the server is shutting down and takes no new requests")
            if len(self._waiting) >= self.max_queue + self._free_slot_count():
                self._count("rejected")
                raise QueueFullError(f"the queue is full ({self.max_queue} waiting requests); retry later")
            self._waiting.append(request)
            self._lock.notify_all()
        return request

    def generate(self, prompts: Sequence[Sequence[int]], *, max_tokens: int, **kwargs) -> list[np.ndarray]:
        """Submit every prompt at once and wait: one int32 array of generated ids per prompt."""
        self.start()
        requests = [self.submit(p, max_tokens=max_tokens, **kwargs) for p in prompts]
        return [np.asarray(r.wait(), np.int32) for r in requests]

    def warmup(self) -> None:
        """Compile the decode step and every prompt bucket's prefills now (before the engine serves)."""
        sizes = sorted({self._prompt_bucket(n) for n in range(1, self.context)})
        for size in sizes:
            prompt, most = [0] * min(size, self.context - 1), self._prefill_rows(size)
            for rows in sorted({bucket(n, 1, most) for n in range(1, most + 1)}):
                self._prefill(size, [(0, prompt, 0.0, None, None, 0)] * rows)
        for rows in self._row_buckets():
            self._step(rows)
        self._positions[:] = 0
        self.steps = self.prefills = self.decode_calls = 0
        self._step_seconds = None  # (the warm-up calls' times include compiling)

    def compile_counts(self) -> dict[str, int]:
        """How many programs the engine's jitted functions hold (prefill: one per prompt bucket and row count)."""
        return {"decode": _decode_slots._cache_size(), "prefill": _prefill_slots._cache_size()}

    def stats(self) -> dict[str, int]:
        """``{"slots", "busy", "waiting"}`` now."""
        with self._lock:
            return {"slots": self.slots, "busy": self.slots - self._free_slot_count(), "waiting": len(self._waiting)}

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; finish (``drain``) or cancel the running and waiting ones; stop the thread."""
        with self._lock:
            self._accepting = False
            if not drain:
                for r in self._waiting + [r for r in self._running if r is not None]:
                    r.cancel()
            self._lock.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive():
            with self._lock:
                idle = not self._waiting and all(r is None for r in self._running)
                if idle:
                    self._stop = True
                    self._lock.notify_all()
            if idle:
                break
            if deadline is not None and time.monotonic() > deadline:
                with self._lock:
                    for r in self._waiting + [r for r in self._running if r is not None]:
                        r.cancel()
            time.sleep(0.01)
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the engine thread --------------------------------------------------------------------------------------
    def _free_slot_count(self) -> int:
        return sum(r is None for r in self._running)

    def _count(self, name: str, value: float = 1.0, **labels) -> None:
        if self.metrics is not None:
            self.metrics.record(name, value, **labels)

    def _loop(self) -> None:
        while not self._stop:
            try:
                self._iterate()
            except Exception as e:  # noqa: BLE001  (never let the engine thread die: fail what was running)
                for slot, r in enumerate(self._running):
                    if r is not None:
                        try:
                            self._finish(slot, "error", e)
                        except Exception:  # noqa: BLE001
                            self._running[slot] = None

    def _iterate(self) -> None:
        """Admit waiting requests into free slots, reap cancelled ones, run one decode step."""
        with self._lock:
            while not self._stop and not self._waiting and all(r is None for r in self._running):
                self._lock.wait(0.5)
            if self._stop:
                return
            admitted = []
            for slot in range(self.slots):
                if self._running[slot] is None and self._waiting:
                    request = self._waiting.pop(0)
                    self._running[slot] = request
                    admitted.append((slot, request))
        self._admit(admitted)
        self._reap_cancelled()
        if any(r is not None for r in self._running):
            try:
                tokens = self._step(steps=self._burst())
            except Exception as e:  # noqa: BLE001  (a failed step fails the running requests, not the engine)
                for slot, r in enumerate(self._running):
                    if r is not None:
                        self._finish(slot, "error", e)
                return
            for row in tokens:  # step by step: a request that finishes takes none of the later steps' tokens
                for slot, r in enumerate(self._running[: len(row)]):
                    if r is not None and r._cancelled:  # cancelled during a burst: no more of its tokens
                        self._finish(slot, "cancelled")
                    elif r is not None:
                        self._positions[slot] += 1
                        self._deliver(slot, int(row[slot]))

    def _admit(self, admitted: list[tuple[int, Request]]) -> None:
        """Prefill the admitted requests (by prompt bucket, ``prefill_batch`` at a time); their first tokens."""
        groups: dict[int, list[tuple[int, Request]]] = {}
        for slot, request in admitted:
            if request._cancelled:
                self._finish(slot, "cancelled")
            else:
                groups.setdefault(self._prompt_bucket(len(request.prompt)), []).append((slot, request))
        for size, members in groups.items():
            step = self._prefill_rows(size)
            for i in range(0, len(members), step):
                group = members[i:i + step]
                try:
                    tokens = self._prefill(size, [(slot, r.prompt, r.temperature, r.top_k, r.top_p, r.seed)
                                                  for slot, r in group])
                except Exception as e:  # noqa: BLE001  (a failed prefill fails its own requests only)
                    for slot, _ in group:
                        self._finish(slot, "error", e)
                    continue
                for (slot, request), token in zip(group, tokens):
                    self._count("prompt_tokens", len(request.prompt))
                    self._deliver(slot, int(token))

    def _prompt_bucket(self, length: int) -> int:
        return prompt_bucket(length, MIN_PROMPT_BUCKET, self.context)

    def _prefill_rows(self, size: int) -> int:
        """The most prompts of bucket ``size`` one prefill call takes."""
        return max(1, min(self.prefill_batch, PREFILL_TOKENS // size))

    def _prefill(self, size: int, rows: list[tuple]) -> np.ndarray:
        """Prefill ``rows`` of ``(slot, prompt, temperature, top_k, top_p, seed)`` (prompts of bucket ``size``)
        in one call padded to a power-of-two row count; each row's first token."""
        count = len(rows)
        rows = rows + [rows[-1]] * (bucket(count, 1, self._prefill_rows(size)) - count)  # repeats write the same
        n = len(rows)
        tokens, lengths, slots = np.zeros((n, size), np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32)
        for i, (slot, prompt, temperature, top_k, top_p, _) in enumerate(rows):
            tokens[i, : len(prompt)] = prompt
            lengths[i], slots[i] = len(prompt), slot
            greedy = temperature == 0
            self._temperature[slot] = 1.0 if greedy else temperature
            self._top_k[slot] = top_k or self.model.config.vocab_size
            self._top_p[slot] = 1.0 if top_p is None else top_p
            self._greedy[slot] = greedy
        seeds = jnp.stack([jax.random.PRNGKey(row[5]) for row in rows])
        token, self._cache, self._keys = _prefill_slots(
            self.model.params, self._cache, self._keys, slots, tokens, lengths, seeds, self._temperature[slots],
            self._top_k[slots], self._top_p[slots], self._greedy[slots], module=self._module)
        self.prefills += 1
        for slot, prompt, *_ in rows:
            self._positions[slot] = len(prompt)
        return np.asarray(token)[:count]

    def _row_buckets(self) -> list[int]:
        return sorted({bucket(n, 1, self.slots) for n in range(1, self.slots + 1)})

    def _burst(self) -> int:
        """How many decode steps the next call runs: one while requests wait (admission comes first), else
        as many as fit ``BURST_SECONDS`` at the measured step time (a fast model's per-call host work is
        then shared by up to ``BURST_STEPS`` tokens), within every running request's tokens and context."""
        with self._lock:
            waiting = bool(self._waiting)
        if waiting or self._step_seconds is None:
            return 1
        busy = [(slot, r) for slot, r in enumerate(self._running) if r is not None]
        room = min(min(r.max_tokens - len(r.tokens), self.context - int(self._positions[slot])) for slot, r in busy)
        return max(1, min(BURST_STEPS, room, int(BURST_SECONDS / self._step_seconds)))

    def _step(self, rows: int | None = None, steps: int = 1) -> np.ndarray:
        """Run ``steps`` decode steps of the busy leading slots; their tokens ``[steps, rows]``."""
        if rows is None:
            busy = [i for i, r in enumerate(self._running) if r is not None]
            rows = bucket(busy[-1] + 1, 1, self.slots)
        start = time.perf_counter()
        tokens, self._cache, self._keys = _decode_slots(
            self.model.params, self._cache, self._keys, self._tokens[:rows], self._positions[:rows],
            self._temperature[:rows], self._top_k[:rows], self._top_p[:rows], self._greedy[:rows],
            np.int32(steps), module=self._module, rows=rows)
        tokens = np.asarray(tokens)[:steps]
        per_step = (time.perf_counter() - start) / steps
        self._step_seconds = per_step if self._step_seconds is None else 0.8 * self._step_seconds + 0.2 * per_step
        self.steps += steps
        self.decode_calls += 1
        for _ in range(steps):
            self._count("step_seconds", per_step)
        return tokens

    def _deliver(self, slot: int, token: int) -> None:
        request = self._running[slot]
        request.tokens.append(token)
        self._tokens[slot] = token
        now = time.perf_counter()
        if request.first_token_at is None:
            request.first_token_at = now
            self._count("ttft", now - request.submitted_at)
        self._count("generation_tokens")
        try:
            request._emit("token", token)
        except Exception as e:  # noqa: BLE001  (a failing consumer fails its own request only)
            self._finish(slot, "error", e)
            return
        if token in request.stop_ids:
            self._finish(slot, "stop")
        elif len(request.tokens) >= request.max_tokens or self._positions[slot] >= self.context:
            self._finish(slot, "length")

    def _reap_cancelled(self) -> None:
        for slot, r in enumerate(self._running):
            if r is not None and r._cancelled:
                self._finish(slot, "cancelled")
        with self._lock:
            gone = [r for r in self._waiting if r._cancelled]
            self._waiting = [r for r in self._waiting if not r._cancelled]
        for r in gone:
            r.finish_reason, r.finished_at = "cancelled", time.perf_counter()
            self._count("requests", reason="cancelled")
            r._done.set()
            try:
                r._emit("done", "cancelled")
            except Exception:  # noqa: BLE001
                pass

    def _finish(self, slot: int, reason: str, error: BaseException | None = None) -> None:
        request = self._running[slot]
        with self._lock:
            self._running[slot] = None
            self._positions[slot] = 0
            self._tokens[slot] = 0
            self._greedy[slot] = True
            self._lock.notify_all()
        request.finish_reason, request.error, request.finished_at = reason, error, time.perf_counter()
        self._count("requests", reason=reason)
        request._done.set()
        try:
            request._emit("error" if error is not None else "done", error if error is not None else reason)
        except Exception:  # noqa: BLE001  (the consumer is gone; the slot is already free)
            pass
