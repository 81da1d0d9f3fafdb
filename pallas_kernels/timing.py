"""Device-side timing of jitted programs, for the benchmark scripts (``scripts/bench_kernels.py``,
``scripts/device_check.py``).

:func:`device_time` runs a program ``calls`` times under the JAX profiler and reads the *device's*
own timestamps back (CUPTI kernel records on GPU, the TPU's op records): the time of one call is the
union of the intervals of the device events that belong to that program's XLA module (``jit_<name>``),
so Python dispatch, launch gaps before the first kernel and other programs never count. Between calls
a separate program overwrites a buffer larger than any L2 cache, so weights are read from HBM as in a
model (where every layer's weights differ), not from a warm cache. Where the trace holds no device
events for the module (a CPU host, an unknown trace format), the host's records of the module are used
and the result says so (``source``). :func:`inprogram_time` is the profiler-free cross-check: many
calls inside one program, one dispatch.
"""

from __future__ import annotations

import glob
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

FLUSH_BYTES = 256 << 20  # > 4x the 50-60 MB L2 of an H100/H200


def named_jit(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``jax.jit`` of ``fn`` under the function name ``name`` (its XLA module is ``jit_<name>``)."""

    def program(*args):
        return fn(*args)

    program.__name__ = program.__qualname__ = name
    return jax.jit(program)


def _flusher(nbytes: int):
    buf = jnp.zeros((nbytes // 4,), jnp.int32)
    step = jax.jit(lambda b: b + 1, donate_argnums=0)
    state = {"buf": step(buf)}

    def flush():
        state["buf"] = jax.block_until_ready(step(state["buf"]))  # done before the timed call is queued

    return flush


def _events(trace_dir: str):
    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        return []
    data = jax.profiler.ProfileData.from_file(max(files, key=os.path.getmtime))
    out = []
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = {}
                try:
                    stats = {str(k): v for k, v in event.stats}
                except (TypeError, ValueError):
                    pass
                out.append((plane.name, line.name, event.name, event.start_ns, event.duration_ns, stats))
    return out


def _module_of(name: str, stats: dict) -> str:
    module = stats.get("hlo_module")
    if isinstance(module, str) and module:
        return module
    return name.split("(")[0]  # TPU "XLA Modules" line: "jit_name(123)"


def _union_ns(intervals: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def per_call_ns(events, module: str, calls: int) -> tuple[list[float], str]:
    """Device time of each call of ``module`` from profiler events (host records if there are no device
    ones); the events of one call are grouped by ``run_id`` when the trace has it, else by order."""
    for device in (True, False):
        mine = [e for e in events if e[0].startswith("/device:") == device and _module_of(e[2], e[5]) == module
                and e[4] > 0]
        if not mine:
            continue
        runs: dict[Any, list[tuple[float, float]]] = {}
        for _, _, _, start, dur, stats in mine:
            runs.setdefault(stats.get("run_id"), []).append((start, start + dur))
        if len(runs) == calls:
            times = [_union_ns(v) for v in runs.values()]
        else:  # no run ids: split the sorted events into `calls` groups at the largest gaps
            spans = sorted((s, s + d) for _, _, _, s, d, _ in mine)
            gaps = sorted(range(1, len(spans)), key=lambda i: spans[i][0] - spans[i - 1][1], reverse=True)
            cuts = sorted(gaps[: calls - 1])
            bounds = [0, *cuts, len(spans)]
            times = [_union_ns(spans[a:b]) for a, b in zip(bounds, bounds[1:])]
        return times, "device" if device else "host"
    return [], "none"


def device_times(programs: Sequence[tuple[str, Callable[..., Any], Sequence[Any]]], *, calls: int = 20,
                 flush_bytes: int = FLUSH_BYTES, warmup: int = 2) -> dict[str, dict[str, Any]]:
    """For each ``(name, fn, args)``: the median device time (microseconds) of ``calls`` calls of
    ``fn(*args)`` jitted as ``jit_<name>``, the L2 flushed before each call, all in one profiler session;
    also the host wall time per call and where the numbers came from (``source``)."""
    jitted = [(name, named_jit(fn, name), args) for name, fn, args in programs]
    flush = _flusher(flush_bytes) if flush_bytes else (lambda: None)
    for _, program, args in jitted:
        for _ in range(warmup):
            jax.block_until_ready(program(*args))
    walls: dict[str, list[float]] = {name: [] for name, _, _ in jitted}
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        try:
            for name, program, args in jitted:
                for _ in range(calls):
                    flush()
                    t0 = time.perf_counter()
                    jax.block_until_ready(program(*args))
                    walls[name].append(time.perf_counter() - t0)
        finally:
            jax.profiler.stop_trace()
        events = _events(trace_dir)
    results = {}
    for name, _, _ in jitted:
        times, source = per_call_ns(events, f"jit_{name}", calls)
        result = {"wall_us": statistics.median(walls[name]) * 1e6, "source": source, "calls": calls}
        if times:
            result.update(time_us=statistics.median(times) / 1e3, min_us=min(times) / 1e3, max_us=max(times) / 1e3)
        else:
            result.update(time_us=result["wall_us"], source="wall (no profiler events for the module)")
        results[name] = result
    return results


def device_time(fn: Callable[..., Any], args: Sequence[Any], *, name: str, **kw) -> dict[str, Any]:
    """:func:`device_times` of one program."""
    return device_times([(name, fn, args)], **kw)[name]


def inprogram_time(fn: Callable[[Any, Any], Any], x: Any, weights: Sequence[Any], *, name: str,
                   repeats: int = 5) -> dict[str, Any]:
    """Microseconds per ``fn(x, w)`` when one jitted program runs it once for each of the distinct
    ``weights`` (so no call is deduplicated and, with enough of them, none reads a warm L2): the
    program's best wall time over ``repeats`` runs divided by ``len(weights)``. One Python dispatch per
    program, so per-call dispatch does not count; the launch gaps between the calls do, as in a model."""
    program = named_jit(lambda a, *ws: tuple(fn(a, w) for w in ws), name)
    jax.block_until_ready(program(x, *weights))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(program(x, *weights))
        best = min(best, time.perf_counter() - t0)
    return {"time_us": best / len(weights) * 1e6, "copies": len(weights), "repeats": repeats}


def copy_bandwidth(nbytes: int = 1 << 30, calls: int = 10) -> dict[str, Any]:
    """Device copy bandwidth in GB/s counting bytes read plus written (``x + 1`` over ``nbytes``)."""
    x = jnp.zeros((nbytes // 4,), jnp.int32)
    t = device_time(lambda a: a + 1, [x], name="copy_bandwidth", calls=calls, flush_bytes=0)
    return {**t, "bytes": 2 * nbytes, "GBps": 2 * nbytes / (t["time_us"] * 1e-6) / 1e9}


def matmul_peak(n: int = 8192, calls: int = 10) -> dict[str, Any]:
    """bf16 ``n x n x n`` matmul rate in TFLOP/s (random operands, float32 accumulate)."""
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (jax.random.normal(k, (n, n), jnp.bfloat16) for k in keys)
    t = device_time(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(jnp.bfloat16), [a, b],
                    name="matmul_peak", calls=calls, flush_bytes=0)
    return {**t, "n": n, "TFLOPs": 2 * n**3 / (t["time_us"] * 1e-6) / 1e12}
