"""A scriptable fake OpenAI-compatible provider: a real aiohttp server on 127.0.0.1.

Like the real API it refuses content parts of shapes it does not know (text, image_url, input_audio, file)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.prefill import continuation, final_assistant_text

__all__ = [
    "ContentPolicy",
    "ContextOverflow",
    "Drop",
    "Fail",
    "FakeOpenAI",
    "Hang",
    "Malformed",
    "PrefillRejected",
    "QuotaExceeded",
    "Reply",
    "StreamCut",
    "StreamError",
    "StreamStall",
]


@dataclass(frozen=True)
class Reply:
    """A normal chat.completion. `usage=None` omits the usage block; `content=None` → "reply from <model>"."""

    content: str | None = None
    usage: dict[str, Any] | None = field(
        default_factory=lambda: {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    )
    delay: float = 0.0
    tool_calls: Any = None
    finish_reason: str = "stop"
    # streaming only (the request had "stream": true)
    first_token_delay: float = 0.0  # after the role chunk, before the first content chunk
    chunk_delay: float = 0.0
    garbage: bool = False  # a malformed event after the first content chunk
    done_marker: bool = True  # send `data: [DONE]` at the end
    piece_size: int = 4  # characters of content per chunk
    # continuing a prefill (vLLM's continue_final_message): repeat this many of its last words first
    repeat_words: int = 0


@dataclass(frozen=True)
class Fail:
    """A non-200 answer; `body=None` → an OpenAI-style error JSON."""

    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class ContextOverflow:
    """400 with OpenAI's context_length_exceeded error body. With a `window`, only when the request does not
    fit it (its messages' characters / 4 plus its max_tokens, 0 when unset); one that fits is answered."""

    window: int = 0

    def fits(self, body: dict[str, Any]) -> bool:
        if not self.window:
            return False
        chars = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [] if isinstance(m, dict))
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        return chars // 4 + int(cap) <= self.window


@dataclass(frozen=True)
class QuotaExceeded:
    """429 with OpenAI's insufficient_quota body: the account is out of credit (waiting does not help)."""


@dataclass(frozen=True)
class Hang:
    """Sleep `seconds`, then reply normally (drives client timeouts)."""

    seconds: float


@dataclass(frozen=True)
class Malformed:
    """200 with a non-JSON body."""

    text: str = "<html>oops"
    content_type: str = "text/html"


@dataclass(frozen=True)
class Drop:
    """Close the connection without sending a response."""


@dataclass(frozen=True)
class StreamCut:
    """Stream `after` content chunks of a normal reply, then close the connection."""

    after: int = 1


@dataclass(frozen=True)
class StreamStall:
    """Stream `after` content chunks, then go silent for `seconds` (the connection stays open)."""

    after: int = 1
    seconds: float = 30.0


@dataclass(frozen=True)
class StreamError:
    """Stream `after` content chunks, then an in-stream `data: {"error": ...}` event and the end of the body
    (what OpenAI-compatible servers send when generation fails mid-answer)."""

    after: int = 1
    message: str = "The server had an error while processing your request."


@dataclass(frozen=True)
class ContentPolicy:
    """400: the request was refused by the provider's content policy (refused on its merits: no failover)."""


@dataclass(frozen=True)
class PrefillRejected:
    """400 for a request that asks to continue its final assistant message (a model or server that does not
    support it); any other request is answered normally."""


@dataclass(frozen=True)
class Gated:
    """Hold the call (in flight) until the test sets `gate`, then behave as `then`: orders a test's events
    by the fake's state instead of by delays a slow machine can outrun."""

    gate: asyncio.Event
    then: Reply | Fail | Hang = field(default_factory=Reply)


_BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("fake_body", dict)

Behaviour = (
    Reply
    | Fail
    | ContextOverflow
    | QuotaExceeded
    | Hang
    | Malformed
    | Drop
    | StreamCut
    | StreamStall
    | StreamError
    | ContentPolicy
    | PrefillRejected
    | Gated
)
_STREAM_BEHAVIOURS = (Reply, StreamCut, StreamStall, StreamError, Hang)


