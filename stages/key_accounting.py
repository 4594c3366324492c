"""Per-request bookkeeping for API keys and the vault, run once per request record (a few dict updates):
the key's month-to-date spend, the settlement of its tokens-per-minute charge, and vault activity (a
request served with a vault-held key keeps the vault from auto-locking)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.types import ApiKeyInfo, RequestRecord

if TYPE_CHECKING:
    from pipeline.services import Services


def account(services: Services, record: RequestRecord, key: ApiKeyInfo | None) -> None:
    if key is not None:
        if record.cost_usd:
            services.key_ledger.add_cost(key.id, record.cost_usd, record.timestamp)
        if key.rate_limit_tpm:
            services.key_limits.settle(
                record.request_id, record.input_tokens + record.output_tokens, key.rate_limit_tpm
            )
    if record.provider_id in services.vault_backed:
        services.vault.touch()
