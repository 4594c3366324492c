"""A scriptable fake Anthropic Messages API: a real aiohttp server on 127.0.0.1.

Like the real API it requires `x-api-key` and `anthropic-version`, and it validates the request shape
(roles alternate and start with the user, tool_use/tool_result pairing, non-empty text, max_tokens, no
unknown top-level fields, image and document blocks with a base64 or URL source whose data matches its media
type), so a payload mistake fails here the way it would in production.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.prefill import continuation, final_assistant_text

__all__ = [
    "ContentPolicy",
    "ContextOverflow",
    "CreditExhausted",
    "Drop",
    "Fail",
    "FakeAnthropic",
    "Hang",
    "Malformed",
    "PrefillRejected",
    "Reply",
    "StreamCut",
    "StreamError",
    "StreamStall",
    "ToolUse",
]

API_VERSION = "2023-06-01"
_KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "metadata",
        "stream",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
    }
)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class ToolUse:
    name: str
    input: dict[str, Any]
    id: str = ""  # "" -> toolu_fake_<n>


@dataclass(frozen=True)
class Reply:
    """A normal message. `text=None` -> "reply from <model>"; `usage=None` omits usage (the real API never does)."""

    text: str | None = None
    tool_uses: tuple[ToolUse, ...] = ()
    thinking: str = ""
    stop_reason: str | None = None  # None -> "tool_use" when tool_uses, else "end_turn"
    usage: dict[str, Any] | None = field(default_factory=lambda: {"input_tokens": 12, "output_tokens": 6})
    delay: float = 0.0
    # streaming only (the request had "stream": true)
    first_token_delay: float = 0.0  # after message_start, before the first content event
    chunk_delay: float = 0.0
    garbage: bool = False  # a malformed event after the first text delta
    stop_event: bool = True  # send message_stop at the end
    piece_size: int = 4  # characters of text (and of tool input JSON) per delta
    repeat_words: int = 0  # continuing a prefill: repeat this many of its last words first


@dataclass(frozen=True)
class Fail:
    """A non-200 answer; `body=None` -> Anthropic's error JSON with the type for the status."""

    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] | None = None
    message: str = ""


@dataclass(frozen=True)
class CreditExhausted:
    """400: Anthropic's answer when the organization's credit balance is used up."""


@dataclass(frozen=True)
class ContextOverflow:
    """400 with Anthropic's "prompt is too long" error."""


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
    """Stream `after` text deltas of `reply` (a normal one by default), then close the connection; a reply
    with fewer text deltas is cut at its end, before message_delta (a tool-only answer: after its tool_use)."""

    after: int = 1
    reply: Reply | None = None


@dataclass(frozen=True)
class StreamStall:
    """Stream `after` text deltas, then go silent for `seconds` (the connection stays open)."""

    after: int = 1
    seconds: float = 30.0


@dataclass(frozen=True)
class StreamError:
    """Stream `after` text deltas, then an `event: error` (as Anthropic does when it overloads mid-answer)."""

    after: int = 1
    error_type: str = "overloaded_error"
    message: str = "Overloaded"


@dataclass(frozen=True)
class ContentPolicy:
    """400: the request was refused by the content policy (refused on its merits: no failover)."""


@dataclass(frozen=True)
class PrefillRejected:
    """400 for a conversation that ends with an assistant turn (newer models refuse a prefill); any other
    request is answered normally."""


Behaviour = (
    Reply
    | Fail
    | ContextOverflow
    | CreditExhausted
    | Hang
    | Malformed
    | Drop
    | StreamCut
    | StreamStall
    | StreamError
    | ContentPolicy
    | PrefillRejected
)
_STREAM_BEHAVIOURS = (Reply, Hang, StreamCut, StreamStall, StreamError)


