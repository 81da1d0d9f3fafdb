"""The continuous-batching engine in Python: identical greedy tokens, steady compiles, cancel, faults."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import bitnet_jax as bj
from bitnet_jax.errors import GenerationError
from bitnet_jax.serve import Engine, QueueFullError
from serve_helpers import PROMPTS, REF_TOKENS
from serve_helpers import *  # noqa: F401,F403  (the session fixtures: model, references, server)


@pytest.fixture(scope="module")
def engine(model):
    e = Engine(model, slots=3, max_queue=4, context=48)
    e.warmup()
    e.warm_counts = e.compile_counts()
    e.start()
    yield e
    e.shutdown(drain=False)


def _ids(model, prompt):
    return model.tokenizer.encode(prompt, add_bos=True)


def test_greedy_alone_and_concurrent_match_generate(model, engine, references):
    for p in PROMPTS[:2]:  # alone
        assert engine.generate([_ids(model, p)], max_tokens=REF_TOKENS)[0].tolist() == references[p]
    # all together, more requests than slots, different output lengths: each a prefix of its reference
    lengths = [16, 5, 11, 3, 16]
    reqs = [engine.submit(_ids(model, p), max_tokens=n) for p, n in zip(PROMPTS, lengths)]
    for p, n, r in zip(PROMPTS, lengths, reqs):
        got = r.wait(120)
        ref = references[p][:n]
        assert got == ref, (p, got, ref)
        assert r.finish_reason == ("stop" if len(ref) < n or ref[-1] in engine.default_stop_ids else "length")
    assert engine.stats() == {"slots": 3, "busy": 0, "waiting": 0}


def test_sampling_matches_generate_with_the_same_seed(model, engine):
    ids = _ids(model, PROMPTS[0])
    kw = dict(temperature=0.8, top_k=40, top_p=0.9, seed=7)
    ref = bj.generate(model, [ids], max_new_tokens=REF_TOKENS, **kw)[0].tolist()
    greedy = engine.submit(_ids(model, PROMPTS[1]), max_tokens=REF_TOKENS)  # mixed settings share the step
    assert engine.submit(ids, max_tokens=REF_TOKENS, **kw).wait(120) == ref
    greedy.wait(120)
    other = engine.submit(ids, max_tokens=REF_TOKENS, **{**kw, "seed": 8}).wait(120)
    assert other != ref  # the seed matters


def test_a_fast_model_decodes_in_bursts_with_the_same_tokens(model, engine, references):
    """With no request waiting, one call runs several decode steps (a fast model's host work per token is
    shared); a burst stops at max_tokens and at a stop token exactly as single steps do."""
    assert engine.stats() == {"slots": 3, "busy": 0, "waiting": 0}  # (the module's engine, idle)
    calls0, steps0 = engine.decode_calls, engine.steps
    for p, n in ((PROMPTS[0], REF_TOKENS), (PROMPTS[1], 5), (PROMPTS[2], REF_TOKENS)):
        steps = engine.steps
        got = engine.generate([_ids(model, p)], max_tokens=n)[0].tolist()
        assert got == references[p][:n]
        assert engine.steps - steps == len(got) - 1  # the first token comes from the prefill
    # bursts ran (the tiny model's step is well under BURST_SECONDS)
    assert engine.decode_calls - calls0 < engine.steps - steps0


def test_prompt_buckets_step_by_half_powers_of_two():
    from bitnet_jax.serve.engine import prompt_bucket

    sizes = {n: prompt_bucket(n, 16, 1024) for n in range(1, 1025)}
    assert sorted(set(sizes.values())) == [16, 24, 32, 48, 64, 96, 128, 256, 384, 512, 768, 1024]
    for n, size in sizes.items():  # the smallest allowed size that holds the prompt
        assert size >= n and not any(n <= s < size for s in set(sizes.values()))
    assert prompt_bucket(33, 16, 40) == 40  # capped at the context


def test_no_recompilation_in_steady_state(model, engine):
    # after warmup: one decode program per leading-slot bucket (1, 2, 3) and one prefill per prompt bucket
    # (16, 24, 32, 48) and row count (1, 2, 3: prompts of one bucket prefilled together)
    assert engine.warm_counts == {"decode": 3, "prefill": 12}
    before = engine.compile_counts()  # (counts are per process: other tests' engines add their own programs)
    prompts = [_ids(model, p) for p in PROMPTS] + [list(range(1, 30))]  # buckets 16 and 32
    for round_ in range(3):  # mixed lengths, sampling settings and arrival: no new program
        reqs = [engine.submit(p[: len(p) - round_], max_tokens=3 + 2 * i + round_, temperature=0.3 * (i % 2),
                              top_k=None if i % 3 else 20, top_p=0.95 if i % 2 else None, seed=i)
                for i, p in enumerate(prompts)]
        for r in reqs:
            r.wait(120)
    assert engine.compile_counts() == before


def test_prompts_arriving_together_share_one_prefill(model, references):
    """Requests of one prompt bucket admitted at once are prefilled in one call, with the same tokens."""
    e = Engine(model, slots=4, context=64, prefill_batch=4)  # not started: all four wait for the first step
    prompts = [p for p in PROMPTS if len(_ids(model, p)) <= 16]
    assert len(prompts) >= 3
    sampled = dict(temperature=0.8, top_k=40, top_p=0.9, seed=3)
    reqs = [e.submit(_ids(model, p), max_tokens=REF_TOKENS) for p in prompts[:3]]
    reqs.append(e.submit(_ids(model, prompts[0]), max_tokens=REF_TOKENS, **sampled))
    e.start()
    try:
        for p, r in zip(prompts[:3], reqs[:3]):
            assert r.wait(120) == references[p], p
        assert reqs[3].wait(120) == bj.generate(model, [_ids(model, prompts[0])], max_new_tokens=REF_TOKENS,
                                                **sampled)[0].tolist()
        assert e.prefills == 1
    finally:
        e.shutdown(drain=False)


def test_cancel_frees_the_slot_and_stream_yields_tokens(model):
    # a long request: the consumer cancels it long before its end, even if bursts run ahead of the stream
    with Engine(model, slots=1, context=256) as e:
        seen = []
        r = e.submit(_ids(model, PROMPTS[0]), max_tokens=200, stop_ids=())
        for t in r.stream(timeout=60):
            seen.append(t)
            if len(seen) == 2:
                r.cancel()
        r.wait(60)
        assert r.finish_reason == "cancelled" and 2 <= len(r.tokens) < 200
        assert seen == r.tokens
        assert e.stats()["busy"] == 0


def test_a_request_cancelled_mid_burst_takes_no_more_tokens(model, engine):
    def cancel_at_two(kind, value):
        if kind == "token" and len(r.tokens) == 2:
            r.cancel()  # from the engine thread, between two tokens of one burst

    r = engine.submit(_ids(model, PROMPTS[0]), max_tokens=40, stop_ids=(), on_event=cancel_at_two)
    r._done.wait(60)
    assert r.finish_reason == "cancelled" and len(r.tokens) == 2
    assert engine.stats()["busy"] == 0


def test_a_failing_request_does_not_stop_the_engine(model, engine, references):
    def boom(kind, value):
        raise RuntimeError("consumer failed")

    bad = engine.submit(_ids(model, PROMPTS[0]), max_tokens=10, on_event=boom)
    good = engine.submit(_ids(model, PROMPTS[1]), max_tokens=REF_TOKENS)
    with pytest.raises(RuntimeError, match="consumer failed"):
        bad.wait(60)
    assert bad.finish_reason == "error"
    assert good.wait(60) == references[PROMPTS[1]]
    assert engine.generate([_ids(model, PROMPTS[2])], max_tokens=REF_TOKENS)[0].tolist() == references[PROMPTS[2]]


def test_queue_full_and_validation(model):
    e = Engine(model, slots=1, max_queue=1, context=64)  # not started: nothing leaves the queue
    ids = _ids(model, PROMPTS[0])
    e.submit(ids, max_tokens=4)
    e.submit(ids, max_tokens=4)  # one for the free slot, one queued
    with pytest.raises(QueueFullError, match="queue is full"):
        e.submit(ids, max_tokens=4)
    for kwargs, match in [(dict(max_tokens=60), "context of 64"), (dict(max_tokens=0), "max_tokens"),
                          (dict(max_tokens=4, temperature=-1.0), "temperature"),
                          (dict(max_tokens=4, top_p=1.5), "top_p"), (dict(max_tokens=4, top_k=0), "top_k")]:
        with pytest.raises(GenerationError, match=match):
            e.submit(ids, **kwargs)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        e.submit([1, 99999], max_tokens=2)
    with pytest.raises(GenerationError, match="context"):
        Engine(model, context=100000)
    e.shutdown(drain=False)


def test_sampled_rows_follow_their_own_settings(model, engine):
    """top_k=1 at a high temperature is greedy; a mixed batch keeps each row's settings."""
    ids = _ids(model, PROMPTS[3])
    greedy = bj.generate(model, [ids], max_new_tokens=REF_TOKENS)[0].tolist()
    reqs = [engine.submit(ids, max_tokens=REF_TOKENS, temperature=5.0, top_k=1, seed=s) for s in range(3)]
    assert all(r.wait(120) == greedy for r in reqs)
    assert np.isfinite(engine.steps)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_decode_step_of_few_slots_does_not_copy_the_cache(model, scan_layers):
    """The step runs the model on the whole cache in place: its temporaries are far smaller than the cache
    (slicing the busy slots out and writing them back made a copy of every slot each step; a scanned model
    that indexed its layer before its rows copied every slot of each layer)."""
    import jax

    from bitnet_jax.serve import engine as engine_lib

    if scan_layers and model.form.kernel.stacked_fn is None:
        pytest.skip("the kernel reads no stacked layer in place (the CPU extension is not built)")
    model = bj.from_pretrained(bj.DEFAULT_MODEL, scan_layers=scan_layers)
    assert model.form.scan_layers == scan_layers
    e = Engine(model, slots=16)
    cache_bytes = sum(a.nbytes for a in jax.tree.leaves(e._cache))
    compiled = engine_lib._decode_slots.lower(
        model.params, e._cache, e._keys, e._tokens[:1], e._positions[:1], e._temperature[:1], e._top_k[:1],
        e._top_p[:1], e._greedy[:1], np.int32(1), module=e._module, rows=1).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < cache_bytes / 8