class FakeOpenAI:
    """Scripted per model id: `fake.script("gpt-x", Fail(500), Reply())`; unscripted calls get `Reply()`."""

    def __init__(self, models: list[str] | tuple[str, ...] = (), *, port: int = 0) -> None:
        self._initial_models = list(models)
        self._models: dict[str, None] = dict.fromkeys(models)  # ordered set
        self._scripts: dict[str, deque[Behaviour]] = {}
        self.requests: list[dict[str, Any]] = []
        self.streams_cancelled = 0  # streams whose client (TokenHub) went away before the end
        self.chunks_written = 0  # content chunks fully handed to the socket, all streams
        self.stream_cancelled = asyncio.Event()
        # vLLM-style extras: GET /health answers 200 while `healthy`, else 503; /v1/models entries carry
        # `max_model_len` for the model ids in `max_model_len`.
        self.healthy = True
        self.health_checks = 0
        self.health_flap = 0  # > 0: `healthy` flips after every this many health checks (a flapping server)
        self.max_model_len: dict[str, int] = {}
        self._counter = 0
        self.in_flight = 0  # chat calls being answered right now, and the most at once
        self.max_in_flight = 0
        self.cancelled = 0  # chat calls whose client went away before the answer
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        # Optional: content for unscripted-content replies, from (model, request body); e.g. answer by role.
        self.responder: Callable[[str, dict[str, Any]], str] | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._bind_port = port

    # lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/embeddings", self._embeddings)
        # handler_cancellation: a client that gives up (timeout, cancel) also ends a hanging handler,
        # so stop() does not wait for sleeps nobody is listening to.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._bind_port)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeOpenAI is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # scripting and inspection

    def script(self, model_id: str, *behaviours: Behaviour) -> None:
        self._models.setdefault(model_id, None)
        self._scripts.setdefault(model_id, deque()).extend(behaviours)

    def calls(self, model_id: str) -> int:
        return sum(1 for r in self.requests if r["model"] == model_id)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        """Returns once ``predicate()`` holds, re-checked whenever a chat call starts or ends (in_flight,
        cancelled, requests) and on every health check: tests wait on the fake's own state changes
        instead of polling a clock. A state that never comes fails the test after `timeout` seconds
        instead of hanging the suite."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AssertionError(f"the fake never reached the awaited state in {timeout} s") from None

    def _changed(self) -> None:
        still: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        for predicate, future in self._waiters:
            if future.done():
                continue
            if predicate():
                future.set_result(None)
            else:
                still.append((predicate, future))
        self._waiters = still

    def reset(self) -> None:
        self._scripts.clear()
        self.requests.clear()
        self._models = dict.fromkeys(self._initial_models)

    # handlers

    async def _list_models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self._models]
        for entry in data:
            if entry["id"] in self.max_model_len:
                entry["max_model_len"] = self.max_model_len[entry["id"]]
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        healthy = self.healthy
        if self.health_flap and self.health_checks % self.health_flap == 0:
            self.healthy = not self.healthy
        self._changed()
        return web.Response(status=200 if healthy else 503)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's embeddings API; scripted like chat (`Reply()` = a normal answer, `Fail(...)` etc.)."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        model = body.get("model", "") if isinstance(body, dict) else ""
        self.requests.append({"model": model, "json": body, "headers": dict(request.headers), "path": request.path})
        script = self._scripts.get(model)
        behaviour: Behaviour = script.popleft() if script else Reply()
        if isinstance(behaviour, Reply | Hang):
            await asyncio.sleep(behaviour.delay if isinstance(behaviour, Reply) else behaviour.seconds)
            return web.json_response(self._embedding_list(model, body if isinstance(body, dict) else {}))
        return await self._perform(behaviour, model, request)

    @staticmethod
    def embedding_of(model: str, item: Any, dimensions: int = 8) -> list[float]:
        """A deterministic vector for one input: multiples of 1/256, so float32 (base64) keeps them exact."""
        values: list[float] = []
        counter = 0
        while len(values) < dimensions:
            digest = hashlib.sha256(f"{model}|{json.dumps(item)}|{counter}".encode()).digest()
            values.extend((byte - 128) / 256 for byte in digest)
            counter += 1
        return values[:dimensions]

    def _embedding_list(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("input")
        items = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        dimensions = body.get("dimensions") or 8
        data = []
        for index, item in enumerate(items):
            vector = self.embedding_of(model, item, dimensions)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(item) if isinstance(item, list) else max(1, len(str(item)) // 4) for item in items)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        model = body.get("model", "") if isinstance(body, dict) else ""
        self.requests.append({"model": model, "json": body, "headers": dict(request.headers), "path": request.path})
        request[_BODY] = body if isinstance(body, dict) else {}  # concurrent calls: not requests[-1]
        if problem := _content_problem(body):
            return web.json_response(
                {"error": {"message": problem, "type": "invalid_request_error", "param": "messages", "code": None}},
                status=400,
            )
        script = self._scripts.get(model)
        behaviour: Behaviour = script.popleft() if script else Reply()
        if isinstance(behaviour, PrefillRejected) and not _continues(request[_BODY]):
            behaviour = Reply()
        if isinstance(behaviour, ContextOverflow) and behaviour.fits(request[_BODY]):
            behaviour = Reply()
        if problem := _continue_problem(request[_BODY]):
            behaviour = Fail(400, {"object": "error", "message": problem, "type": "BadRequestError", "code": 400})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._changed()
        try:
            if isinstance(behaviour, Gated):
                await behaviour.gate.wait()
                behaviour = behaviour.then
            return await self._perform(behaviour, model, request)
        except asyncio.CancelledError:
            self.cancelled += 1  # the client (TokenHub) gave up on this call
            raise
        finally:
            self.in_flight -= 1
            self._changed()

    async def _perform(self, behaviour: Behaviour, model: str, request: web.Request) -> web.StreamResponse:
        streaming = bool(request.get(_BODY, {}).get("stream"))
        if streaming and isinstance(behaviour, _STREAM_BEHAVIOURS):
            return await self._stream(behaviour, model, request)
        match behaviour:
            case Reply():
                await asyncio.sleep(behaviour.delay)
                return web.json_response(self._completion(model, behaviour, request.get(_BODY, {})))
            case Hang():
                await asyncio.sleep(behaviour.seconds)
                return web.json_response(self._completion(model, Reply(), request.get(_BODY, {})))
            case Fail():
                await asyncio.sleep(behaviour.delay)
                return self._failure(behaviour)
            case ContextOverflow():
                return web.json_response(self._context_overflow_body(), status=400)
            case QuotaExceeded():
                return web.json_response(_QUOTA_BODY, status=429)
            case ContentPolicy():
                return web.json_response(_CONTENT_POLICY_BODY, status=400)
            case PrefillRejected():
                return web.json_response(_PREFILL_REJECTED_BODY, status=400)
            case Malformed():
                return web.Response(text=behaviour.text, content_type=behaviour.content_type)
            case Drop():
                return await self._drop(request)
        raise TypeError(f"unknown behaviour {behaviour!r}")

    async def _stream(
        self, behaviour: Reply | StreamCut | StreamStall | StreamError | Hang, model: str, request: web.Request
    ) -> web.StreamResponse:
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        await asyncio.sleep(behaviour.seconds if isinstance(behaviour, Hang) else reply.delay)
        body = request.get(_BODY, {})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self._counter += 1
        head = {"id": f"chatcmpl-fake-{self._counter}", "object": "chat.completion.chunk", "created": 0, "model": model}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(chunk)}\n\n".encode()

        content = self._answer(model, reply, body)
        size = reply.piece_size
        pieces = [content[i : i + size] for i in range(0, len(content), size)] or [""]
        try:
            await response.write(event({"role": "assistant", "content": ""}))
            await asyncio.sleep(reply.first_token_delay)
            for index, piece in enumerate(pieces):
                if isinstance(behaviour, StreamError) and index == behaviour.after:
                    error = {"error": {"message": behaviour.message, "type": "server_error", "code": None}}
                    await response.write(f"data: {json.dumps(error)}\n\n".encode())
                    await response.write_eof()
                    return response
                if isinstance(behaviour, StreamCut | StreamStall) and index == behaviour.after:
                    if isinstance(behaviour, StreamStall):
                        await asyncio.sleep(behaviour.seconds)
                    if request.transport is not None:
                        request.transport.close()
                    return response
                await response.write(event({"content": piece}))
                self.chunks_written += 1
                if index == 0 and reply.garbage:
                    await response.write(b"data: {not json\n\n")
                await asyncio.sleep(reply.chunk_delay)
            if reply.tool_calls:
                calls = [{"index": i, **call} for i, call in enumerate(reply.tool_calls)]
                await response.write(event({"tool_calls": calls}))
            await response.write(event({}, reply.finish_reason))
            if include_usage and reply.usage is not None:
                usage_chunk = {**head, "choices": [], "usage": reply.usage}
                await response.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
            if reply.done_marker:
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.streams_cancelled += 1
            self.stream_cancelled.set()
            raise
        return response

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        # Closing the transport before any response bytes makes the client see ServerDisconnectedError;
        # the HTTPException is then swallowed by aiohttp because the connection is already gone.
        if request.transport is not None:
            request.transport.close()
        raise web.HTTPInternalServerError()

    def _completion(self, model: str, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        self._counter += 1
        message: dict[str, Any] = {"role": "assistant", "content": self._answer(model, reply, body)}
        if reply.tool_calls is not None:
            message["tool_calls"] = reply.tool_calls
        completion: dict[str, Any] = {
            "id": f"chatcmpl-fake-{self._counter}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        }
        if reply.usage is not None:
            completion["usage"] = reply.usage
        return completion

    def _answer(self, model: str, reply: Reply, body: dict[str, Any]) -> str:
        """The reply's content; with `continue_final_message` (vLLM), what follows the final assistant message."""
        content = reply.content if reply.content is not None else self._default_content(model, body)
        if not _continues(body):
            return content  # a trailing assistant message without the flag: the model answers afresh
        prefill = final_assistant_text(body.get("messages")) or ""
        return continuation(content, prefill, repeat_words=reply.repeat_words)

    def _default_content(self, model: str, body: dict[str, Any]) -> str:
        if self.responder is not None:
            return self.responder(model, body)
        return f"reply from {model}"

    def _failure(self, fail: Fail) -> web.Response:
        headers = fail.headers or {}
        if isinstance(fail.body, str):
            return web.Response(status=fail.status, text=fail.body, headers=headers)
        body = fail.body if fail.body is not None else self._error_body(fail.status)
        return web.Response(status=fail.status, text=json.dumps(body), content_type="application/json", headers=headers)

    def _error_body(self, status: int) -> dict[str, Any]:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": f"fake upstream error {status}", "type": kind, "param": None, "code": None}}

    def _context_overflow_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": "This model's maximum context length is 8192 tokens. However, your messages "
                "resulted in 9000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }


