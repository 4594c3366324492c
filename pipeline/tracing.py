"""OpenTelemetry tracing, opt-in (TOKENHUB_OTEL_ENABLED): a server span per /v1 request, a span per pipeline
stage and a client span per provider attempt, exported over OTLP/HTTP (protobuf) to
TOKENHUB_OTEL_ENDPOINT; W3C trace context (traceparent, tracestate, baggage) is taken from the client and
passed on to the provider.

Zero cost when off: ``Tracing.build`` returns None and nothing of OpenTelemetry is imported; whoever would
trace checks that once, when it is built (the middleware is not installed, the stage chain is folded
without wrappers, the HTTP client keeps its plain attempt methods). Nothing here touches the global
OpenTelemetry state: the tracer provider is TokenHub's own.

Spans carry ids, names, statuses and sizes, never headers, bodies or keys. Export runs on the SDK's batch
thread; the event loop only queues finished spans.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

    from pipeline.settings import Settings

__all__ = ["REQUEST_SPAN", "TRACES_PATH", "TracedStage", "Tracing", "TracingUnavailable"]

REQUEST_SPAN = "tokenhub.request"
STAGE_SPAN = "tokenhub.stage."
ATTEMPT_SPAN = "tokenhub.provider_attempt"
TRACES_PATH = "/v1/traces"
TRACED_PREFIX = "/v1/"  # client requests only: /metrics scrapes and admin pages would drown the traces
R = TypeVar("R")


class TracingUnavailable(RuntimeError):
    """TOKENHUB_OTEL_ENABLED=true without the `otel` extra installed."""


class _Stage(Protocol):
    async def __call__(self, ctx: Any, call_next: Any) -> Any: ...


class TracedStage:
    """A stage inside a span of its own; ``inner`` is the stage (stages_in unwraps it)."""

    __slots__ = ("_attributes", "_name", "_tracer", "inner")

    def __init__(self, tracer: Tracer, name: str, inner: _Stage) -> None:
        self._tracer = tracer
        self._name = STAGE_SPAN + name
        self._attributes = {"tokenhub.stage": name}
        self.inner = inner

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        with self._tracer.start_as_current_span(self._name, attributes=self._attributes):
            return await self.inner(ctx, call_next)


class Tracing:
    """The tracer, the propagator and the exporter's batch processor; a start/stop component (stop flushes)."""

    name = "tracing"

    def __init__(self, service_name: str, exporter: SpanExporter) -> None:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider: TracerProvider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer: Tracer = self.provider.get_tracer("tokenhub")
        self.propagator = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
        self._kinds = SpanKind
        self._error = lambda description: Status(StatusCode.ERROR, description)

    @classmethod
    def build(cls, settings: Settings) -> Tracing | None:
        """None when tracing is off (the common case: nothing is imported)."""
        if not settings.otel_enabled:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingUnavailable(
                "TOKENHUB_OTEL_ENABLED=true needs the OpenTelemetry packages: pip install 'tokenhub[otel]'"
            ) from None
        # 5 s per export, retries included: bounds how long a shutdown waits for a collector that is gone
        exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint.rstrip("/") + TRACES_PATH, timeout=5)
        return cls(settings.otel_service_name, exporter)

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        """Export what is still queued (the SDK waits for the exporter: off the loop)."""
        await asyncio.get_running_loop().run_in_executor(None, self.provider.shutdown)

    async def flush(self) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.provider.force_flush)

    # --- the three kinds of span -----------------------------------------------------------------------
    def middleware(self, request_id: Callable[[web.Request], str]) -> Middleware:
        """The server span of a /v1 request, child of the client's traceparent when it sent one. Install it
        outermost, so it sees the final status of errors the inner middleware turned into JSON."""
        tracer, propagator, server = self.tracer, self.propagator, self._kinds.SERVER

        @web.middleware
        async def trace_request(request: web.Request, handler: Any) -> web.StreamResponse:
            if not request.path.startswith(TRACED_PREFIX):
                return await handler(request)
            parent = propagator.extract(request.headers)
            attributes = {"http.request.method": request.method, "url.path": request.path}
            with tracer.start_as_current_span(REQUEST_SPAN, context=parent, kind=server, attributes=attributes) as span:
                response = await handler(request)
                span.set_attribute("http.response.status_code", response.status)
                if rid := request_id(request):
                    span.set_attribute("tokenhub.request_id", rid)
                if response.status >= 500:
                    span.set_status(self._error(f"HTTP {response.status}"))
                return response

        return trace_request

    def stage(self, name: str, stage: _Stage) -> TracedStage:
        return TracedStage(self.tracer, name, stage)

    def attempt(self, send: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        """Wraps an HTTP client attempt ``send(url, data, headers, ...)``: a client span, and the W3C headers
        of that span added to (a copy of) the upstream request's headers."""
        tracer, propagator, client = self.tracer, self.propagator, self._kinds.CLIENT

        @functools.wraps(send)
        async def traced(url: str, data: bytes, headers: Mapping[str, str], *args: Any) -> R:
            parts = urlsplit(url)  # no query string: some providers take a key there
            attributes: dict[str, Any] = {
                "http.request.method": "POST",
                "server.address": parts.hostname or "",
                "url.path": parts.path,
                "http.request.body.size": len(data),
            }
            if parts.port:
                attributes["server.port"] = parts.port
            with tracer.start_as_current_span(ATTEMPT_SPAN, kind=client, attributes=attributes) as span:
                outgoing = dict(headers)
                propagator.inject(outgoing)
                try:
                    result = await send(url, data, outgoing, *args)
                except Exception as exc:
                    kind = getattr(exc, "error_class", None)
                    span.set_attribute("error.type", str(getattr(kind, "value", kind or type(exc).__name__)))
                    if (status := getattr(exc, "status", None)) is not None:
                        span.set_attribute("http.response.status_code", status)
                    raise
                span.set_attribute("http.response.status_code", getattr(result, "status", 200))
                return result

        return traced
