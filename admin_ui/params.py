"""Query-string parsing for the admin read APIs: each bad value is a 400 naming the parameter."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web

from pipeline.errors import InvalidRequest

__all__ = ["choice_param", "int_param", "page", "parse_time", "str_param", "time_param"]

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}", field=name)
    return value


def str_param(request: web.Request, name: str, *, max_length: int = 256) -> str | None:
    """An optional exact-match filter; present but empty means "empty", e.g. ``model=`` for requests
    that never reached a model."""
    raw = request.query.get(name)
    if raw is not None and len(raw) > max_length:
        raise InvalidRequest(f"{name} is longer than {max_length} characters", field=name)
    return raw


def choice_param(request: web.Request, name: str, choices: Collection[str], default: str | None) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise InvalidRequest(f"{name} must be one of: {', '.join(choices)}", field=name)
    return raw


def time_param(request: web.Request, name: str) -> datetime | None:
    """RFC 3339 (``2026-01-02T03:04:05Z``; no offset means UTC) or unix milliseconds."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    return parse_time(raw, name)


def parse_time(raw: str, name: str) -> datetime:
    raw = raw.strip()
    try:
        if raw.lstrip("-").isdigit():
            return _EPOCH + timedelta(milliseconds=int(raw))
        moment = datetime.fromisoformat(raw)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"{name} must be RFC 3339 (e.g. 2026-01-02T03:04:05Z) or unix milliseconds", field=name
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def page(request: web.Request, items: Sequence[T], *, default_limit: int = 1000) -> tuple[Sequence[T], dict[str, Any]]:
    """``?limit=&offset=`` applied to a configuration listing (hundreds of rows, read whole from SQLite):
    the page and the listing's paging fields ``{"total", "limit", "offset"}``."""
    limit = int_param(request, "limit", default_limit, 1, 1000) or default_limit
    offset = int_param(request, "offset", 0, 0, 10**9) or 0
    return items[offset : offset + limit], {"total": len(items), "limit": limit, "offset": offset}
