"""Stream rescue: which model may continue a stream that broke after its first token, and with what request.

A stream that is cut, stalls past the idle limit or reports an error after tokens reached the client cannot
fail over (the client holds part of an answer), but it can be *continued*: the conversation plus the text
already delivered, as an assistant prefill, goes to a model that continues a prefill (`supports_prefill`,
by default Anthropic and vLLM), and its continuation is spliced into the client's stream
(stages/stream_splice.py). Dispatch runs the rescue (stages/dispatch.py, `max_stream_rescues`); this module
holds the choices it makes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from adapters.provider import Provider, supports_prefill
from pipeline.context import Candidate, RequestContext
from pipeline.types import ChatRequest, Message
from stages.health import HealthTracker

__all__ = ["OUTCOMES", "prefill_request", "rescue_candidates", "unrescuable"]

# tokenhub_stream_rescues_total{outcome}: one per request whose stream broke after its first token.
OUTCOMES = ("rescued", "failed", "no_capable_fallback", "tool_calls", "disabled")
_OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens")


def unrescuable(tool_calls: bool, rescues_left: int, max_rescues: int) -> str | None:
    """Why a broken stream is not continued at all (an outcome), or None when a rescue may be tried."""
    if tool_calls:
        return "tool_calls"  # a half-relayed tool call cannot be continued by a text prefill
    if max_rescues == 0:
        return "disabled"
    return "failed" if rescues_left <= 0 else None


def rescue_candidates(
    ctx: RequestContext, adapters: Mapping[str, Provider], health: HealthTracker, prefill_chars: int
) -> list[Candidate]:
    """The request's ranked candidates that may continue the answer, best first: not tried yet, configured,
    continuing a prefill, not skipped by health, with room for the prefill in their context window. Models
    of another provider come first: the one that broke the stream may be failing as a whole."""
    decision = ctx.decision
    assert decision is not None
    tried = {attempt.model_id for attempt in ctx.attempts}
    needed = decision.estimated_input_tokens + -(-prefill_chars // 4)
    broken_provider = ctx.attempts[-1].provider_id if ctx.attempts else ""
    capable = []
    for candidate in decision.candidates:
        model = candidate.model
        adapter = adapters.get(model.provider_id)
        if (
            model.id in tried
            or adapter is None
            or not supports_prefill(model, adapter)
            or health.unavailable_reason(model.provider_id) is not None
            or (model.max_context_tokens and needed > model.max_context_tokens)
        ):
            continue
        capable.append(candidate)
    return sorted(capable, key=lambda c: c.model.provider_id == broken_provider)  # stable: rank kept within


def prefill_request(request: ChatRequest, delivered: str, output_tokens: int) -> ChatRequest:
    """The request that continues `delivered`: the conversation plus the delivered text (trailing whitespace
    stripped, see stream_splice.py) as the assistant's unfinished turn, its output limit lowered by what was
    already produced. A conversation that already ended in an assistant prefill of the client's keeps it in
    front: the answer continues that turn."""
    messages = list(request.messages)
    prefill = delivered.rstrip()
    parameters = _lowered_limits(request.parameters, output_tokens)
    if not prefill:  # only reasoning reached the client: the answer itself starts afresh
        return dataclasses.replace(request, parameters=parameters)
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant" and not last.tool_calls:
        messages[-1] = Message("assistant", last.content + prefill)
    else:
        messages.append(Message("assistant", prefill))
    return dataclasses.replace(
        request,
        messages=messages,
        parameters=parameters,
        continue_final=True,
    )


def _lowered_limits(parameters: dict[str, Any], used: int) -> dict[str, Any]:
    """The client's output cap covers the whole answer: the continuation gets what is left of it."""
    out = dict(parameters)
    for name in _OUTPUT_LIMITS:
        value = out.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[name] = max(1, value - used)
    return out