class FakeAnthropic:
    """Scripted per model id: `fake.script("claude-x", Fail(529), Reply())`; unscripted calls get `Reply()`."""

    def __init__(self, models: list[str] | tuple[str, ...] = (), *, api_key: str | None = None, port: int = 0) -> None:
        self._models: dict[str, None] = dict.fromkeys(models)
        self._scripts: dict[str, deque[Behaviour]] = {}
        self._api_key = api_key  # None: any non-empty key is accepted
        self.requests: list[dict[str, Any]] = []
        self.streams_cancelled = 0  # streams whose client (TokenHub) went away before the end
        self.stream_cancelled = asyncio.Event()
        self.chunks_written = 0  # text deltas fully handed to the socket, all streams
        self._counter = 0
        # Optional: text for replies scripted without one, from (model, request body).
        self.responder: Callable[[str, dict[str, Any]], str] | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._bind_port = port

    # lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)  # GET -> 405: what a health probe expects
        app.router.add_get("/v1/models", self._list_models)
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

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeAnthropic is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # scripting and inspection

    def script(self, model_id: str, *behaviours: Behaviour) -> None:
        self._models.setdefault(model_id, None)
        self._scripts.setdefault(model_id, deque()).extend(behaviours)

    def calls(self, model_id: str) -> int:
        return sum(1 for r in self.requests if r["model"] == model_id)

    def reset(self) -> None:
        self._scripts.clear()
        self.requests.clear()
        self.streams_cancelled = 0
        self.stream_cancelled.clear()

    # handlers

    async def _list_models(self, request: web.Request) -> web.Response:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in self._models
        ]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return web.json_response({"data": data, "has_more": False, "first_id": first, "last_id": last})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        model = body.get("model", "") if isinstance(body, dict) else ""
        self.requests.append({"model": model, "json": body, "headers": dict(request.headers)})
        if problem := self._auth_problem(request):
            return _error(401 if "key" in problem else 400, problem)
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if problem := validate_request(body):
            return _error(400, problem)
        script = self._scripts.get(model)
        behaviour: Behaviour = script.popleft() if script else Reply()
        prefill = final_assistant_text(body["messages"])
        if isinstance(behaviour, PrefillRejected) and prefill is None:
            behaviour = Reply()
        if body.get("stream") and isinstance(behaviour, _STREAM_BEHAVIOURS):
            return await self._stream(behaviour, model, request, body)
        return await self._perform(behaviour, model, request, body)

    def _auth_problem(self, request: web.Request) -> str:
        key = request.headers.get("x-api-key", "")
        if not key or (self._api_key is not None and key != self._api_key):
            return "invalid x-api-key"
        if request.headers.get("anthropic-version") != API_VERSION:
            return "anthropic-version: header is required"
        return ""

    async def _perform(
        self, behaviour: Behaviour, model: str, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        match behaviour:
            case Reply():
                await asyncio.sleep(behaviour.delay)
                return web.json_response(self._message(model, behaviour, body))
            case Hang():
                await asyncio.sleep(behaviour.seconds)
                return web.json_response(self._message(model, Reply(), body))
            case ContentPolicy():
                return _error(400, "Output blocked by content filtering policy")
            case PrefillRejected():
                return _error(
                    400,
                    "This model does not support assistant message prefill. The conversation must end with a"
                    " user message.",
                )
            case Fail():
                return _failure(behaviour)
            case ContextOverflow():
                return _error(400, "prompt is too long: 210000 tokens > 200000 maximum")
            case CreditExhausted():
                return _error(
                    400,
                    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to"
                    " upgrade or purchase credits.",
                )
            case Malformed():
                return web.Response(text=behaviour.text, content_type=behaviour.content_type)
            case Drop():
                if request.transport is not None:
                    request.transport.close()
                raise web.HTTPInternalServerError()
        raise TypeError(f"unknown or stream-only behaviour {behaviour!r} for a non-stream request")

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_fake_{self._counter}"

    def _blocks(self, model: str, reply: Reply, body: dict[str, Any]) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if reply.thinking:
            blocks.append({"type": "thinking", "thinking": reply.thinking, "signature": "sig-fake"})
        text = reply.text
        if text is None:
            text = self.responder(model, body) if self.responder is not None else f"reply from {model}"
        # A final assistant turn is a prefill: the answer goes on from it (the response leaves it out).
        text = continuation(text, final_assistant_text(body.get("messages")) or "", repeat_words=reply.repeat_words)
        if text:
            blocks.append({"type": "text", "text": text})
        for tool in reply.tool_uses:
            tool_id = tool.id or self._next_id("toolu")
            blocks.append({"type": "tool_use", "id": tool_id, "name": tool.name, "input": tool.input})
        return blocks

    def _message(self, model: str, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": self._blocks(model, reply, body),
            "stop_reason": _stop_reason(reply),
            "stop_sequence": None,
        }
        if reply.usage is not None:
            body["usage"] = reply.usage
        return body

    async def _stream(
        self, behaviour: Behaviour, model: str, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        if isinstance(behaviour, StreamCut) and behaviour.reply is not None:
            reply = behaviour.reply
        await asyncio.sleep(behaviour.seconds if isinstance(behaviour, Hang) else reply.delay)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        usage = reply.usage or {}
        start = {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": usage.get("input_tokens", 0), "output_tokens": 1},
        }
        texts_sent = 0
        try:
            await response.write(_event("message_start", {"type": "message_start", "message": start}))
            await asyncio.sleep(reply.first_token_delay)
            for index, block in enumerate(self._blocks(model, reply, body)):
                for event in _block_events(index, block, reply.piece_size):
                    is_text = event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta"
                    if is_text and await _interrupt(behaviour, texts_sent, response, request):
                        return response
                    await response.write(_event(event["type"], event))
                    if is_text:
                        texts_sent += 1
                        self.chunks_written += 1
                        if texts_sent == 1:
                            await response.write(_event("ping", {"type": "ping"}))
                            if reply.garbage:
                                await response.write(b"event: content_block_delta\ndata: {not json\n\n")
                        await asyncio.sleep(reply.chunk_delay)
            if await _interrupt(behaviour, texts_sent, response, request, at_end=True):
                return response
            delta: dict[str, Any] = {"stop_reason": _stop_reason(reply), "stop_sequence": None}
            end_usage = {"output_tokens": usage.get("output_tokens", 0)}
            await response.write(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": end_usage}))
            if reply.stop_event:
                await response.write(_event("message_stop", {"type": "message_stop"}))
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.streams_cancelled += 1
            self.stream_cancelled.set()
            raise
        return response


def _stop_reason(reply: Reply) -> str:
    return reply.stop_reason or ("tool_use" if reply.tool_uses else "end_turn")


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _block_events(index: int, block: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """The start / deltas / stop events of one content block, as the real API sends them."""
    kind = block["type"]
    if kind == "text":
        start, deltas = (
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": p} for p in _pieces(block["text"], size)],
        )
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": ""}
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], size)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:  # tool_use: the input arrives as partial JSON, after an empty first piece
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        pieces = ["", *_pieces(json.dumps(block["input"]), size)] if block["input"] else []
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


async def _interrupt(
    behaviour: Behaviour, sent: int, response: web.StreamResponse, request: web.Request, *, at_end: bool = False
) -> bool:
    """Carry out a scripted cut, stall or error once `after` text deltas went out (or at the end, for replies
    shorter than that). True when the stream is over."""
    if not isinstance(behaviour, StreamCut | StreamStall | StreamError) or (sent < behaviour.after and not at_end):
        return False
    if isinstance(behaviour, StreamError):
        error = {"type": "error", "error": {"type": behaviour.error_type, "message": behaviour.message}}
        await response.write(_event("error", error))
        await response.write_eof()
        return True
    if isinstance(behaviour, StreamStall):
        await asyncio.sleep(behaviour.seconds)
    if request.transport is not None:
        request.transport.close()
    return True


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _error(status: int, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}
    return web.json_response(body, status=status, headers={"request-id": "req_fake"})


def _failure(fail: Fail) -> web.Response:
    headers = fail.headers or {}
    if isinstance(fail.body, str):
        return web.Response(status=fail.status, text=fail.body, headers=headers)
    if fail.body is None:
        response = _error(fail.status, fail.message or f"fake upstream error {fail.status}")
        response.headers.update(headers)
        return response
    return web.json_response(fail.body, status=fail.status, headers=headers)


# ---- request validation (what the real API rejects) -----------------------------------------------------


def validate_request(body: dict[str, Any]) -> str:
    """The first problem the real Messages API would report for this body, or ""."""
    unknown = sorted(set(body) - _KNOWN_FIELDS)
    if unknown:
        return f"{unknown[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: Input should be less than or equal to 1"
    for stop in body.get("stop_sequences") or ():
        if not isinstance(stop, str) or not stop.strip():
            return "stop_sequences: each stop sequence must contain non-whitespace"
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        return "metadata: Extra inputs are not permitted"
    if body.get("tool_choice") is not None and not body.get("tools"):
        return "tool_choice may only be specified while providing tools"
    for tool in body.get("tools") or ():
        if "function" in tool or not isinstance(tool.get("name"), str):
            return "tools: each tool needs a name and an input_schema"
        if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
            return "tools.input_schema: Field required"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or list"
    return _validate_messages(body.get("messages"))


def _validate_messages(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    pending: set[str] = set()  # tool_use ids the next user turn must answer
    previous = ""
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i == 0 and role != "user":
            return "messages: first message must use the user role"
        if role == previous:
            return f"messages: roles must alternate between user and assistant (messages.{i})"
        previous = role
        blocks = message.get("content")
        if isinstance(blocks, str):
            if not blocks.strip() and not (role == "assistant" and i == len(messages) - 1):
                return f"messages.{i}: text content blocks must contain non-whitespace text"
            blocks = [{"type": "text", "text": blocks}]
        if not isinstance(blocks, list) or not blocks:
            return f"messages.{i}.content: must be a string or a non-empty list of blocks"
        if problem := _validate_blocks(i, role, blocks, pending, last=i == len(messages) - 1):
            return problem
        pending = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    return ""


def _validate_blocks(i: int, role: str, blocks: list[Any], pending: set[str], *, last: bool) -> str:
    answered: set[str] = set()
    seen_other = False
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str) or not block["text"].strip():
                return f"messages.{i}.content.{j}: text content blocks must contain non-whitespace text"
            if last and role == "assistant" and j == len(blocks) - 1 and block["text"] != block["text"].rstrip():
                return "final assistant content cannot end with trailing whitespace"
            seen_other = True
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("input"), dict) or not isinstance(block.get("id"), str):
                return f"messages.{i}.content.{j}: tool_use needs an id and an input object"
        elif kind == "tool_result" and role == "user":
            if seen_other:
                return f"messages.{i}: tool_result blocks must come before any other content"
            if block.get("tool_use_id") not in pending:
                return f"messages.{i}.content.{j}: unexpected tool_use_id found in tool_result blocks"
            answered.add(block["tool_use_id"])
        elif kind in ("image", "document") and role == "user":
            if problem := _validate_media(block):
                return f"messages.{i}.content.{j}.{problem}"
            seen_other = True
        elif kind in ("thinking", "redacted_thinking"):
            seen_other = True
        else:
            return f"messages.{i}.content.{j}: unexpected block type {kind!r} for role {role}"
    if role == "user" and pending - answered:
        return "tool_use ids were found without tool_result blocks immediately after"
    return ""


_IMAGE_MAGIC = {"image/jpeg": b"\xff\xd8", "image/png": b"\x89PNG", "image/gif": b"GIF8", "image/webp": b"RIFF"}
_IMAGE_TYPES = tuple(_IMAGE_MAGIC)
_MEDIA_KEYS = {
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "title", "context", "citations", "cache_control"},
}


