"""Admin API for providers: GET/POST /providers, PATCH/DELETE /providers/{id}.

A provider's key is never returned. ``cred_store`` says where it is kept: ``vault`` (sealed under the vault
password), ``sealed`` (with the data directory's key file, before a vault is set up or when it is disabled)
or ``none``. Sent on a write, it states where the key must be kept afterwards; a write the vault's current
state cannot honour is refused with a 400 and changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field

from adapters.base import normalize_base_url
from adapters.dns_check import DNS_TIMEOUT_SECS, unresolvable_hosts
from adapters.registry import provider_type_names
from admin_ui.common import Body, IdStr, commit, get_services, read_model
from admin_ui.params import page
from pipeline.errors import DiscoveryFailed, InvalidRequest, NotFound
from pipeline.services import Services
from pipeline.types import ProviderInfo
from store.vault import Vault

__all__ = [
    "CredStore",
    "create_provider",
    "delete_provider",
    "key_to_write",
    "list_providers",
    "patch_provider",
]

ProviderType = Literal[provider_type_names()]  # type: ignore[valid-type]  # every type the registry knows
CredStore = Literal["vault", "sealed", "none"]
BaseUrl = Annotated[str, Field(pattern=r"^https?://[^\s/]+")]


class ProviderIn(Body):
    id: IdStr
    type: ProviderType = "openai"
    base_url: BaseUrl
    enabled: bool = True
    cred_store: CredStore | None = None
    api_key: str | None = Field(None, repr=False)
    autoload_models: bool = False


class ProviderPatch(Body):
    type: ProviderType | None = None
    base_url: BaseUrl | None = None
    enabled: bool | None = None
    cred_store: CredStore | None = None
    api_key: str | None = Field(None, repr=False)
    autoload_models: bool | None = None


async def list_providers(request: web.Request) -> web.Response:
    services = get_services(request)
    stored = await services.config.call(services.config.list_providers)
    shown, paging = page(request, stored)
    items = [_view(services, record) for record in shown]
    return web.json_response({"items": items, **paging, "types": list(provider_type_names())})


async def create_provider(request: web.Request) -> web.Response:
    body = await read_model(request, ProviderIn)
    services = get_services(request)
    await _check_dns(services, body.base_url)
    existing = await services.config.call(services.config.provider_record, body.id)  # POST replaces a provider
    current = existing["cred_store"] if existing is not None else "none"
    api_key = key_to_write(body.cred_store, body.api_key, current, services.config.key_home, services.vault)
    provider = ProviderInfo(
        body.id, body.type, normalize_base_url(body.base_url), body.enabled, autoload_models=body.autoload_models
    )
    view = await _save(request, provider, api_key)
    answer = {"ok": True, "cred_store": view["cred_store"], "provider": view, **await _autoload(services, provider)}
    return web.json_response(answer, status=201)


async def patch_provider(request: web.Request) -> web.Response:
    provider_id = request.match_info["id"]
    body = await read_model(request, ProviderPatch)
    services = get_services(request)
    current = await services.config.call(services.config.provider_record, provider_id)
    if current is None:
        raise NotFound(f"provider {provider_id!r} not found")
    if body.base_url:
        await _check_dns(services, body.base_url)
    api_key = key_to_write(
        body.cred_store, body.api_key, current["cred_store"], services.config.key_home, services.vault
    )
    updated = ProviderInfo(
        provider_id,
        body.type or current["type"],
        normalize_base_url(body.base_url) if body.base_url else current["base_url"],
        current["enabled"] if body.enabled is None else body.enabled,
        autoload_models=current["autoload_models"] if body.autoload_models is None else body.autoload_models,
    )
    view = await _save(request, updated, api_key)
    return web.json_response({"ok": True, "provider": view, **await _autoload(services, updated)})


async def delete_provider(request: web.Request) -> web.Response:
    services = get_services(request)
    deleted = await commit(request, services.config.delete_provider, request.match_info["id"])
    return web.json_response({"ok": True, "deleted": deleted})


def key_to_write(requested: CredStore | None, api_key: str | None, current: str, home: str, vault: Vault) -> str | None:
    """The ``api_key`` argument for the store (None keeps the stored key, "" removes it), or a 400 when
    ``cred_store`` asks for something the vault's state cannot give. ``home`` is where keys go now (the config
    store's ``key_home``); without ``cred_store`` the key goes there (a locked vault refuses it later, with
    nothing written)."""
    if requested is None:
        return api_key
    if requested == "none":
        if api_key:
            raise _refuse("cred_store 'none' keeps no key: leave api_key out")
        return ""
    if api_key == "":
        raise _refuse(f"cred_store {requested!r} keeps a key: api_key must not be empty")
    if api_key is None and current == requested:
        return None  # already kept there: nothing to write, even while the vault is locked
    if requested == "vault" and not vault.enabled:
        raise _refuse(
            "cred_store 'vault': the vault is disabled (TOKENHUB_VAULT_ENABLED=false); keys are sealed with the"
            " data directory's key file (cred_store 'sealed')"
        )
    if requested == "vault" and home != "vault":
        raise _refuse(
            "cred_store 'vault': the vault is not set up yet; POST /admin/v1/vault/unlock sets its password"
            " and moves the stored provider keys into it"
        )
    if requested == "sealed" and home != "sealed":
        raise _refuse("cred_store 'sealed': the vault is set up, so provider keys are kept in it (cred_store 'vault')")
    if requested == "vault" and not vault.unlocked:
        raise _refuse("cred_store 'vault': the vault is locked; unlock it (POST /admin/v1/vault/unlock) first")
    if api_key is None:
        raise _refuse(f"cred_store {requested!r}: no key is kept there for this provider; send its api_key")
    return api_key


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, field="cred_store")


async def _save(request: web.Request, provider: ProviderInfo, api_key: str | None) -> dict[str, Any]:
    services = get_services(request)
    await commit(request, services.config.upsert_provider, provider, api_key=api_key)
    record = await services.config.call(services.config.provider_record, provider.id)
    if record is None:  # deleted by a concurrent request between the two calls
        raise NotFound(f"provider {provider.id!r} not found")
    return _view(services, record)


async def _check_dns(services: Services, base_url: str) -> None:
    """With TOKENHUB_PROVIDER_DNS_CHECK on, a base URL whose host does not resolve is refused."""
    if not services.settings.provider_dns_check:
        return
    if hosts := await unresolvable_hosts(base_url):
        raise InvalidRequest(
            f"base_url: host {hosts[0]!r} does not resolve (looked up for {DNS_TIMEOUT_SECS:g} s; the DNS check is"
            " on: TOKENHUB_PROVIDER_DNS_CHECK)",
            field="base_url",
        )


async def _autoload(services: Services, provider: ProviderInfo) -> dict[str, Any]:
    """An autoload provider's models, listed now: what changed, or why listing failed (the write stands)."""
    if not (provider.autoload_models and provider.enabled):
        return {}
    try:
        synced = await services.autoloader.load(provider.id)
    except DiscoveryFailed as exc:
        return {"autoload": {"error": exc.message}}
    return {"autoload": {"added": list(synced.added), "removed": list(synced.removed), "skipped": list(synced.skipped)}}


def _view(services: Services, record: dict[str, Any]) -> dict[str, Any]:
    """The stored record; a provider also configured from the environment has that key too. `connects_to`
    shows a base URL redirected at connection time (localhost inside a container: adapters/container.py)."""
    live = services.providers.get(record["id"])
    if live is not None and live.base_url != record["base_url"]:
        record = {**record, "connects_to": live.base_url}
    if record["id"] in services.env_providers:
        return {**record, "has_api_key": True, "source": "env"}
    return {**record, "source": "store"}
