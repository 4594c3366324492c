"""Typed errors: each maps to one HTTP status and one JSON body with the request id."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

__all__ = [
    "BackupFailed",
    "BudgetExceeded",
    "ClientDisconnected",
    "ConfigFileInvalid",
    "Conflict",
    "DeadlineExceeded",
    "DiscoveryFailed",
    "Forbidden",
    "IdempotencyInProgress",
    "IdempotencyKeyReused",
    "InternalError",
    "InvalidRequest",
    "NoEligibleModel",
    "NotFound",
    "OutputSchemaMismatch",
    "PayloadTooLarge",
    "PipelineConfigError",
    "PlanBudgetReserved",
    "PlanPipelineMissing",
    "QueryError",
    "RateLimited",
    "RequestCancelled",
    "SharedBudgetUnavailable",
    "StreamBroken",
    "StreamTooLarge",
    "TokenHubError",
    "Unauthorized",
    "UpstreamFailed",
    "UpstreamRejected",
    "VaultLocked",
    "VaultRefused",
    "invalid_request",
]


class TokenHubError(Exception):
    """Base of every error a client may see. Never carries a traceback or a secret to the client."""

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = dict(headers or {})

    def body(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message, "request_id": request_id}
        if self.field:
            error["field"] = self.field
        error.update(self.extra())
        return {"error": error}

    def extra(self) -> dict[str, Any]:
        return {}


class InvalidRequest(TokenHubError):
    status = 400
    type = "invalid_request"


class ConfigFileInvalid(InvalidRequest):
    """A configuration file that cannot be applied (nothing was changed): each problem with its line."""

    def __init__(self, file: str, problems: list[dict[str, Any]]) -> None:
        first = problems[0]
        where = f"line {first['line']}: " if first.get("line") else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{file}: {where}{first['path'] or 'file'}: {first['message']}{more}", field=first["path"])
        self.file = file
        self.problems = problems

    def extra(self) -> dict[str, Any]:
        return {"file": self.file, "problems": self.problems}

    def describe(self) -> str:
        """Every problem, one a line, for a terminal or a log."""
        lines = [f"{self.file}: the configuration is invalid, nothing was changed:"]
        for p in self.problems:
            where = f"line {p['line']}, column {p['column']}" if p.get("line") else "file"
            lines.append(f"  {where}: {p['path'] or '(top level)'}: {p['message']}")
        return "\n".join(lines)


class PayloadTooLarge(TokenHubError):
    status = 413
    type = "payload_too_large"


class Unauthorized(TokenHubError):
    status = 401
    type = "unauthorized"


class Forbidden(TokenHubError):
    status = 403
    type = "forbidden"


class NotFound(TokenHubError):
    status = 404
    type = "not_found"


class Conflict(TokenHubError):
    status = 409
    type = "conflict"


class RateLimited(TokenHubError):
    status = 429
    type = "rate_limited"

    def __init__(self, message: str, *, retry_after: float):
        seconds = max(1, int(-(-retry_after // 1)))  # ceil, at least 1 s
        super().__init__(message, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds

    def extra(self) -> dict[str, Any]:
        return {"retry_after_secs": self.retry_after}


class NoEligibleModel(TokenHubError):
    """No registered model satisfies the request. 422 when the request's own constraints exclude every
    model (retrying will not help), 503 when providers are missing or down (retrying later may)."""

    type = "no_eligible_model"

    def __init__(self, message: str, *, client_constraint: bool, exclusions: dict[str, str] | None = None):
        super().__init__(message)
        self.status = 422 if client_constraint else 503
        self.exclusions = dict(exclusions or {})

    def extra(self) -> dict[str, Any]:
        return {"exclusions": self.exclusions} if self.exclusions else {}


class VaultLocked(NoEligibleModel):
    """503: the models that could serve the request belong to providers whose key waits in the locked
    vault (an admin unlocks it: POST /admin/v1/vault/unlock). Also refuses admin writes that need it."""

    type = "vault_locked"

    def __init__(self, message: str, *, exclusions: dict[str, str] | None = None):
        super().__init__(message, client_constraint=False, exclusions=exclusions)


class BudgetExceeded(TokenHubError):
    """429: the API key's month-to-date spend has reached its monthly budget, or (`too_costly`) what is left
    of it cannot cover this request's estimated cost on any model that could serve it."""

    status = 429
    type = "monthly_budget_exceeded"

    def __init__(self, *, budget_usd: float, spent_usd: float, too_costly: bool = False, reserved_usd: float = 0.0):
        # `spent_usd` is recorded spend plus `reserved_usd`, what requests in flight hold (store/reservations.py)
        held = f" (${reserved_usd:.6f} of it reserved by requests in flight)" if reserved_usd > 0 else ""
        if too_costly:
            reason = (
                f"this API key has spent ${spent_usd:.6f}{held} and has ${budget_usd - spent_usd:.6f} left of its"
                f" {_usd(budget_usd)} budget for the current UTC calendar month, less than this request's"
                " estimated cost on any model that could"
                " serve it (a lower max_tokens or n lowers the estimate)"
            )
        else:
            reason = (
                f"this API key has spent ${spent_usd:.6f}{held} of its {_usd(budget_usd)} budget"
                " for the current UTC calendar month"
            )
        super().__init__(f"monthly budget exceeded: {reason}; an admin can raise the budget or reset the spend")
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd

    def extra(self) -> dict[str, Any]:
        return {"budget_usd": self.budget_usd, "spent_usd": round(self.spent_usd, 6)}


