"""The thin chat handler every wire format shares: decode -> tenant pipeline -> encode (JSON or a stream)."""

from __future__ import annotations

from aiohttp import web

from pipeline.context import RequestContext
from pipeline.edge.codec import Codec, attempts_header
from pipeline.edge.context import BeforeBody, new_context
from pipeline.edge.idempotency import Idempotency, record_replay
from pipeline.errors import ClientDisconnected, NotFound, TokenHubError
from pipeline.model_ids import resolve_model_id
from pipeline.openapi import Operation
from pipeline.services import Services
from pipeline.stage import Next
from pipeline.tenants import TenantPipelines
from pipeline.web import read_body, trusted_networks

__all__ = ["RoutedEndpoint", "check_model_known"]


class RoutedEndpoint:
    """A chat-style route: decode with the codec, run the tenant's pipeline, answer in the codec's format
    (a JSON body, or a stream the pipeline writes through the codec's sink). Errors, too, are in the
    codec's shape, before and after a stream opened."""

    def __init__(self, services: Services, pipelines: TenantPipelines, codec: Codec) -> None:
        self._services = services
        self._pipelines = pipelines
        self._codec = codec
        self._trusted = trusted_networks(services)
        self._before_body = BeforeBody()
        self._idempotency = Idempotency(services)
        self.operation = Operation(
            codec.summary,
            "client API",
            body=codec.body_model,
            security="api_key",
            errors=codec.error_model,
            media=("application/json", "text/event-stream") if codec.streams else ("application/json",),
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        services, codec = self._services, self._codec
        ctx = new_context(request, services, self._trusted, scope=codec.scope, endpoint=codec.endpoint)
        chain = self._pipelines.chain_for(ctx.tenant_id)
        # Log lines name the request id explicitly: binding a context variable per request costs more.
        try:
            self._before_body(ctx, chain)
            raw = await read_body(request, services.settings.max_body_bytes, max_depth=services.settings.max_json_depth)
            ctx.request, ctx.policy = codec.decode(raw, max_messages=services.settings.max_messages)
            if codec.strict_model:
                check_model_known(services, ctx.request.model_hint)
        except TokenHubError as exc:
            # Rejected before the pipeline ran: nothing dispatched, still recorded exactly once.
            ctx.error = exc
            services.recorder.emit(ctx)
            return self._error(exc, ctx.request_id)
        if not self._idempotency.applies(request):  # the common case: no wrapper, no closures
            return await self._serve(request, ctx, chain)
        try:
            return await self._idempotency.run(
                request,
                ctx.api_key.id if ctx.api_key else "",
                raw,
                codec.endpoint,
                lambda: self._serve(request, ctx, chain),
                lambda stored: record_replay(services, ctx, stored),
            )
        except TokenHubError as exc:  # the Idempotency-Key refused (400, 409, 422): nothing ran
            ctx.error = exc
            services.recorder.emit(ctx)
            return self._error(exc, ctx.request_id)

    async def _serve(self, request: web.Request, ctx: RequestContext, chain: Next) -> web.StreamResponse:
        codec = self._codec
        sink = ctx.sink = codec.stream_sink(request, ctx) if ctx.request.stream else None
        try:
            await chain(ctx)
        except ClientDisconnected:
            return sink.response if sink is not None and sink.opened else web.Response(status=499)
        except TokenHubError as exc:
            if sink is not None and sink.opened:
                await sink.fail(exc)  # the client has a 200 and part of an answer: end it with an error event
                return sink.response
            return self._error(exc, ctx.request_id)
        served = ctx.served_by
        assert served is not None, "a chain that returns without error has served the request"
        if sink is not None:
            await sink.finish(ctx)
            return sink.response
        headers = {
            "X-Negotiated-Model": served.model.id,
            "X-Provider": served.model.provider_id,
            "X-TokenHub-Attempts": attempts_header(ctx),
        }
        if ctx.alias_from:
            headers["X-Alias-From"] = ctx.alias_from
        return web.Response(body=codec.encode(ctx), content_type="application/json", headers=headers)

    def _error(self, exc: TokenHubError, request_id: str) -> web.Response:
        return web.json_response(
            self._codec.error_body(exc, request_id),
            status=exc.status,
            headers={**exc.headers, "X-Request-Id": request_id},
        )


def check_model_known(services: Services, model: str) -> None:
    """An OpenAI/Anthropic client that names a model gets a 404 for an unknown one, as those APIs do.
    An enabled alias is a known name (policy replaces it by one of its variants)."""
    snapshot = services.snapshot
    alias = snapshot.aliases.get(model)
    if alias is not None and alias.enabled:
        return
    if model and resolve_model_id(model, snapshot.models) is None:
        raise NotFound(
            f"model {model!r} does not exist; GET /v1/models lists the models, or send 'auto'", field="model"
        )