def _validate_media(block: dict[str, Any]) -> str:
    """An image or document block as the Messages API checks it: known keys, a base64 source with a media
    type it reads and data that decodes (PDF for documents), or an http(s) URL source."""
    kind = block["type"]
    if extra := sorted(set(block) - _MEDIA_KEYS[kind]):
        return f"{extra[0]}: Extra inputs are not permitted"
    source = block.get("source")
    if not isinstance(source, dict):
        return "source: Field required"
    if source.get("type") == "url":
        url = source.get("url")
        ok = isinstance(url, str) and url.startswith(("https://", "http://")) and set(source) == {"type", "url"}
        return "" if ok else "source.url: Input should be a valid URL"
    if source.get("type") != "base64" or set(source) != {"type", "media_type", "data"}:
        return "source: Input tag does not match any of the expected tags: 'base64', 'url'"
    allowed = _IMAGE_TYPES if kind == "image" else ("application/pdf",)
    if source.get("media_type") not in allowed:
        return f"source.media_type: Input should be {' or '.join(repr(t) for t in allowed)}"
    try:
        data = base64.b64decode(source.get("data") or "", validate=True)
    except (ValueError, TypeError):
        return "source.data: invalid base64 data"
    if kind == "document":
        return "" if data.startswith(b"%PDF-") else "source.data: the PDF specified was not valid"
    if not data.startswith(_IMAGE_MAGIC[source["media_type"]]) or (
        source["media_type"] == "image/webp" and data[8:12] != b"WEBP"
    ):
        return f"source: Image does not match the provided media type {source['media_type']}"
    return ""


async def _serve(port: int) -> None:
    async with FakeAnthropic(port=port) as fake:
        print(f"fake Anthropic Messages API on {fake.base_url} (Ctrl-C to stop)", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    # A stand-in upstream: `python -m tests.fakes.anthropic_fake 9200`.
    import contextlib
    import sys

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(int(sys.argv[1]) if len(sys.argv) > 1 else 9200))
