"""What every admin resource module shares: its two dependencies (held on the admin sub-application, set by
``admin_app``), body parsing into pydantic models, the shared validators, durations, and the write path
(commit to SQLite, then swap the request path's snapshot)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Literal, ParamSpec, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from pipeline.errors import Conflict, InvalidRequest, VaultLocked, invalid_request
from pipeline.model_ids import ID_PATTERN
from pipeline.services import Services
from pipeline.tenants import TenantPipelines
from pipeline.web import read_body
from store.vault import VaultLockedError

__all__ = [
    "PIPELINES",
    "SERVICES",
    "Body",
    "FallbackIds",
    "IdStr",
    "Scope",
    "UpstreamName",
    "commit",
    "get_pipelines",
    "get_services",
    "parse_duration",
    "read_json",
    "read_model",
    "reload",
]

M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")
T = TypeVar("T")

# The admin sub-application's own keys: handlers never read the edge's application state.
SERVICES: web.AppKey[Services] = web.AppKey("admin_services", Services)
PIPELINES: web.AppKey[TenantPipelines] = web.AppKey("admin_pipelines", TenantPipelines)

IdStr = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
# The name a provider knows a model by: anything without whitespace ("" = the TokenHub id).
UpstreamName = Annotated[str, Field(max_length=256, pattern=r"^\S*$")]
FallbackIds = Annotated[list[IdStr], Field(max_length=16)]
Scope = Literal["chat", "plan", "embeddings"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Body(BaseModel):
    """An admin request body: strict types, unknown fields refused (a typo is a 400, not a silent no-op)."""

    model_config = ConfigDict(strict=True, extra="forbid")


def get_services(request: web.Request) -> Services:
    return request.config_dict[SERVICES]


def get_pipelines(request: web.Request) -> TenantPipelines:
    return request.config_dict[PIPELINES]


async def _raw_body(request: web.Request) -> bytes:
    settings = get_services(request).settings
    return await read_body(request, settings.max_body_bytes, max_depth=settings.max_json_depth)


async def read_model(request: web.Request, model: type[M]) -> M:
    """The body validated into ``model``; the first problem is a 400 naming its field."""
    raw = await _raw_body(request)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise invalid_request(exc) from None


async def read_json(request: web.Request) -> JsonValue:
    """The body as plain JSON (``null`` when empty), for handlers that check its shape themselves."""
    raw = await _raw_body(request)
    try:
        value: JsonValue = json.loads(raw or b"null")
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
        raise InvalidRequest(f"malformed JSON: {exc}", field="body") from None
    return value


def parse_duration(text: str) -> float:
    """Go-style durations: '720h', '1h30m', '90s', '7d'."""
    text = text.strip()
    if not text or _DURATION.sub("", text):
        raise InvalidRequest("expires_in must be a duration like '720h', '1h30m' or '30d'", field="expires_in")
    seconds = sum(float(n) * _UNIT_SECS[unit] for n, unit in _DURATION.findall(text))
    if seconds <= 0:
        raise InvalidRequest("expires_in must be positive", field="expires_in")
    return seconds


async def reload(request: web.Request) -> None:
    """Make committed configuration (or the vault's new state) visible to the request path."""
    await get_services(request).reload_config()
    get_pipelines(request).refresh()


async def commit(request: web.Request, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one store write on the store's thread, then make it visible to the request path."""
    config = get_services(request).config
    try:
        result = await config.call(fn, *args, **kwargs)
    except config.integrity_errors as exc:
        raise Conflict(f"conflicts with existing data: {exc}") from None
    except VaultLockedError:  # a provider key goes into the vault, which is locked: nothing was written
        raise VaultLocked(
            "the vault is locked: unlock it (POST /admin/v1/vault/unlock) to store a provider key"
        ) from None
    await reload(request)
    return result
