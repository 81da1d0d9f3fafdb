"""The OpenAI-compatible HTTP layer (FastAPI) over an :class:`~bitnet_jax.serve.engine.Engine`.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true``: server-sent events
in OpenAI's chunk format, ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` and
``GET /metrics`` (Prometheus text). Errors are JSON in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``: 400 for invalid requests (naming the field), 404 for an
unknown route, 429 when the queue is full, 503 while the server drains.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bitnet_jax.errors import ApiError, BitNetError, EngineClosedError, QueueFullError
from bitnet_jax.inference.chat import encode_chat, stop_token_ids
from bitnet_jax.inference.streaming import IncrementalDecoder
from bitnet_jax.serve.engine import PREFILL_BATCH, Engine
from bitnet_jax.serve.metrics import Metrics

MAX_STOP = 16
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


def _number(body: dict, key: str, default, *, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r:.60}", key)
    return value


def _parse_common(body: Any, served: str, vocab: int) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model", served)
    if not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, got {model!r:.60}", "model")
    if model != served:
        raise ApiError(400, f"the model '{model}' does not exist; this server serves '{served}'", "model",
                       code="model_not_found")
    temperature = _number(body, "temperature", 1.0)
    if not temperature >= 0:
        raise ApiError(400, f"'temperature' must be >= 0, got {temperature!r}", "temperature")
    top_p = _number(body, "top_p", None)
    if top_p is not None and not 0 < top_p <= 1:
        raise ApiError(400, f"'top_p' must be in (0, 1], got {top_p!r}", "top_p")
    top_k = _number(body, "top_k", None, integer=True)
    if top_k is not None and not 1 <= top_k <= vocab:
        raise ApiError(400, f"'top_k' must be in [1, {vocab}], got {top_k!r}", "top_k")
    seed = _number(body, "seed", None, integer=True)
    if seed is not None and not -(2**31) <= seed < 2**32:
        raise ApiError(400, f"'seed' must be in [-2**31, 2**32), got {seed!r}", "seed")
    n = _number(body, "n", 1, integer=True)
    if n != 1:
        raise ApiError(400, f"'n' must be 1 (one choice per request), got {n!r}", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be a boolean, got {stream!r:.60}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be an object with a boolean 'include_usage'", "stream_options")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, (str, int)) and not isinstance(stop, bool) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(
            (isinstance(s, str) and s) or (isinstance(s, int) and not isinstance(s, bool) and 0 <= s < vocab)
            for s in stop):
        raise ApiError(400, f"'stop' must be a non-empty string, a token id in [0, {vocab}) or a list of at most "
                            f"{MAX_STOP} of them", "stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise ApiError(400, f"'{key}' must be a positive integer, got {max_tokens!r:.60}", key)
    return dict(temperature=float(temperature), top_p=None if top_p is None else float(top_p), top_k=top_k,
                seed=secrets.randbits(31) if seed is None else seed, stream=stream,
                include_usage=options.get("include_usage", False),
                stop_strings=[s for s in stop if isinstance(s, str)], stop_ids=[s for s in stop if isinstance(s, int)],
                max_tokens=max_tokens, max_tokens_key=key)


class _Text:
    """Detokenizes one request's ids; cuts the text at the first stop string (held back until it is sure)."""

    def __init__(self, tokenizer, stop_ids: frozenset[int], stop_strings: list[str]):
        self.decoder = IncrementalDecoder(tokenizer) if tokenizer is not None else None
        self.stop_ids, self.stop_strings = stop_ids, stop_strings
        self.hold = max((len(s) for s in stop_strings), default=1) - 1
        self.pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; the text that is final now."""
        if self.stopped or token in self.stop_ids:
            return ""
        self.pending += self.decoder.push(token) if self.decoder is not None else f" {token}"
        return self._release(final=False)

    def flush(self) -> str:
        """The text still held (at the end of the request)."""
        if not self.stopped and self.decoder is not None:
            self.pending += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.pending.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        cut = len(self.pending) if final else max(0, len(self.pending) - self.hold)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out


def create_app(engine: Engine, model_name: str, metrics: Metrics | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` under the model id ``model_name``.

    The engine is started on startup and drained (running requests finish, new ones get 503) on shutdown;
    set ``app.state.draining = True`` to refuse new requests earlier (the CLI does so on SIGTERM).
    """
    model = engine.model
    tokenizer = model.tokenizer
    vocab = model.config.vocab_size
    metrics = metrics if metrics is not None else engine.metrics
    created = int(time.time())

    async def lifespan(app: FastAPI):
        engine.start()
        yield
        app.state.draining = True
        await asyncio.to_thread(engine.shutdown, True)

    app = FastAPI(title="bitnet-jax", lifespan=lifespan)
    app.state.draining = False

    def error(e: ApiError) -> JSONResponse:
        if metrics is not None:
            metrics.http_errors.labels(status=str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error(ApiError(e.status_code, str(e.detail), kind=kind))

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        return error(ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"))

    async def read_json(request: HttpRequest) -> Any:
        if app.state.draining:
            raise ApiError(503, "the server is shutting down and takes no new requests", kind="server_error")
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None

    def fit(params: dict, prompt: list[int], field: str, default_tokens: int | None) -> int:
        room = engine.context - len(prompt)
        if room < 1:
            raise ApiError(400, f"'{field}' has {len(prompt)} tokens; the context is {engine.context} tokens", field)
        max_tokens = params["max_tokens"]
        if max_tokens is None:
            return room if default_tokens is None else min(default_tokens, room)
        if max_tokens > room:
            raise ApiError(400, f"'{params['max_tokens_key']}' is {max_tokens} but the prompt has {len(prompt)} "
                                f"tokens and the context is {engine.context}; at most {room} can be generated",
                           params["max_tokens_key"])
        return max_tokens

    async def run(request: HttpRequest, params: dict, prompt: list[int], max_tokens: int, stops: frozenset[int],
                  chat: bool):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop_ids = stops | frozenset(params["stop_ids"])

        def on_event(kind: str, value: object) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        try:
            handle = engine.submit(prompt, max_tokens=max_tokens, temperature=params["temperature"],
                                   top_k=params["top_k"], top_p=params["top_p"], seed=params["seed"],
                                   stop_ids=stop_ids, on_event=on_event)
        except QueueFullError as e:
            raise ApiError(429, str(e), kind="rate_limit_error", code="queue_full") from None
        except EngineClosedError as e:
            raise ApiError(503, str(e), kind="server_error") from None
        except BitNetError as e:
            raise ApiError(400, str(e), "messages" if chat else "prompt") from None
        text = _Text(tokenizer, stop_ids, params["stop_strings"])
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"

        async def pieces():
            """(text, None) per token, then ("", finish_reason); cancels the request when left early."""
            count = 0
            try:
                while True:
                    kind, value = await events.get()
                    if kind == "token":
                        count += 1
                        piece = text.push(value)
                        if text.stopped:
                            handle.cancel()
                            yield piece, "stop", count
                            return
                        yield piece, None, count
                    elif kind == "error":
                        raise value
                    else:
                        yield text.flush(), "length" if value == "length" else "stop", count
                        return
            finally:
                handle.cancel()  # a no-op once it finished; frees the slot of a disconnected client

        def usage(count: int) -> dict:
            return {"prompt_tokens": len(prompt), "completion_tokens": count, "total_tokens": len(prompt) + count}

        def chunk(choice: dict) -> str:
            obj = "chat.completion.chunk" if chat else "text_completion"
            return "data: " + json.dumps({"id": rid, "object": obj, "created": int(time.time()),
                                          "model": model_name, "choices": [choice]}) + "\n\n"

        if params["stream"]:
            async def sse():
                if chat:
                    yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None})
                count, failed = 0, False
                try:
                    async for piece, reason, count in pieces():
                        if piece or reason is None:  # one chunk per token, as OpenAI (text may be "")
                            yield chunk({"index": 0, "delta": {"content": piece}, "logprobs": None,
                                         "finish_reason": None} if chat else
                                        {"index": 0, "text": piece, "logprobs": None, "finish_reason": None})
                        if reason is not None:
                            yield chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason} if chat
                                        else {"index": 0, "text": "", "logprobs": None, "finish_reason": reason})
                except Exception as e:  # noqa: BLE001  (the request failed inside the engine)
                    failed = True
                    yield "data: " + json.dumps(ApiError(500, f"generation failed: {type(e).__name__}: {e}",
                                                         kind="server_error").body()) + "\n\n"
                finally:
                    handle.cancel()  # at once when the client left mid-stream (the generator is closed)
                if params["include_usage"] and not failed:
                    yield "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk" if chat else
                                                 "text_completion", "created": int(time.time()),
                                                 "model": model_name, "choices": [], "usage": usage(count)}) + "\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def collect():
            parts, reason, count = [], "stop", 0
            async for piece, reason_, count in pieces():
                parts.append(piece)
                reason = reason_ or reason
            return "".join(parts), reason, count

        async def disconnected():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, watch = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if work not in done:
            handle.cancel()
            work.cancel()
            return Response(status_code=499)
        try:
            content, reason, count = work.result()
        except Exception as e:  # noqa: BLE001
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from None
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                      "finish_reason": reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": reason}
            obj = "text_completion"
        return JSONResponse({"id": rid, "object": obj, "created": int(time.time()), "model": model_name,
                             "choices": [choice], "usage": usage(count)})

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        body = await read_json(request)
        params = _parse_common(body, model_name, vocab)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str) and prompt:
            if tokenizer is None:
                raise ApiError(400, "'prompt' must be token ids: the model has no tokenizer", "prompt")
            ids = tokenizer.encode(prompt, add_bos=model.config.bos_token_id is not None)
        elif (isinstance(prompt, list) and prompt
              and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in prompt)):
            ids = list(prompt)
        else:
            raise ApiError(400, f"'prompt' must be a non-empty string or a list of token ids in [0, {vocab})",
                           "prompt")
        max_tokens = fit(params, ids, "prompt", DEFAULT_COMPLETION_TOKENS)
        return await run(request, params, ids, max_tokens, engine.default_stop_ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        body = await read_json(request)
        params = _parse_common(body, model_name, vocab)
        if tokenizer is None:
            raise ApiError(400, "chat needs a model with a tokenizer", "messages")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
        plain = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ApiError(400, f"'messages[{i}]' must be an object", f"messages[{i}]")
            content = m.get("content")
            if isinstance(content, list):  # content parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise ApiError(400, f"'messages[{i}].content' parts must be {{type: text, text: str}}",
                                   f"messages[{i}].content")
                content = "".join(p["text"] for p in content)
            if not isinstance(content, str):
                raise ApiError(400, f"'messages[{i}].content' must be a string", f"messages[{i}].content")
            plain.append({"role": m.get("role"), "content": content})
        try:
            ids = encode_chat(tokenizer, plain)
        except BitNetError as e:
            raise ApiError(400, str(e), "messages") from None
        max_tokens = fit(params, ids, "messages", None)
        stops = frozenset(stop_token_ids(tokenizer, model.config))
        return await run(request, params, ids, max_tokens, stops, chat=True)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "bitnet-jax", "context_length": engine.context}]}

    @app.get("/health")
    async def health():
        stats = engine.stats()
        if app.state.draining:
            return JSONResponse({"status": "draining", **stats}, status_code=503)
        return {"status": "ok", **stats}

    @app.get("/metrics")
    async def prometheus():
        body = metrics.render() if metrics is not None else b""
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def build(model, *, slots: int = 8, max_queue: int = 64, context: int | None = None,
          prefill_batch: int | None = None, model_name: str = "default") -> tuple[FastAPI, Engine]:
    """An engine with its metrics and the app serving it (the engine starts with the app)."""
    engine = Engine(model, slots=slots, max_queue=max_queue, context=context,
                    prefill_batch=PREFILL_BATCH if prefill_batch is None else prefill_batch)
    engine.metrics = Metrics(stats=engine.stats)
    return create_app(engine, model_name), engine
