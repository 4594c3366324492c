"""Relays one upstream stream to the client's sink, for dispatch.

Failover is possible until the first token is handed to the sink: before that, every failure (status, cut,
stall, a first token later than the first-token limit) is a ProviderError that escalate can act on. After
it, a failure is StreamBroken: the client already has a 200 and part of an answer.

A stream whose answer text (content, reasoning, tool-call names and arguments, in UTF-8 bytes; not the SSE
framing) passes `StreamLimits.max_bytes` (TOKENHUB_MAX_STREAM_BYTES) ends with StreamTooLarge before the
delta that would pass it reaches the client: a runaway upstream cannot fill the client's memory or disk.

After a break, dispatch may rescue the answer (stages/stream_rescue.py): it relays a continuation through
this same function into the already open sink.

A stream that ends early after its first token (cut, stall, client gone, request cancelled) is still billed by
the provider, so it is charged here before the error goes on: `ctx.result` carries the usage relayed so far
(the provider's, else chars/4 of the text; input from the provider or the estimate) and `ctx.cost_usd` its
price. The request keeps its error status (502 stream_error, 499) and the recorder charges the key.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from adapters.coarse_timeout import CoarseTimeouts
from adapters.errors import ProviderError
from adapters.provider import Provider
from pipeline.context import Candidate, RequestContext, StreamSink
from pipeline.errors import StreamBroken, StreamTooLarge
from pipeline.types import ChatRequest, ChatResult, ErrorClass, StreamDelta, Usage

__all__ = ["StreamLimits", "relay_stream"]


class _Tally:
    """What the stream carried, for usage when the upstream reports none (chars/4, like the input estimate)."""

    __slots__ = ("bytes", "chars", "usage")

    def __init__(self) -> None:
        self.chars = 0
        self.bytes = 0  # the same text in UTF-8, for the size cap
        self.usage: Usage | None = None

    def add(self, delta: StreamDelta) -> None:
        texts = [delta.content, delta.reasoning]
        if delta.tool_calls:
            for call in delta.tool_calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    texts += (str(function.get("name") or ""), str(function.get("arguments") or ""))
        for text in texts:
            if text:
                self.chars += len(text)
                self.bytes += len(text) if text.isascii() else len(text.encode())
        if delta.usage is not None:
            usage = self.usage or Usage()
            # Anthropic reports input at the start and output at the end; OpenAI both at the end.
            usage.input_tokens = delta.usage.input_tokens or usage.input_tokens
            usage.output_tokens = delta.usage.output_tokens or usage.output_tokens
            self.usage = usage

    def final_usage(self, estimated_input: int) -> Usage:
        usage = self.usage or Usage()
        return Usage(usage.input_tokens or estimated_input, usage.output_tokens or -(-self.chars // 4))


@dataclass(frozen=True, slots=True)
class StreamLimits:
    first_token_secs: float  # from opening to the first token (never past the request's deadline)
    attempt_timeout: float  # connecting and the response headers
    idle_timeout: float  # the longest silence once the body flows
    on_malformed: Callable[[], None]  # an unparseable event was skipped
    max_bytes: int  # answer text this stream may still carry (a rescue's: the cap less what was delivered)
    first_token_timer: CoarseTimeouts  # the first-token limit's timer (the provider client's: one per tick)


async def relay_stream(
    ctx: RequestContext,
    adapter: Provider,
    candidate: Candidate,
    *,
    sink: StreamSink,
    limits: StreamLimits,
    request: ChatRequest | None = None,
    charge: Callable[[Candidate, ChatResult], None] | None = None,
    estimated_input_tokens: int | None = None,
) -> ChatResult:
    """Open the upstream stream, wait for its first token, then copy every delta to `sink`.

    A rescue's continuation passes its own `request` (the prefill), a `charge` that adds to what the broken
    stream was charged, its input estimate (the prefill included) and a sink that is already open."""
    decision = ctx.decision
    assert decision is not None
    charge = charge or ctx.charge
    estimated_input = decision.estimated_input_tokens if estimated_input_tokens is None else estimated_input_tokens
    started = time.monotonic()
    first_deadline = min(decision.deadline, started + limits.first_token_secs)
    upstream = await adapter.open_stream(
        candidate.model.sent_as,  # the provider's name for the model; the client's stream names model.id
        request or ctx.request,
        request_id=ctx.request_id,
        deadline=first_deadline,
        attempt_timeout=limits.attempt_timeout,
        idle_timeout=limits.idle_timeout,
        on_malformed=limits.on_malformed,
    )
    tally = _Tally()
    deltas = aiter(upstream)
    serving = False
    try:
        if not sink.opened:  # what opening the client's stream takes is done now, while the first token comes
            sink.expect(ctx, candidate)
        pending = await _until_first_token(deltas, first_deadline - time.monotonic(), limits.first_token_timer)
        serving = True
        ctx.served_by = candidate
        if not sink.opened:
            ctx.ttft_ms = (time.perf_counter() - ctx.started_at) * 1000
        for delta in pending:
            tally.add(delta)
        if tally.bytes > limits.max_bytes:
            raise StreamTooLarge(limits.max_bytes)
        await sink.open(ctx)
        for delta in pending:
            await sink.send(delta)
        try:
            async for delta in deltas:
                tally.add(delta)  # counted as received: the provider bills it even if the client is gone
                if tally.bytes > limits.max_bytes:
                    raise StreamTooLarge(limits.max_bytes)
                await sink.send(delta)
        except ProviderError as exc:
            raise StreamBroken(f"the upstream stream broke: {exc.message}", cause_class=str(exc.error_class)) from exc
    except BaseException:
        if serving:  # charged before anything else can fail or be cancelled
            usage = tally.final_usage(estimated_input)
            charge(candidate, ChatResult(body={}, usage=usage, latency_ms=(time.monotonic() - started) * 1000))
        upstream.close()
        await deltas.aclose()
        raise
    upstream.release()
    usage = tally.final_usage(estimated_input)
    return ChatResult(body={}, usage=usage, latency_ms=(time.monotonic() - started) * 1000)


async def _until_first_token(
    deltas: AsyncIterator[StreamDelta], seconds: float, timer: CoarseTimeouts
) -> list[StreamDelta]:
    """Deltas up to and including the first that carries a token; a late, cut or empty stream is a
    ProviderError so escalate can fail over."""
    pending: list[StreamDelta] = []
    try:
        with timer.within(max(seconds, 0.0)):
            while True:
                delta = await anext(deltas)
                pending.append(delta)
                if delta.has_token:
                    return pending
    except TimeoutError:
        raise ProviderError(ErrorClass.TRANSIENT, f"no first token within {seconds:.1f}s") from None
    except StopAsyncIteration:
        raise ProviderError(ErrorClass.TRANSIENT, "the upstream stream ended before any token") from None
