"""Splicing a rescue's continuation into the client's stream, for stream rescue (stages/stream_rescue.py).

The client's sink is wrapped twice over a request's life: `RecordingSink` notes what the first stream
delivered (the text a rescue sends as the assistant prefill), `SpliceSink` relays a continuation after it.

A continuation is asked to continue `prefill` = the delivered text without its trailing whitespace (Anthropic
rejects a prefill that ends in whitespace, so every provider is sent the same one). What comes back is
joined so the client reads one answer:
- a provider continues exactly where the prefill stops, mid-word included (vLLM's continue_final_message):
  relayed as it is;
- it starts with the whitespace the client already has (the stripped tail): that whitespace is not sent twice;
- it repeats the end of the delivered text first (a model that restarts its sentence, or the whole answer):
  the repeat is dropped. A repeat counts only from a word boundary and when it spans at least two words or
  the whole prefill, so a word legitimately said twice at the seam ("no, no") is kept.
To decide, the start of the continuation is held back while it could still be such a repeat (it matches
text in the prefill's last `OVERLAP_WINDOW` characters): a few tokens in practice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.context import Candidate, RequestContext, StreamSink
from pipeline.types import StreamDelta

__all__ = ["OVERLAP_WINDOW", "Delivered", "RecordingSink", "SpliceSink", "splice_offset"]

OVERLAP_WINDOW = 4000  # characters of the delivered text a repeated restart is looked for in


@dataclass(slots=True)
class Delivered:
    """What the client's stream has carried so far."""

    parts: list[str] = field(default_factory=list)
    tool_calls: bool = False  # a tool call was relayed: an answer that cannot be continued by a prefill
    reasoning: bool = False

    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def note(self, delta: StreamDelta) -> None:
        if delta.content:
            self.parts.append(delta.content)
        if delta.tool_calls:
            self.tool_calls = True
        if delta.reasoning:
            self.reasoning = True


class RecordingSink:
    """The client's sink, noting what it was sent."""

    def __init__(self, sink: StreamSink, delivered: Delivered) -> None:
        self._sink = sink
        self.delivered = delivered

    @property
    def opened(self) -> bool:
        return self._sink.opened

    def expect(self, ctx: RequestContext, candidate: Candidate) -> None:
        self._sink.expect(ctx, candidate)

    async def open(self, ctx: RequestContext) -> None:
        await self._sink.open(ctx)

    async def send(self, delta: StreamDelta) -> None:
        await self._sink.send(delta)
        self.delivered.note(delta)


class SpliceSink:
    """The client's (already open) sink for a continuation: trims what the client already has from its start
    (see the module doc), then relays it, noting it in `delivered` (a second rescue continues from there)."""

    def __init__(self, sink: StreamSink, delivered: Delivered) -> None:
        self._sink = sink
        self._delivered = delivered
        self._before = delivered.text
        self._held = ""  # the continuation's first characters, while they may still repeat delivered text
        self._joined = False  # the seam is decided: everything from here on is relayed as it comes
        self._show_reasoning = not self._before  # no content yet: the continuation's reasoning is still news

    @property
    def opened(self) -> bool:
        return True  # the first stream opened it

    def expect(self, ctx: RequestContext, candidate: Candidate) -> None:
        return None

    async def open(self, ctx: RequestContext) -> None:
        return None

    async def send(self, delta: StreamDelta) -> None:
        if delta.reasoning and not self._show_reasoning:
            delta = StreamDelta(delta.content, "", delta.tool_calls, delta.finish_reason, delta.usage)
        if not self._joined:
            self._held += delta.content
            final = bool(delta.finish_reason or delta.tool_calls)
            offset = splice_offset(self._before, self._held, final=final)
            if offset is None:
                return  # undecided: nothing of this delta is sent yet (its usage is read from ctx at the end)
            self._joined = True
            rest, self._held = self._held[offset:], ""
            delta = StreamDelta(rest, delta.reasoning, delta.tool_calls, delta.finish_reason, delta.usage)
        await self._forward(delta)

    async def flush(self) -> None:
        """The continuation ended: decide the seam on what was held back, and send it."""
        if self._joined:
            return
        self._joined = True
        offset = splice_offset(self._before, self._held, final=True)
        rest, self._held = self._held[offset or 0 :], ""
        if rest:
            await self._forward(StreamDelta(content=rest))

    async def _forward(self, delta: StreamDelta) -> None:
        if delta.content or delta.reasoning or delta.tool_calls or delta.finish_reason or delta.usage:
            await self._sink.send(delta)
            self._delivered.note(delta)


def splice_offset(delivered: str, head: str, *, final: bool) -> int | None:
    """How many characters of a continuation's `head` the client already has, or None while that is not
    known yet (more of the continuation is needed, and `final` says none will come)."""
    prefill = delivered.rstrip()
    tail = delivered[len(prefill) :]  # whitespace the client has but the prefill did not carry
    window = prefill[-OVERLAP_WINDOW:]
    if not final and (not head or head.isspace() or head in window):
        return None
    overlap = _repeat_length(prefill, head, final=final)
    rest = head[overlap:]
    if tail and rest[:1].isspace():
        # The continuation opens with whitespace the client already has: drop that whitespace (all of it when
        # it differs, as the client's own already separates the words).
        return overlap + (len(tail) if rest.startswith(tail) else len(rest) - len(rest.lstrip()))
    return overlap


def _repeat_length(prefill: str, head: str, *, final: bool) -> int:
    """The longest start of `head` that repeats the end of `prefill` at word boundaries and spans two words
    or the whole prefill; 0 for none."""
    for size in range(min(len(head), len(prefill)), 0, -1):
        piece = head[:size]
        if not prefill.endswith(piece) or not piece.strip():
            continue
        starts_clean = size == len(prefill) or not (prefill[-size - 1].isalnum() and piece[0].isalnum())
        if not starts_clean:
            continue
        if len(piece.split()) >= 2:
            return size  # a restart of two words or more, even one that then finishes the prefill's last word
        # One word (the whole prefill): a repeat only if the continuation does not go on with that word.
        ends_clean = not (head[size].isalnum() and piece[-1].isalnum()) if size < len(head) else final
        if ends_clean and piece.strip() == prefill.strip():
            return size
    return 0
