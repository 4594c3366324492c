"""Admin API for registered models: GET/POST /models, PATCH/DELETE /models/{id}.

Model ids may contain slashes (``meta/llama-3``), hence the ``{id:.+}`` routes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import AfterValidator, Field

from adapters.provider import supports_prefill
from adapters.registry import provider_type
from admin_ui.common import Body, FallbackIds, IdStr, UpstreamName, commit, get_services, read_model
from admin_ui.params import page
from pipeline.errors import Conflict, InvalidRequest, NotFound
from pipeline.services import Services
from pipeline.types import ModelInfo

__all__ = [
    "ModelIn",
    "check_model",
    "create_model",
    "delete_model",
    "list_models",
    "model_from_body",
    "model_view",
    "patch_model",
]

ModelKind = Literal["chat", "embedding"]
# What a model reads besides text (pipeline.types.MEDIA_CAPABILITIES); null = its provider type's default.
Capabilities = Annotated[list[Literal["vision", "documents", "audio"]], Field(max_length=3)]
Weight = Annotated[int, Field(ge=0, le=10)]
NonNegative = Annotated[float, Field(ge=0)]
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


def _one_to_one(names: dict[str, str]) -> dict[str, str]:
    if len(set(names.values())) != len(names):
        raise ValueError("two model-facing names map to one client name: the reverse (client -> model) is ambiguous")
    return names


# model-facing tool name -> client-facing tool name (adapters/tool_names.py)
ToolNameMap = Annotated[dict[ToolName, ToolName], Field(max_length=256), AfterValidator(_one_to_one)]


class ModelIn(Body):
    id: IdStr
    provider_id: IdStr
    weight: Weight = 5
    max_context_tokens: Annotated[int, Field(ge=0)] = 0
    max_output_tokens: Annotated[int, Field(ge=0)] = 0
    input_per_1k: NonNegative = 0.0
    output_per_1k: NonNegative = 0.0
    enabled: bool = True
    kind: ModelKind = "chat"
    upstream_model: UpstreamName = ""
    fallbacks: FallbackIds = Field(default_factory=list)
    supports_prefill: bool | None = None  # continues an assistant prefill (stream rescue); null = the type's default
    capabilities: Capabilities | None = None
    tool_name_map: ToolNameMap = Field(default_factory=dict)
    gemma4_output: bool = False


class ModelPatch(Body):
    weight: Weight | None = None
    max_context_tokens: Annotated[int, Field(ge=0)] | None = None
    max_output_tokens: Annotated[int, Field(ge=0)] | None = None
    input_per_1k: NonNegative | None = None
    output_per_1k: NonNegative | None = None
    enabled: bool | None = None
    kind: ModelKind | None = None
    upstream_model: UpstreamName | None = None
    fallbacks: FallbackIds | None = None
    supports_prefill: bool | None = None  # an explicit null resets it to the provider type's default
    # null (or absent) leaves them; [] = text only. `"capabilities_default": true` goes back to the type's.
    capabilities: Capabilities | None = None
    capabilities_default: bool = False
    tool_name_map: ToolNameMap | None = None  # {} clears it
    gemma4_output: bool | None = None


async def list_models(request: web.Request) -> web.Response:
    services = get_services(request)
    models = await services.config.call(services.config.list_models)
    shown, paging = page(request, models)
    items = [{**model_view(m, services), "routable": m.enabled and m.provider_id in services.adapters} for m in shown]
    return web.json_response({"items": items, **paging})


async def create_model(request: web.Request) -> web.Response:
    body = await read_model(request, ModelIn)
    services = get_services(request)
    if await services.config.call(services.config.get_provider, body.provider_id) is None:
        raise InvalidRequest(f"provider {body.provider_id!r} does not exist; create it first", field="provider_id")
    model = model_from_body(body)
    _check(services, model)
    await commit(request, services.config.upsert_model, model)
    return web.json_response({"ok": True, "model": model_view(model, services)}, status=201)


async def patch_model(request: web.Request) -> web.Response:
    model_id = request.match_info["id"]
    body = await read_model(request, ModelPatch)
    services = get_services(request)
    current = await services.config.call(services.config.get_model, model_id)
    if current is None:
        raise NotFound(f"model {model_id!r} not found")
    changes = body.model_dump(exclude_none=True, exclude={"capabilities_default"})
    if "supports_prefill" in body.model_fields_set:
        changes["supports_prefill"] = body.supports_prefill
    if "fallbacks" in changes:
        changes["fallbacks"] = tuple(changes["fallbacks"])
    if body.capabilities_default and body.capabilities is not None:
        raise InvalidRequest("send capabilities or capabilities_default, not both", field="capabilities")
    if "capabilities" in changes or body.capabilities_default:
        changes["capabilities"] = None if body.capabilities_default else frozenset(changes["capabilities"])
    if "tool_name_map" in changes:
        changes["tool_name_map"] = tuple(changes["tool_name_map"].items())
    updated = dataclasses.replace(current, **changes)
    _check(services, updated)
    await commit(request, services.config.upsert_model, updated)
    if body.enabled:  # also lifts an in-memory disable for the provider's quota (stages/model_disables.py)
        services.model_disables.enable(model_id, "re-enabled by an admin")
    return web.json_response({"ok": True, "model": model_view(updated, services)})


async def delete_model(request: web.Request) -> web.Response:
    services = get_services(request)
    deleted = await commit(request, services.config.delete_model, request.match_info["id"])
    return web.json_response({"ok": True, "deleted": deleted})


def model_from_body(body: ModelIn) -> ModelInfo:
    """The stored model an admin or config-file body describes."""
    fields = body.model_dump()
    capabilities = None if body.capabilities is None else frozenset(body.capabilities)
    return ModelInfo(
        **{
            **fields,
            "fallbacks": tuple(body.fallbacks),
            "capabilities": capabilities,
            "tool_name_map": tuple(body.tool_name_map.items()),
        }
    )


def _check(services: Services, model: ModelInfo) -> None:
    snapshot = services.snapshot
    types = {provider_id: adapter.type for provider_id, adapter in services.adapters.items()}
    check_model(model, provider_types=types, models=snapshot.models, aliases=snapshot.aliases)


def check_model(
    model: ModelInfo, *, provider_types: Mapping[str, str], models: Mapping[str, ModelInfo], aliases: Collection[str]
) -> None:
    """The rules a model must meet against the configuration it joins (the admin API passes the live one,
    the config file the one it is about to write): an embedding model needs a provider type that embeds
    (Anthropic cannot); the id must not shadow an alias; fallbacks are other registered models of its kind."""
    type_name = provider_types.get(model.provider_id)
    if model.kind == "embedding" and type_name and not provider_type(type_name).capabilities.embeddings:
        raise InvalidRequest(
            f"provider {model.provider_id!r} ({type_name}) does not serve embeddings; kind 'embedding' needs an"
            " openai or vllm provider",
            field="kind",
        )
    kind = provider_type(type_name) if type_name else None
    if kind is not None and model.capabilities and (cannot := sorted(model.capabilities - kind.capabilities.inputs)):
        raise InvalidRequest(
            f"provider {model.provider_id!r} ({type_name}) cannot carry {', '.join(cannot)} input; its models may"
            f" read {', '.join(sorted(kind.capabilities.inputs)) or 'text only'}",
            field="capabilities",
        )
    if model.gemma4_output and type_name == "anthropic":
        raise InvalidRequest(
            f"gemma4_output: provider {model.provider_id!r} is anthropic; Gemma-4 is served OpenAI-compatible"
            " (an openai or vllm provider)",
            field="gemma4_output",
        )
    if model.id in aliases:
        raise Conflict(f"an alias named {model.id!r} exists; delete or rename it first")
    if len(set(model.fallbacks)) != len(model.fallbacks):
        raise InvalidRequest("fallbacks: a model may appear only once", field="fallbacks")
    for fallback in model.fallbacks:
        other = models.get(fallback)
        if fallback == model.id:
            raise InvalidRequest("fallbacks: a model cannot be its own fallback", field="fallbacks")
        if other is None:
            raise InvalidRequest(f"fallbacks: model {fallback!r} is not registered", field="fallbacks")
        if other.kind != model.kind:
            raise InvalidRequest(
                f"fallbacks: {fallback!r} is of kind {other.kind}, not {model.kind}", field="fallbacks"
            )


def model_view(m: ModelInfo, services: Services) -> dict[str, Any]:
    """The model as the admin API shows it. `supports_prefill` is the stored choice (null: the provider type's
    default); `prefill` is what stream rescue uses: whether it may continue an answer on this model."""
    view = {
        "id": m.id,
        "provider_id": m.provider_id,
        "weight": m.weight,
        "max_context_tokens": m.max_context_tokens,
        "max_output_tokens": m.max_output_tokens,
        "pricing_source": m.pricing_source,
        "input_per_1k": m.input_per_1k,
        "output_per_1k": m.output_per_1k,
        "enabled": m.enabled,
        "kind": m.kind,
        "upstream_model": m.sent_as,  # what the provider is sent (the id unless set)
        "fallbacks": list(m.fallbacks),
        "supports_prefill": m.supports_prefill,
        # As set (null = the provider type's default); what routing uses is the engine view's `reads`.
        "capabilities": None if m.capabilities is None else sorted(m.capabilities),
        "tool_name_map": dict(m.tool_name_map),
        "gemma4_output": m.gemma4_output,
        "autoloaded": m.autoloaded,
    }
    adapter = services.adapters.get(m.provider_id)
    view["prefill"] = adapter is not None and supports_prefill(m, adapter)
    return view
