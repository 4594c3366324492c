"""shape: after a successful dispatch, check the answer against the request's output_schema and shape it per
output_format (json / markdown / text, strip_think, max_tokens). Streams pass through untouched.

It sits outside `escalate`: an answer that breaks the client's schema is the client's contract failing
(502 `output_schema_mismatch`, recorded as `output_schema_validation_failed`), not a provider failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.answer import answer_text
from pipeline.context import RequestContext
from pipeline.errors import OutputSchemaMismatch
from pipeline.output_format import OutputFormat, parse_answer_json, shape_text
from pipeline.output_schema import validate_output
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ChatResult

if TYPE_CHECKING:
    from pipeline.services import Services


class ShapeOptions(StageOptions):
    pass


class Shape:
    def __init__(self, services: Services, options: ShapeOptions) -> None:
        pass

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        await call_next(ctx)
        request, result = ctx.request, ctx.result
        if request.stream or result is None:
            return
        fmt: OutputFormat | None = request.output_format
        if request.output_schema is None and (fmt is None or not fmt.active):
            return
        text = answer_text(result)
        if request.output_schema is not None:
            ok, value = parse_answer_json(text)
            if not ok:
                raise OutputSchemaMismatch("the answer is not JSON, so it cannot match output_schema")
            validate_output(request.output_schema, value)
        if fmt is not None and fmt.active:
            ctx.result = _shaped(result, shape_text(text, fmt))


def _shaped(result: ChatResult, text: str) -> ChatResult:
    """The answer as a chat.completion whose only choice holds the shaped text (usage kept)."""
    body = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    if result.usage is not None:
        usage = result.usage
        body["usage"] = {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }
    return ChatResult(body=body, usage=result.usage, latency_ms=result.latency_ms)


SPEC = StageSpec(
    name="shape",
    factory=Shape,
    options=ShapeOptions,
    summary="Checks the answer against output_schema and shapes it per output_format (non-streaming).",
    after=("policy",),
)
