"""The one error type adapters raise; its message is safe to show a client."""

from __future__ import annotations

from pipeline.types import ErrorClass

__all__ = ["EXCERPT_LIMIT", "REDACTED", "ProviderError", "excerpt", "scrub"]

REDACTED = "[redacted]"
EXCERPT_LIMIT = 300


def scrub(text: str, secret: str) -> str:
    """Remove every occurrence of the secret (upstreams sometimes echo the key they were sent)."""
    return text.replace(secret, REDACTED) if secret and secret in text else text


def excerpt(text: str, secret: str = "", limit: int = EXCERPT_LIMIT) -> str:
    """A scrubbed, whitespace-collapsed, truncated view of an upstream body for error messages."""
    # Scrub before any cut so a cut can never leave a partial key behind; the pre-cut keeps huge bodies cheap.
    text = " ".join(scrub(text, secret)[: limit * 4].split())
    return text if len(text) <= limit else text[:limit] + "..."


class ProviderError(Exception):
    """A classified upstream failure. `status` is None for transport errors (timeouts, refused, reset)."""

    def __init__(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        secret: str = "",
        retryable: bool = True,
    ) -> None:
        message = scrub(message, secret)
        super().__init__(message)
        self.error_class = error_class
        self.status = status
        self.retry_after = retry_after
        self.message = message
        # False for a provider that accepted the call and then said nothing: retrying the silent route
        # only burns the deadline, so the router fails over at once instead.
        self.retryable = retryable

    @property
    def rejected(self) -> bool:
        """The provider refused the request on its merits (invalid request, content policy): another provider
        would most likely refuse it too, so the client gets the error instead of a failover."""
        return self.error_class is ErrorClass.FATAL and self.status in (400, 413, 422)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"ProviderError({self.error_class.value}, status={self.status}, "
            f"retry_after={self.retry_after}, message={self.message!r})"
        )