def test_a_screened_model_serves_greedy_rows_through_its_screen(references):
    """With a head screen, a step whose rows are all greedy takes the exact head's argmax through the screen
    (the compiled step calls it): the same tokens as bj.generate, and a sampled row beside a greedy one
    keeps bj.generate's sampled tokens (that step computes the logits)."""
    from pallas_kernels import cpu

    from bitnet_jax.model import head as head_lib
    from bitnet_jax.serve import engine as engine_lib

    if not cpu.AVAILABLE:
        pytest.skip("the CPU kernel extension is not built: no screened head")
    screened = bj.from_pretrained(bj.DEFAULT_MODEL, head_screen=True)
    assert head_lib.SCREEN_NAMES[0] in screened.params
    kw = dict(temperature=0.8, top_k=40, top_p=0.9, seed=7)
    ids = _ids(screened, PROMPTS[0])
    sampled_ref = bj.generate(screened, [ids], max_new_tokens=REF_TOKENS, **kw)[0].tolist()
    with Engine(screened, slots=2, context=48) as e:
        for p in PROMPTS[:3]:
            assert e.generate([_ids(screened, p)], max_tokens=REF_TOKENS)[0].tolist() == references[p], p
        greedy = e.submit(_ids(screened, PROMPTS[1]), max_tokens=REF_TOKENS)
        assert e.submit(ids, max_tokens=REF_TOKENS, **kw).wait(120) == sampled_ref
        assert greedy.wait(120) == references[PROMPTS[1]]
        text = engine_lib._decode_slots.lower(
            screened.params, e._cache, e._keys, e._tokens[:1], e._positions[:1], e._temperature[:1], e._top_k[:1],
            e._top_p[:1], e._greedy[:1], np.int32(1), module=e._module, rows=1).as_text()
    assert cpu.HEAD_GREEDY_TARGET in text and cpu.HEAD_FLOAT_TARGET in text  # the screen, and logits when sampled
