"""The live HTTP server with real clients: the official openai package, raw httpx, 64 concurrent streams."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from serve_helpers import PROMPTS, REF_TOKENS, expected_text
from serve_helpers import *  # noqa: F401,F403  (the session fixtures: model, references, server)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def _health(server) -> dict:
    return httpx.get(server.url + "/health", timeout=10).json()


def _wait_idle(server, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = _health(server)
        if (h["busy"] == 0 and h["waiting"] == 0) or time.monotonic() > deadline:
            return h
        time.sleep(0.05)


def _metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if line.split(" ")[0] == name or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_models_health_metrics(server):
    models = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).models.list()
    assert [m.id for m in models.data] == ["default"]
    assert _health(server) == {"status": "ok", "slots": 8, "busy": 0, "waiting": 0}
    text = httpx.get(server.url + "/metrics").text
    for name in ("bitnet_jax_requests_total", "bitnet_jax_generation_tokens_total", "bitnet_jax_queue_depth",
                 "bitnet_jax_slots_busy", "bitnet_jax_time_to_first_token_seconds_count",
                 "bitnet_jax_generation_tokens_per_second"):
        assert name in text


@pytest.mark.parametrize("max_tokens", [REF_TOKENS, 5])
def test_completion_matches_generate(server, client, model, references, max_tokens):
    for p in PROMPTS[:3]:
        r = client.completions.create(model="default", prompt=p, max_tokens=max_tokens, temperature=0)
        text, reason = expected_text(model, references[p], max_tokens)
        assert r.choices[0].text == text and r.choices[0].finish_reason == reason
        assert r.usage.prompt_tokens == len(model.tokenizer.encode(p, add_bos=True))
        assert r.usage.completion_tokens == min(max_tokens, len(references[p]))


def test_completion_stream_and_token_prompt(server, client, model, references):
    p = PROMPTS[1]
    chunks = list(client.completions.create(model="default", prompt=p, max_tokens=REF_TOKENS, temperature=0,
                                            stream=True))
    text, reason = expected_text(model, references[p], REF_TOKENS)
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    ids = model.tokenizer.encode(p, add_bos=True)
    r = client.completions.create(model="default", prompt=ids, max_tokens=REF_TOKENS, temperature=0)
    assert r.choices[0].text == text


def test_chat_and_chat_stream(server, client, model):
    import bitnet_jax as bj
    from bitnet_jax.inference import encode_chat, stop_token_ids

    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
    ids = encode_chat(model.tokenizer, messages)
    stops = stop_token_ids(model.tokenizer, model.config)
    ref = [int(t) for t in bj.generate(model, [ids], max_new_tokens=12, stop_tokens=stops)[0]]
    cut = next((i for i, t in enumerate(ref) if t in stops), len(ref))
    want = model.tokenizer.decode(ref[:cut])
    r = client.chat.completions.create(model="default", messages=messages, max_tokens=12, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    assert r.choices[0].finish_reason == ("stop" if cut < len(ref) else "length")
    stream = client.chat.completions.create(model="default", messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == len(ref) and chunks[-1].usage.prompt_tokens == len(ids)


def test_raw_sse_format_ends_with_done(server):
    body = {"model": "default", "prompt": "def f(x):", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"} and chunks[-1]["choices"][0]["finish_reason"]


def test_stop_strings_and_token_ids(server, client, model, references):
    p = PROMPTS[0]
    full, _ = expected_text(model, references[p], REF_TOKENS)
    stop = full[3:6]
    r = client.completions.create(model="default", prompt=p, max_tokens=REF_TOKENS, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    stream = client.completions.create(model="default", prompt=p, max_tokens=REF_TOKENS, temperature=0, stop=stop,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream) == full[: full.index(stop)]
    ref = references[p]
    at = next(i for i in range(1, len(ref)) if ref[i] not in ref[:i])  # the first id not seen before
    stop_id = ref[at]
    r = httpx.post(server.url + "/v1/completions", json={"prompt": p, "max_tokens": REF_TOKENS, "temperature": 0,
                                                         "stop": [stop_id]}).json()
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == at + 1
    assert r["choices"][0]["text"] == model.tokenizer.decode(ref[:at])


BAD = [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [1, 99999]}, "prompt"),
    ({"prompt": "x", "max_tokens": "7"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1000}, "max_tokens"),
    ({"prompt": "x " * 200, "max_tokens": 1}, "prompt"),
    ({"prompt": "x", "model": "gpt-4"}, "model"),
    ({"prompt": "x", "temperature": -0.5}, "temperature"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "top_k": 0}, "top_k"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
    ({"prompt": "x", "seed": 2**40}, "seed"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stop": [""]}, "stop"),
]


@pytest.mark.parametrize("body,param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_malformed_completion_requests_are_400(server, body, param):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + "/v1/completions", timeout=30, **kw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


@pytest.mark.parametrize("body,param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}, "max_completion_tokens"),
])
def test_malformed_chat_requests_are_400(server, body, param):
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_openai_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert e.value.body["param"] == "model"
    assert httpx.get(str(client.base_url.join("/nowhere"))).json()["error"]["type"] == "not_found_error"


def test_disconnect_mid_stream_frees_the_slot(server):
    """A client that leaves after two tokens cancels its request. It runs while other requests wait, so the
    engine takes one step per call, not a burst, and it cannot reach its 56th token before the disconnect
    lands, however fast the machine (alone, the tiny model finishes 56 tokens in a few bursts)."""
    before = _metric(server, 'bitnet_jax_requests_total{reason="cancelled"}')
    url = server.url + "/v1/completions"
    body = {"prompt": "def f(x):", "max_tokens": 56, "temperature": 0, "stream": True}
    load = lambda i: {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 56, "temperature": 0}  # noqa: E731

    async def main():
        async with httpx.AsyncClient(timeout=60) as aclient:
            ahead = [asyncio.ensure_future(aclient.post(url, json=load(i))) for i in range(12)]
            deadline = time.monotonic() + 30
            while (await aclient.get(server.url + "/health")).json()["busy"] < 8:  # every slot taken
                assert time.monotonic() < deadline, "the load did not fill the slots"
                await asyncio.sleep(0.005)
            async with aclient.stream("POST", url, json=body) as r:
                behind = [asyncio.ensure_future(aclient.post(url, json=load(i))) for i in range(12)]
                lines = 0
                async for line in r.aiter_lines():
                    lines += line.startswith("data: ")
                    if lines >= 2:
                        break  # leave: the connection closes mid-stream
            done = await asyncio.wait_for(asyncio.gather(*ahead, *behind), 120)
            return lines, [d.json()["choices"][0]["finish_reason"] for d in done]

    lines, reasons = asyncio.run(main())
    assert lines == 2 and len(reasons) == 24 and set(reasons) <= {"length", "stop"}  # the others were served
    h = _wait_idle(server)
    assert h["busy"] == 0 and h["waiting"] == 0
    assert _metric(server, 'bitnet_jax_requests_total{reason="cancelled"}') >= before + 1


def test_64_concurrent_streams_are_complete_and_correct(server, model, references):
    """64 streaming clients at once (8 slots, 56 waiting): every stream complete and equal to bj.generate's."""
    jobs = [(PROMPTS[i % len(PROMPTS)], 4 + i % (REF_TOKENS - 3)) for i in range(64)]

    async def one(aclient, prompt, max_tokens):
        stream = await aclient.completions.create(model="default", prompt=prompt, max_tokens=max_tokens,
                                                  temperature=0, stream=True)
        text, reason = "", None
        async for c in stream:
            text += c.choices[0].text
            reason = c.choices[0].finish_reason or reason
        return text, reason

    async def main():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120) as aclient:
            return await asyncio.wait_for(asyncio.gather(*(one(aclient, p, n) for p, n in jobs)), 120)

    results = asyncio.run(main())
    for (p, n), got in zip(jobs, results):
        assert got == expected_text(model, references[p], n), (p, n)
    h = _wait_idle(server)
    assert h["busy"] == 0 and h["waiting"] == 0
