"""Admin API for model aliases: a name clients send as their model that TokenHub maps to weighted variants.

GET/POST /aliases, GET/PUT/PATCH/DELETE /aliases/{name}. Written to SQLite, then the snapshot is swapped,
so the next request resolves the new mapping (stages/aliases.py picks the variant).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field

from admin_ui.common import Body, FallbackIds, IdStr, commit, get_services, read_model
from admin_ui.params import page
from pipeline.errors import Conflict, InvalidRequest, NotFound
from pipeline.modes import AUTO_MODELS
from pipeline.services import Services
from pipeline.types import AliasInfo, AliasVariant, ModelInfo

__all__ = [
    "AliasIn",
    "alias_from_body",
    "alias_view",
    "check_alias",
    "check_alias_against",
    "create_alias",
    "delete_alias",
    "get_alias",
    "list_aliases",
    "patch_alias",
    "put_alias",
]

MAX_NAME = 128  # as IdStr
StickyBy = Literal["", "request", "api_key", "round_robin"]  # pipeline.types.ALIAS_STICKY_BY


class VariantIn(Body):
    model_id: IdStr
    weight: Annotated[int, Field(ge=1, le=1_000_000)] = 1


Variants = Annotated[list[VariantIn], Field(min_length=1, max_length=64)]


class AliasBody(Body):
    """PUT /aliases/{name}: the whole alias but its name."""

    variants: Variants
    enabled: bool = True
    sticky_by: StickyBy = ""
    fallbacks: FallbackIds = Field(default_factory=list)


class AliasIn(AliasBody):
    name: IdStr


class AliasPatch(Body):
    variants: Variants | None = None
    enabled: bool | None = None
    sticky_by: StickyBy | None = None
    fallbacks: FallbackIds | None = None


async def list_aliases(request: web.Request) -> web.Response:
    services = get_services(request)
    aliases = await services.config.call(services.config.list_aliases)
    times = await services.config.call(services.config.alias_times)
    shown, paging = page(request, aliases)
    return web.json_response({"items": [alias_view(a, times.get(a.name)) for a in shown], **paging})


async def get_alias(request: web.Request) -> web.Response:
    alias = await _existing(request)
    return web.json_response(await _view_with_times(request, alias))


async def create_alias(request: web.Request) -> web.Response:
    body = await read_model(request, AliasIn)
    services = get_services(request)
    if await services.config.call(services.config.get_alias, body.name) is not None:
        raise Conflict(f"alias {body.name!r} already exists; PATCH or PUT /admin/v1/aliases/{body.name} changes it")
    alias = alias_from_body(body.name, body)
    await _save(request, alias)
    return web.json_response({"ok": True, "id": alias.name, "alias": alias_view(alias)}, status=201)


async def put_alias(request: web.Request) -> web.Response:
    """Create or replace (the original API's verb)."""
    body = await read_model(request, AliasBody)
    alias = alias_from_body(request.match_info["name"], body)
    await _save(request, alias)
    return web.json_response({"ok": True, "alias": await _view_with_times(request, alias)})


async def patch_alias(request: web.Request) -> web.Response:
    current = await _existing(request)
    body = await read_model(request, AliasPatch)
    changes: dict[str, Any] = body.model_dump(exclude_none=True)
    if body.variants is not None:
        changes["variants"] = _variants(body.variants)
    if body.fallbacks is not None:
        changes["fallbacks"] = tuple(body.fallbacks)
    alias = dataclasses.replace(current, **changes)
    await _save(request, alias)
    return web.json_response({"ok": True, "alias": await _view_with_times(request, alias)})


async def delete_alias(request: web.Request) -> web.Response:
    services = get_services(request)
    deleted = await commit(request, services.config.delete_alias, request.match_info["name"])
    return web.json_response({"ok": True, "deleted": deleted})


def alias_view(alias: AliasInfo, times: tuple[float, float] | None = None) -> dict[str, Any]:
    total = sum(v.weight for v in alias.variants)
    view: dict[str, Any] = {
        "name": alias.name,
        "variants": [
            {"model_id": v.model_id, "weight": v.weight, "share": round(v.weight / total, 4)} for v in alias.variants
        ],
        "enabled": alias.enabled,
        "sticky_by": alias.sticky_by,
        "fallbacks": list(alias.fallbacks),
    }
    if times is not None:
        view["created_at"], view["updated_at"] = times
    return view


async def _existing(request: web.Request) -> AliasInfo:
    name = request.match_info["name"]
    services = get_services(request)
    alias = await services.config.call(services.config.get_alias, name)
    if alias is None:
        raise NotFound(f"alias {name!r} not found")
    return alias


async def _view_with_times(request: web.Request, alias: AliasInfo) -> dict[str, Any]:
    services = get_services(request)
    times = await services.config.call(services.config.alias_times)
    return alias_view(alias, times.get(alias.name))


async def _save(request: web.Request, alias: AliasInfo) -> None:
    services = get_services(request)
    check_alias(services, alias)
    await commit(request, services.config.upsert_alias, alias)


def _variants(variants: list[VariantIn]) -> tuple[AliasVariant, ...]:
    return tuple(AliasVariant(v.model_id, v.weight) for v in variants)


def alias_from_body(name: str, body: AliasBody) -> AliasInfo:
    return AliasInfo(name, _variants(body.variants), body.enabled, body.sticky_by, tuple(body.fallbacks))


def check_alias(services: Services, alias: AliasInfo) -> None:
    check_alias_against(alias, services.snapshot.models)


def check_alias_against(alias: AliasInfo, models: Mapping[str, ModelInfo]) -> None:
    """The spec's rules (a name, >= 1 variant, weights > 0, no duplicates, no variant named like the alias)
    plus: the name is not a model id nor one of the "TokenHub chooses" names, and variants and fallbacks
    are registered models of one kind (in ``models``: the live ones, or those a config file is about to
    write), so a request naming the alias can actually be served."""
    name = alias.name
    if len(name) > MAX_NAME:  # a PUT's name comes from the path, not the validated body
        raise _invalid(f"the name is longer than {MAX_NAME} characters", "name")
    if name.lower() in AUTO_MODELS:
        raise _invalid(f"{name!r} means 'TokenHub chooses' and cannot be an alias name", "name")
    if name in models:
        raise _invalid(f"{name!r} is a registered model id; an alias needs a name of its own", "name")
    ids = [v.model_id for v in alias.variants]
    if len(set(ids)) != len(ids):
        raise _invalid("each model may appear in only one variant", "variants")
    if len(set(alias.fallbacks)) != len(alias.fallbacks):
        raise _invalid("a model may appear only once in fallbacks", "fallbacks")
    kinds: set[str] = set()
    for field, model_id in [*(("variants", m) for m in ids), *(("fallbacks", m) for m in alias.fallbacks)]:
        if model_id == name:
            raise _invalid(f"{field} cannot name the alias itself", field)
        model = models.get(model_id)
        if model is None:
            raise _invalid(f"{field}: model {model_id!r} is not registered", field)
        kinds.add(model.kind)
    if len(kinds) > 1:
        raise _invalid(f"variants and fallbacks mix model kinds ({', '.join(sorted(kinds))})", "variants")


def _invalid(reason: str, field: str) -> InvalidRequest:
    return InvalidRequest(f"invalid alias: {reason}", field=field)
