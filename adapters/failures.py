"""A provider's failed answer as one error class (design: `classify` is written once).

Every provider type says the same things in different words: "not now" (rate limited), "I am broken"
(5xx: transient), "the input does not fit" (context overflow), "no" (fatal). A type describes its words as
`FailureRules`; the mapping itself lives here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adapters.errors import ProviderError, excerpt
from adapters.http import parse_retry_after
from pipeline.types import ErrorClass

__all__ = ["QUOTA_PHRASES", "FailureRules"]

_NO_STATUSES: frozenset[int] = frozenset()
# What providers (and the gateways in front of them) say when the account's money is used up: OpenAI's
# `insufficient_quota` (a 429 that waiting does not cure), LiteLLM's `budget_exceeded` (400), Anthropic's
# "credit balance is too low" (400), a 402 Payment Required. Matched case-insensitively on any 4xx body.
QUOTA_PHRASES = (
    "insufficient_quota",
    "budget_exceeded",
    "budget has been exceeded",
    "credit balance is too low",
    "exceeded your current quota",
)


@dataclass(frozen=True, slots=True)
class FailureRules:
    """How one provider type's non-200 answers map to error classes (providers.md §3-§5).

    A 4xx whose body says the account's quota or credit is used up (`quota_phrases`, or a 402) is
    BUDGET_EXCEEDED first, even on a 429: waiting does not cure it, the model is disabled for a while.
    Otherwise the status decides: a rate-limit status is RATE_LIMITED, any other 5xx TRANSIENT (both keep the
    Retry-After). Below 500 the body decides: an overflow phrase (matched case-insensitively), or
    "max_tokens ... too large" on a status in `budget_overflow_statuses`, is CONTEXT_OVERFLOW (a model with a
    larger window may take it); everything else is FATAL."""

    overflow_phrases: tuple[str, ...]  # lower case
    rate_limited_statuses: frozenset[int] = frozenset({429})
    budget_overflow_statuses: frozenset[int] = _NO_STATUSES
    quota_phrases: tuple[str, ...] = QUOTA_PHRASES  # lower case

    def out_of_quota(self, text: str, status: int | None = None) -> bool:
        """Whether `text` says the account's quota or credit is used up (`status` None: an in-stream error)."""
        if status == 402:
            return True
        if status is not None and not 400 <= status < 500:
            return False
        lowered = text.lower()
        return any(phrase in lowered for phrase in self.quota_phrases)

    def overflows(self, text: str, status: int | None = None) -> bool:
        """Whether `text` says the input does not fit (`status` None: an in-stream error, no budget rule)."""
        lowered = text.lower()
        if any(phrase in lowered for phrase in self.overflow_phrases):
            return True
        return status in self.budget_overflow_statuses and "max_tokens" in lowered and "too large" in lowered

    def classify(
        self, provider_type: str, status: int, body: str, headers: Mapping[str, str], secret: str
    ) -> ProviderError:
        retry_after = None
        if self.out_of_quota(body, status):
            error_class = ErrorClass.BUDGET_EXCEEDED
        elif status in self.rate_limited_statuses:
            error_class = ErrorClass.RATE_LIMITED
            retry_after = parse_retry_after(headers.get("Retry-After"))
        elif status >= 500:
            error_class = ErrorClass.TRANSIENT
            retry_after = parse_retry_after(headers.get("Retry-After"))
        elif self.overflows(body, status):
            error_class = ErrorClass.CONTEXT_OVERFLOW
        else:
            error_class = ErrorClass.FATAL
        return ProviderError(
            error_class,
            f"{provider_type} HTTP {status}: {excerpt(body, secret)}",
            status=status,
            retry_after=retry_after,
            secret=secret,
        )
