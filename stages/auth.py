"""auth: admits a request for its API key. The key must exist, be enabled, not be expired and carry the
endpoint's scope (401 / 403); its month-to-date spend must be under its monthly budget and its
per-minute request and token limits not exhausted (429); and the request's content must fit the input
caps (400). Every pipeline must contain this stage, so these checks hold for every endpoint.

The identity checks (`check_key`) need no body, so the HTTP edge also runs them before it reads one;
`key_budget_left` is what policy filters models by, so no model the key cannot afford is dispatched; what
requests in flight have reserved (store/reservations.py) counts as spent in both checks."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pipeline.context import RequestContext
from pipeline.errors import BudgetExceeded, Forbidden, RateLimited, Unauthorized
from pipeline.input_limits import check_content
from pipeline.metrics import Metrics
from pipeline.stage import Next, StageOptions, StageSpec
from pipeline.types import ApiKeyInfo
from stages.budget_bound import ReservationBound
from stages.scoring import estimate_input_tokens
from store.key_ledger import KeyLedger
from store.reservations import EPSILON_USD, BudgetAccount, Reservations, key_account_id

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["SPEC", "Auth", "budget_refused", "check_key", "key_account", "key_budget_left", "key_in_force"]


def key_in_force(presented: bool, key: ApiKeyInfo | None, now: float) -> ApiKeyInfo:
    """The presented key's record when it is usable at all: 401 missing, unknown, disabled or expired."""
    if not presented:
        raise Unauthorized("authorization required: send 'Authorization: Bearer tokenhub_...'")
    if key is None or not key.enabled:
        raise Unauthorized("invalid api key")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized("api key expired")
    return key


def check_key(ctx: RequestContext, now: float) -> ApiKeyInfo:
    """The request's key when it may use this endpoint: `key_in_force`, and 403 without the endpoint's scope."""
    key = key_in_force(ctx.presented_key, ctx.api_key, now)
    if key.scopes and ctx.scope not in key.scopes:
        raise Forbidden(f"insufficient scope: this endpoint needs '{ctx.scope}'")
    return key


def key_account(ledger: KeyLedger, key: ApiKeyInfo | None, now: float) -> BudgetAccount | None:
    """The key's monthly budget as a reservation account; None when it has no budget."""
    if key is None or key.monthly_budget_usd <= 0:
        return None
    return BudgetAccount(key_account_id(key.id), key.monthly_budget_usd, ledger.spent(key.id, now))


def key_budget_left(ledger: KeyLedger, key: ApiKeyInfo | None, now: float, reservations: Reservations) -> float:
    """What the key may still spend this month, in-flight reservations counted as spent (0.0 = it has no
    monthly budget); 429 once it is spent or reserved."""
    account = key_account(ledger, key, now)
    if account is None:
        return 0.0
    reserved = reservations.reserved(account.id)
    spent = account.spent_usd + reserved
    if spent >= account.limit_usd:
        raise BudgetExceeded(budget_usd=account.limit_usd, spent_usd=spent, reserved_usd=reserved)
    return account.limit_usd - spent + EPSILON_USD  # float noise of summed holds must not exclude an exact fit


def budget_refused(ctx: RequestContext, metrics: Metrics, budget: str, why: str) -> None:
    """Count a budget refusal (`budget`: "key" or "plan") and say why in the request's routing reason."""
    metrics.budget_refusals.labels(budget).inc()
    ctx.routing_reason = f"budget-refused ({budget}): {why}"


class AuthOptions(StageOptions):
    pass


class Auth:
    def __init__(self, services: Services, options: AuthOptions) -> None:
        self._services = services
        self._clock = time.time
        settings = services.settings
        self._max_chars = settings.max_content_chars
        self._max_total_chars = settings.max_total_content_chars
        self._bound = ReservationBound(settings.budget_reserve_output_tokens)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        now = self._clock()
        key = check_key(ctx, now)
        services = self._services
        request = ctx.request
        check_content(
            request.messages, max_chars=self._max_chars, max_total_chars=self._max_total_chars, field="messages"
        )
        try:
            key_budget_left(services.key_ledger, key, now, services.reservations)
        except BudgetExceeded as exc:
            budget_refused(ctx, services.metrics, "key", exc.message)
            raise
        estimate = lambda: estimate_input_tokens(request.messages, request.estimated_input_tokens)  # noqa: E731
        if key.rate_limit_rpm or key.rate_limit_tpm:
            if services.shared_gate is not None:  # taken in Redis with the reservation (stages/shared_gate.py)
                wait, what = services.shared_gate.defer_key(ctx, key, estimate)
            else:
                wait, what = services.key_limits.admit(key, ctx.request_id, estimate)
            if wait:
                limit = key.rate_limit_rpm if what == "requests" else key.rate_limit_tpm
                raise RateLimited(f"api key rate limit exceeded: {limit} {what} per minute", retry_after=wait)
        services.key_ledger.touch(key.id, now)  # last used: flushed to SQLite in batches
        if services.shared_gate is not None:  # its limits (and budget hold) go to Redis now, to overlap routing
            bound = lambda: self._bound(services.snapshot.models, estimate(), request.parameters)  # noqa: E731
            services.shared_gate.send_early(ctx, key, bound)
        await call_next(ctx)


SPEC = StageSpec(
    name="auth",
    factory=Auth,
    options=AuthOptions,
    summary=(
        "API key (Bearer or x-api-key): 401 when missing, unknown, disabled or expired; 403 without scope;"
        " 429 over the key's monthly budget or per-minute limits; 400 over the content caps."
    ),
    required=True,
    after=("record",),
)
