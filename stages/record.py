"""record: the outermost stage. Times the whole chain and has the Recorder emit exactly one record per request.

What happens to the record (learning, metrics, events, the log line, the DuckDB queue, key accounting) is the
Recorder's sink list (stages/recorder.py, built in pipeline/services.py): this stage only decides which error
the request ended with. Nothing here awaits storage.

A client's request is recorded just after its answer is handed to the socket (the next event-loop turn, before
any other request's handler runs), so the client does not wait for the sinks; a request's holds on budgets and limits
are settled then, and until then they count as held. Plan steps and workflow activities record before they
return: their callers read the record.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from pipeline.context import RequestContext
from pipeline.errors import InternalError, RequestCancelled, TokenHubError
from pipeline.stage import Next, StageOptions, StageSpec

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["SPEC", "Record", "recorded"]

log = structlog.get_logger("tokenhub.request")


class RecordOptions(StageOptions):
    pass


class Record:
    def __init__(self, services: Services, options: RecordOptions) -> None:
        self._services = services

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        await recorded(self._services, ctx, call_next, after_answer=True)


async def recorded(services: Services, ctx: RequestContext, call_next: Next, *, after_answer: bool = False) -> None:
    """Run `call_next(ctx)` and emit its one record whatever happens. Also runs each /v1/plan step, so a
    step is timed and recorded exactly like a request. `after_answer`: emit once the event loop has run the
    rest of this turn (the edge encodes and writes the answer in it), not before returning."""
    try:
        await call_next(ctx)
    except TokenHubError as exc:
        ctx.error = exc
        raise
    except asyncio.CancelledError:
        ctx.error = RequestCancelled("request cancelled before it completed")
        raise
    except Exception as exc:
        log.exception("unhandled_error", request_id=ctx.request_id)
        ctx.error = InternalError("internal error; see the server log for this request id")
        raise ctx.error from exc
    finally:
        ctx.ended_at = time.perf_counter()
        if not ctx.recorded_elsewhere:  # a workflow's activity records what it ran, exactly once
            if after_answer:
                asyncio.get_running_loop().call_soon(services.recorder.emit, ctx)
            else:
                services.recorder.emit(ctx)


SPEC = StageSpec(
    name="record",
    factory=Record,
    options=RecordOptions,
    summary="Outermost: times the chain; one record per request to metrics, the log and the DuckDB request log.",
    required=True,
)