class PlanBudgetReserved(TokenHubError):
    """A /v1/plan step whose worst-case cost no longer fits in what the plan's budget has left once the steps
    running beside it have reserved theirs. The step runner turns it into the plan's graceful stop."""

    status = 429
    type = "plan_budget_exceeded"


class IdempotencyKeyReused(TokenHubError):
    """422: an Idempotency-Key sent again (same API key, within the window) with another body or endpoint."""

    status = 422
    type = "idempotency_key_reused"


class IdempotencyInProgress(TokenHubError):
    """409: the first request with this Idempotency-Key is still running after the repeat's bounded wait."""

    status = 409
    type = "idempotency_in_progress"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def _usd(amount: float) -> str:
    """Dollars with cents, or with micro-dollars for budgets under a dollar (a $0.0025 budget is not $0.00)."""
    return f"${amount:.2f}" if amount >= 1 else f"${amount:.6f}"


class UpstreamFailed(TokenHubError):
    """Every candidate the chain tried failed; carries the last provider error class."""

    status = 502
    type = "upstream_error"

    def __init__(self, message: str, *, error_class: str):
        super().__init__(message)
        self.error_class = error_class

    def extra(self) -> dict[str, Any]:
        return {"error_class": self.error_class}


class StreamBroken(UpstreamFailed):
    """The upstream failed after the first token reached the client: no failover is possible any more, so
    the client's stream ends with an error event (and no end-of-stream marker). Recorded as `stream_error`;
    `cause_class` is the provider error's class (for health and attempt metrics)."""

    type = "stream_error"

    def __init__(self, message: str, *, cause_class: str):
        super().__init__(message, error_class="stream_error")
        self.cause_class = cause_class


class StreamTooLarge(StreamBroken):
    """The stream carried more than TOKENHUB_MAX_STREAM_BYTES: it ends with the error event (not rescued)."""

    def __init__(self, limit: int):
        super().__init__(
            f"the stream passed its size cap of {limit} bytes (TOKENHUB_MAX_STREAM_BYTES)", cause_class="fatal"
        )


class ClientDisconnected(TokenHubError):
    """The client went away mid-response; recorded (nginx's 499), never answered."""

    status = 499
    type = "client_disconnected"


class PipelineConfigError(ValueError):
    """A pipeline definition or stage option is invalid; raised when a pipeline is saved or built.

    ``index`` is the position of the step at fault in the definition as submitted (None when the problem is
    the pipeline as a whole, such as a missing required stage) and ``stage`` its name when known, so an
    editor can show the error next to that step."""

    def __init__(self, message: str, *, index: int | None = None, stage: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.stage = stage


class OutputSchemaMismatch(TokenHubError):
    """The answer does not satisfy the client's output_schema: the models answered, the contract failed."""

    status = 502
    type = "output_schema_mismatch"
    error_class = "output_schema_validation_failed"


class SharedBudgetUnavailable(TokenHubError):
    """503: replicas share budgets through Redis, Redis is unreachable, and budgets fail closed
    (TOKENHUB_SHARED_BUDGET_ON_OUTAGE=closed): a key with a monthly budget cannot be checked against it."""

    status = 503
    type = "shared_budget_unavailable"

    def __init__(self) -> None:
        super().__init__(
            "the shared budget store (Redis) is unreachable, so this API key's monthly budget cannot be checked;"
            " requests from keys with a budget are refused until it answers again (retry shortly)",
            headers={"Retry-After": "1"},
        )


class PlanPipelineMissing(TokenHubError):
    status = 503
    type = "plan_unavailable"


class RequestCancelled(TokenHubError):
    """The request's task was cancelled (client gone, server stopping): recorded, never answered."""

    status = 499
    type = "cancelled"


class InternalError(TokenHubError):
    status = 500
    type = "internal_error"


class UpstreamRejected(TokenHubError):
    """The provider refused the request itself (invalid request, content policy): the client's to fix."""

    type = "upstream_rejected"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class DeadlineExceeded(TokenHubError):
    status = 504
    type = "deadline_exceeded"


class BackupFailed(TokenHubError):
    """503: a backup could not be taken now (e.g. the analytics database stayed busy); nothing was kept."""

    status = 503
    type = "backup_failed"


class QueryError(TokenHubError):
    status = 400

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message, field="sql")
        self.type = kind


class DiscoveryFailed(TokenHubError):
    """502: the provider could not be asked, or its answer was not a model list."""

    status = 502
    type = "discovery_failed"

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status

    def extra(self) -> dict[str, Any]:
        return {"upstream_status": self.upstream_status} if self.upstream_status is not None else {}


class VaultRefused(TokenHubError):
    """A vault refusal as an HTTP error: the refusal's kind is the error type."""

    def __init__(self, kind: str, message: str, *, status: int) -> None:
        super().__init__(f"unlock failed: {message}" if kind == "unlock_failed" else message)
        self.type = kind
        self.status = status


def invalid_request(exc: ValidationError) -> InvalidRequest:
    """The first validation error as a 400 naming the field."""
    err = exc.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return InvalidRequest(f"malformed JSON: {err['ctx'].get('error', 'invalid')}", field="body")
    if err["type"] == "model_type" and not err["loc"]:
        return InvalidRequest("the body must be a JSON object", field="body")
    field = ".".join(str(part) for part in err["loc"]) or "body"
    return InvalidRequest(f"{field}: {err['msg']}", field=field)
