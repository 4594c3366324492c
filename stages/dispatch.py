"""dispatch: call the adapter for the chosen candidate and put its answer on the context."""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.errors import ProviderError
from adapters.provider import EmbeddingProvider
from pipeline.context import Attempt, Candidate, RequestContext
from pipeline.errors import StreamBroken, UpstreamFailed
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ErrorClass, ModelInfo
from stages.stream_relay import relay_stream

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["SPEC", "Dispatch", "DispatchFailed", "DispatchOptions"]


class DispatchFailed(UpstreamFailed):
    """One provider call failed; escalate decides what to try next, otherwise the client gets a 502."""

    def __init__(self, candidate: Candidate, cause: ProviderError) -> None:
        model = candidate.model
        super().__init__(
            f"{model.provider_id} ({model.id}) failed: {cause.message}", error_class=str(cause.error_class)
        )
        self.candidate = candidate
        self.cause = cause


class DispatchOptions(StageOptions):
    pass


class Dispatch:
    def __init__(self, services: Services, options: DispatchOptions) -> None:
        self._services = services
        self._count_attempt = services.metrics.count_attempt

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        services = self._services
        decision = ctx.decision
        assert decision is not None, "policy runs before dispatch (checked when the pipeline is built)"
        candidate = ctx.target or decision.candidates[0]
        model = candidate.model
        adapter = services.adapters.get(model.provider_id)
        settings = services.settings
        try:
            if adapter is None:
                raise ProviderError(ErrorClass.FATAL, f"provider {model.provider_id} is no longer configured")
            services.health.begin_call(model.provider_id)  # a half-open breaker's trial call
            if ctx.sink is not None:
                result = await relay_stream(
                    ctx,
                    adapter,
                    candidate,
                    sink=ctx.sink,
                    first_token_secs=settings.stream_first_token_secs,
                    attempt_timeout=settings.provider_timeout_secs,
                    idle_timeout=settings.stream_idle_secs,
                    on_malformed=services.metrics.stream_malformed.labels(provider=model.provider_id).inc,
                )
            elif ctx.request.operation == "embeddings":
                # policy filters these out; this guards a provider swapped since then
                if not isinstance(adapter, EmbeddingProvider):
                    raise ProviderError(ErrorClass.FATAL, f"provider {model.provider_id} does not support embeddings")
                result = await adapter.embed(
                    model.sent_as,
                    ctx.request.parameters,
                    request_id=ctx.request_id,
                    deadline=decision.deadline,
                    attempt_timeout=settings.provider_timeout_secs,
                )
            else:
                result = await adapter.send(
                    model.sent_as,  # the provider's name for it; responses keep naming model.id
                    ctx.request,
                    request_id=ctx.request_id,
                    deadline=decision.deadline,
                    attempt_timeout=settings.provider_timeout_secs,
                )
        except ProviderError as exc:  # nothing reached the client: escalate may try another candidate
            self._failed(ctx, model, exc.error_class, exc.message, exc.retry_after)
            raise DispatchFailed(candidate, exc) from None
        except StreamBroken as exc:  # part of the answer reached the client: no failover
            self._failed(ctx, model, ErrorClass(exc.cause_class), exc.message, None)
            raise
        services.health.success(model.provider_id, result.latency_ms)
        self._count_attempt(model.provider_id, "ok")
        ctx.attempts.append(Attempt(model.id, model.provider_id, "", "", result.latency_ms))
        ctx.served_by = candidate
        ctx.charge(candidate, result)
        await call_next(ctx)

    def _failed(
        self, ctx: RequestContext, model: ModelInfo, error_class: ErrorClass, message: str, retry_after: float | None
    ) -> None:
        self._services.health.error(
            model.provider_id, message, retry_after=retry_after if error_class is ErrorClass.RATE_LIMITED else None
        )
        self._count_attempt(model.provider_id, str(error_class))
        ctx.attempts.append(Attempt(model.id, model.provider_id, str(error_class), message, 0.0))


SPEC = StageSpec(
    name="dispatch",
    factory=Dispatch,
    options=DispatchOptions,
    summary="Sends the request to the chosen model's provider adapter.",
    required=True,
    after=("policy",),
)
