"""Key-accounting sink: per-request bookkeeping for API keys and the vault (a few dict updates).

The key's month-to-date spend (what its monthly budget is checked against: a stream that ended early is
charged what it cost too), the settlement of its tokens-per-minute charge, and vault activity (a request
served with a vault-held key keeps the vault from auto-locking). The request's budget reservation is
released here, in the same step that adds its cost to the spend, so the cost is never counted twice nor
missing from both (store/reservations.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pipeline.context import RequestContext
from pipeline.types import RequestRecord
from store.key_ledger import KeyLedger
from store.reservations import Reservations
from store.vault import Vault

__all__ = ["KeyAccountingSink", "TokenSettler"]


class TokenSettler(Protocol):
    """Settles a request's tokens-per-minute charge: `KeyLimits`, or the shared gate when scaled out."""

    def settle(self, request_id: str, actual_tokens: int, tpm: int) -> None: ...


class KeyAccountingSink:
    name = "key_accounting"

    def __init__(
        self,
        ledger: KeyLedger,
        limits: TokenSettler,
        vault: Vault,
        vault_backed: Callable[[], frozenset[str]],
        reservations: Reservations,
    ) -> None:
        self._ledger = ledger
        self._reservations = reservations
        self._limits = limits
        self._vault = vault
        self._vault_backed = vault_backed  # swapped on every config reload: read at call time

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        key = ctx.api_key
        try:
            if key is not None and record.cost_usd:
                self._ledger.add_cost(key.id, record.cost_usd, record.timestamp)
        finally:
            self._reservations.release(record.request_id)
        if key is not None and key.rate_limit_tpm:
            self._limits.settle(record.request_id, record.input_tokens + record.output_tokens, key.rate_limit_tpm)
        if record.provider_id in self._vault_backed():
            self._vault.touch()
