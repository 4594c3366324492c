"""A provider as one model sees it: the model's own conventions applied around each call (its `tool_name_map`,
its `gemma4_output` parsing), so the stages and the edge only ever see the client's vocabulary.

`for_model(adapter, model)` returns the adapter itself when the model has no such conventions (the usual
case: nothing is wrapped, nothing costs), else a `ModelCalls` that transforms the request going out and the
answer or stream coming back and delegates everything else to the adapter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from adapters.gemma4 import Gemma4Parser, Parsed, rewrite_gemma4_choices, tool_call
from adapters.http import RetryHook
from adapters.provider import ChatStream, Provider
from adapters.tool_names import ToolNames
from pipeline.types import ChatRequest, ChatResult, ModelInfo, StreamDelta

__all__ = ["ModelCalls", "for_model"]


def for_model(adapter: Provider, model: ModelInfo) -> Provider:
    if not model.tool_name_map and not model.gemma4_output:
        return adapter
    return ModelCalls(adapter, model)


class ModelCalls:
    """`Provider` for one model's chat calls; every other attribute is the wrapped adapter's."""

    def __init__(self, adapter: Provider, model: ModelInfo) -> None:
        self._adapter = adapter
        self._names = ToolNames(model.tool_name_map) if model.tool_name_map else None
        self._gemma4 = model.gemma4_output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    async def send(
        self,
        model_id: str,
        request: ChatRequest,
        *,
        request_id: str,
        deadline: float,
        attempt_timeout: float,
        on_retry: RetryHook | None = None,
    ) -> ChatResult:
        result = await self._adapter.send(
            model_id,
            self._names.request(request) if self._names else request,
            request_id=request_id,
            deadline=deadline,
            attempt_timeout=attempt_timeout,
            on_retry=on_retry,
        )
        if self._gemma4 and result.format == "openai":
            result = dataclasses.replace(result, body=rewrite_gemma4_choices(result.body), raw=b"")
        return self._names.result(result) if self._names else result

    async def open_stream(
        self,
        model_id: str,
        request: ChatRequest,
        *,
        request_id: str,
        deadline: float,
        attempt_timeout: float,
        idle_timeout: float,
        on_malformed: Callable[[], None],
    ) -> ChatStream:
        upstream = await self._adapter.open_stream(
            model_id,
            self._names.request(request) if self._names else request,
            request_id=request_id,
            deadline=deadline,
            attempt_timeout=attempt_timeout,
            idle_timeout=idle_timeout,
            on_malformed=on_malformed,
        )
        return _ModelStream(upstream, self._names, self._gemma4)


class _ModelStream:
    """The upstream's deltas, Gemma-4 parsed (when asked) and tool calls renamed to the client's names."""

    def __init__(self, upstream: ChatStream, names: ToolNames | None, gemma4: bool) -> None:
        self._upstream = upstream
        self._names = names
        self._parser = Gemma4Parser() if gemma4 else None
        self._calls = 0  # tool calls parsed out of the text so far
        self._native_calls = 0  # tool-call indexes the upstream itself used: parsed ones come after them

    def close(self) -> None:
        self._upstream.close()

    def release(self) -> None:
        self._upstream.release()

    async def __aiter__(self) -> AsyncIterator[StreamDelta]:
        async for delta in self._upstream:
            for out in self._deltas(delta):
                yield self._names.delta(out) if self._names else out
        if self._parser is not None:  # a stream that ended without a finish reason: what the parser held
            for out in self._parsed(self._parser.finish()):
                yield self._names.delta(out) if self._names else out

    def _deltas(self, delta: StreamDelta) -> list[StreamDelta]:
        parser = self._parser
        if parser is None:
            return [delta]
        for call in delta.tool_calls or ():
            index = call.get("index") if isinstance(call, dict) else None
            if isinstance(index, int):
                self._native_calls = max(self._native_calls, index + 1)
        out = self._parsed(parser.feed(delta.content)) if delta.content else []
        rest = dataclasses.replace(delta, content="")
        if delta.finish_reason is not None:
            out += self._parsed(parser.finish())
            if self._calls and delta.finish_reason == "stop":
                rest = dataclasses.replace(rest, finish_reason="tool_calls")
        if rest.has_token or rest.usage is not None:
            out.append(rest)
        return out

    def _parsed(self, parsed: Parsed) -> list[StreamDelta]:
        out = []
        if parsed.reasoning or parsed.text:
            out.append(StreamDelta(content=parsed.text, reasoning=parsed.reasoning))
        if parsed.calls:
            calls = []
            for call in parsed.calls:
                entry = tool_call(call, 0, self._calls)
                calls.append({"index": self._native_calls + self._calls, **entry})
                self._calls += 1
            out.append(StreamDelta(tool_calls=calls))
        return out
