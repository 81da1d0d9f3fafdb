"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own (no global state)."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "bitnet_jax"
RATE_WINDOW_S = 10.0  # tokens/s is measured over this trailing window
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Counters, gauges and histograms of one engine and its HTTP layer."""

    def __init__(self, stats: Callable[[], dict[str, int]] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Finished requests by finish reason", ["reason"], registry=r)
        self.rejected = Counter(f"{PREFIX}_rejected_requests", "Requests refused with 429 (queue full)", registry=r)
        self.http_errors = Counter(f"{PREFIX}_http_errors", "Error responses by HTTP status", ["status"], registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time from submission to the first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.step = Histogram(f"{PREFIX}_decode_step_seconds", "Duration of one decode step over all slots",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.rate = Gauge(f"{PREFIX}_generation_tokens_per_second",
                          f"Generated tokens per second over the last {RATE_WINDOW_S:g} s", registry=r)
        self.rate.set_function(self.tokens_per_second)
        self._recent: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        if stats is not None:
            for key, help_text in (("waiting", "Requests waiting for a slot"), ("busy", "Slots decoding a request"),
                                   ("slots", "Decode slots")):
                name = {"waiting": "queue_depth", "busy": "slots_busy", "slots": "slots_total"}[key]
                Gauge(f"{PREFIX}_{name}", help_text, registry=r).set_function(lambda k=key: stats()[k])

    def record(self, name: str, value: float = 1.0, **labels) -> None:
        """One engine event: ``requests`` (reason=), ``rejected``, ``prompt_tokens``, ``generation_tokens``,
        ``ttft`` (seconds) or ``step_seconds``."""
        if name == "requests":
            self.requests.labels(**labels).inc(value)
        elif name == "rejected":
            self.rejected.inc(value)
        elif name == "prompt_tokens":
            self.prompt_tokens.inc(value)
        elif name == "generation_tokens":
            self.generation_tokens.inc(value)
            with self._lock:
                self._recent.append(time.monotonic())
        elif name == "ttft":
            self.ttft.observe(value)
        elif name == "step_seconds":
            self.step.observe(value)

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the trailing window."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0] < now - RATE_WINDOW_S:
                self._recent.popleft()
            return len(self._recent) / RATE_WINDOW_S

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
