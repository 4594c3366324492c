"""`tokenhub config export`: the stored configuration as a configuration file (docs/config-file.md) that
`tokenhub config check` accepts and that, applied to an empty data directory, exports the same again.

Secrets never leave: a provider's key becomes ``api_key_env: TOKENHUB_PROVIDER_<ID>_KEY`` (set that variable
where the file is applied), an API key only its definition (name, tenant, scopes, budget, limits).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml

from pipeline.settings import provider_key_variable
from store import api_keys
from store.config_store import ConfigStore

__all__ = ["export_config", "render"]

HEADER = (
    "# TokenHub configuration (tokenhub config export). Apply it with TOKENHUB_CONFIG_FILE; provider keys\n"
    "# are read from the environment variables named by api_key_env. docs/config-file.md describes the format.\n"
)


def export_config(store: ConfigStore) -> tuple[dict[str, Any], list[str]]:
    """(the file's data, notes for the operator). Runs on the store's thread, or offline on an opened store."""
    notes: list[str] = []
    providers = []
    for record in store.list_providers():
        provider = {k: record[k] for k in ("id", "type", "base_url", "enabled")}
        if record["has_api_key"]:
            provider["api_key_env"] = provider_key_variable(record["id"])
        providers.append(provider)
    models = [
        {
            "id": m.id,
            "provider_id": m.provider_id,
            "weight": m.weight,
            "max_context_tokens": m.max_context_tokens,
            "max_output_tokens": m.max_output_tokens,
            "input_per_1k": m.input_per_1k,
            "output_per_1k": m.output_per_1k,
            "enabled": m.enabled,
            "kind": m.kind,
            "upstream_model": m.upstream_model,
            "fallbacks": list(m.fallbacks),
            # only when an admin set it: absent means the provider type's default
            **({} if m.supports_prefill is None else {"supports_prefill": m.supports_prefill}),
            **({"capabilities": sorted(m.capabilities)} if m.capabilities is not None else {}),
        }
        for m in store.list_models()
    ]
    aliases = [
        {
            "name": a.name,
            "variants": [{"model_id": v.model_id, "weight": v.weight} for v in a.variants],
            "enabled": a.enabled,
            "sticky_by": a.sticky_by,
            "fallbacks": list(a.fallbacks),
        }
        for a in store.list_aliases()
    ]
    snapshot = store.load_snapshot()
    routing = {
        "default_mode": snapshot.routing.mode,
        "default_max_budget_usd": snapshot.routing.max_budget_usd,
        "default_max_latency_ms": snapshot.routing.max_latency_ms,
        "reward": snapshot.routing.reward.model_dump() if snapshot.routing.reward else None,
    }
    tenants: list[dict[str, Any]] = []
    for tenant in store.list_tenants():
        entry: dict[str, Any] = {"id": tenant.id, "name": tenant.name}
        if tenant.id in snapshot.pipelines:
            entry["pipeline"] = snapshot.pipelines[tenant.id]
        tenants.append(entry)
    keys: dict[str, dict[str, Any]] = {}
    for record in sorted(api_keys.list_page(store.db, 1_000_000, 0)[0], key=lambda r: (r["created_at"], r["id"])):
        if record["name"] in keys:
            notes.append(
                f"API key {record['name']!r} ({record['id']}): another key has this name; only the first is exported"
            )
            continue
        keys[record["name"]] = {
            "name": record["name"],
            "tenant_id": record["tenant_id"],
            "scopes": record["scopes"],
            "monthly_budget_usd": record["monthly_budget_usd"],
            "rate_limit_rpm": record["rate_limit_rpm"],
            "rate_limit_tpm": record["rate_limit_tpm"],
        }
    data = {
        "providers": providers,
        "models": models,
        "aliases": aliases,
        "routing": routing,
        "tenants": tenants,
        "api_keys": list(keys.values()),
    }
    return data, notes


def render(data: dict[str, Any], fmt: Literal["yaml", "json"]) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
