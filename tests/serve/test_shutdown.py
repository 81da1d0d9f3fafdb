"""A full queue answers 429; SIGTERM drains the running streams, refuses new requests and exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import httpx

from serve_helpers import live_server
from serve_helpers import *  # noqa: F401,F403  (the session fixtures: model, references, server)

BODY = {"prompt": "def f(x):", "max_tokens": 100, "temperature": 0, "stream": True, "stop": [0]}


async def _stream(client: httpx.AsyncClient, url: str) -> tuple[int, list[str]]:
    async with client.stream("POST", url + "/v1/completions", json=BODY) as r:
        if r.status_code != 200:
            return r.status_code, [await r.aread()]
        return 200, [line async for line in r.aiter_lines() if line]


def test_full_queue_429_then_sigterm_drains_and_exits_0():
    # --no-warmup: the programs these requests need compile on the first of them (the start-up path without
    # warm-up; the shared server of test_server.py warms up)
    with live_server("--slots", "2", "--max-queue", "1", "--context", "128", "--no-warmup") as server:
        async def burst():
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(*(_stream(c, server.url) for _ in range(8)))

        results = asyncio.run(burst())
        codes = sorted(code for code, _ in results)
        assert codes.count(200) >= 3 and 429 in codes, codes  # 2 slots + 1 waiting; the rest refused
        for code, lines in results:
            if code == 429:
                err = json.loads(lines[0])["error"]
                assert err["type"] == "rate_limit_error" and "queue is full" in err["message"]
            else:
                assert lines[-1] == "data: [DONE]"
                assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")

        # two streams running, then SIGTERM: both finish completely, the server refuses more and exits 0
        out: list = []
        started = [threading.Event(), threading.Event()]

        def client(i):
            with httpx.stream("POST", server.url + "/v1/completions", json=BODY, timeout=120) as r:
                lines = []
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                        started[i].set()
                out.append((r.status_code, lines))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        assert all(e.wait(60) for e in started)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert [code for code, _ in out] == [200, 200]
        for _, lines in out:
            assert lines[-1] == "data: [DONE]"
            assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.proc.returncode == 0
        try:
            httpx.get(server.url + "/health", timeout=2)
            refused = False
        except httpx.TransportError:
            refused = True
        assert refused