_CONTENT_POLICY_BODY = {
    "error": {
        "message": "Your request was rejected as a result of our safety system.",
        "type": "invalid_request_error",
        "param": None,
        "code": "content_policy_violation",
    }
}
_QUOTA_BODY = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
_PREFILL_REJECTED_BODY = {
    "object": "error",
    "message": "continue_final_message is not supported for this model's chat template",
    "type": "BadRequestError",
    "code": 400,
}


def _continues(body: dict[str, Any]) -> bool:
    return body.get("continue_final_message") is True


def _continue_problem(body: dict[str, Any]) -> str:
    """What vLLM answers 400 for when asked to continue the final message."""
    if not _continues(body):
        return ""
    if body.get("add_generation_prompt", True):
        return "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
    if final_assistant_text(body.get("messages")) is None:
        return "continue_final_message is set but the final message is not from the assistant"
    return ""


_PART_KEYS = {"text": "text", "image_url": "image_url", "input_audio": "input_audio", "file": "file"}


def _content_problem(body: Any) -> str:
    """The first content part the chat completions API would refuse, or "": parts are user-only objects
    of a known type, an image_url holds an http(s) or base64 data URL, input_audio base64 wav/mp3 data, a
    file a base64 data URL (or a file_id)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _PART_KEYS or not isinstance(part.get(_PART_KEYS[kind]), str | dict):
                return f"Invalid value for '{where}.type'"
            if kind != "text" and message.get("role") != "user":
                return f"{where}: {kind} parts are only allowed in user messages"
            value = part[_PART_KEYS[kind]]
            if kind == "image_url" and not _is_media_url(value.get("url"), "image/"):
                return f"Invalid '{where}.image_url.url': expected a URL or a base64 data URL"
            if kind == "input_audio" and (value.get("format") not in ("wav", "mp3") or not _b64(value.get("data"))):
                return f"Invalid '{where}.input_audio'"
            if kind == "file" and not (value.get("file_id") or _is_media_url(value.get("file_data"), "application/")):
                return f"Invalid '{where}.file.file_data': expected a base64 data URL"
    return ""


def _is_media_url(url: Any, prefix: str) -> bool:
    if not isinstance(url, str):
        return False
    if url.startswith(("https://", "http://")) and prefix == "image/":
        return True
    head, _, data = url.partition(";base64,")
    return head.startswith("data:" + prefix) and _b64(data)


def _b64(data: Any) -> bool:
    try:
        return isinstance(data, str) and bool(base64.b64decode(data, validate=True))
    except ValueError:
        return False


async def _serve(port: int) -> None:
    async with FakeOpenAI(port=port) as fake:
        print(f"fake OpenAI-compatible provider on {fake.base_url} (Ctrl-C to stop)", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    # A stand-in upstream for the README walk-through: `python -m tests.fakes.openai_fake 9100`.
    import contextlib
    import sys

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(int(sys.argv[1]) if len(sys.argv) > 1 else 9100))
