"""Admin view of durable orchestration (api.md, workflows): GET /workflows (status filter, paging),
/workflows/{id} (describe), /workflows/{id}/history (the events, and each activity with its timing, model
and cost). With Temporal off each answers `{"temporal_enabled": false}`; with it unreachable, 503."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from admin_ui.common import get_services
from admin_ui.params import int_param
from pipeline.errors import InvalidRequest

__all__ = ["describe_workflow", "list_workflows", "workflow_history"]

_OFF = {"temporal_enabled": False}


async def list_workflows(request: web.Request) -> web.Response:
    temporal = get_services(request).temporal
    limit = int_param(request, "limit", 50, 1, 200)
    status = request.query.get("status") or None
    if status is not None and status not in _statuses():
        raise InvalidRequest(f"invalid status filter: one of {', '.join(_statuses())}", field="status")
    token = _page_token(request.query.get("page_token") or "")
    if not temporal.enabled:
        return web.json_response({"workflows": [], **_OFF})
    assert limit is not None
    workflows, next_token = await temporal.list_workflows(status=status, limit=limit, page_token=token)
    return web.json_response(
        {
            "workflows": workflows,
            "temporal_enabled": True,
            "next_page_token": base64.urlsafe_b64encode(next_token).decode() if next_token else None,
        }
    )


async def describe_workflow(request: web.Request) -> web.Response:
    temporal = get_services(request).temporal
    if not temporal.enabled:
        return web.json_response(_OFF)
    return web.json_response(await temporal.describe(request.match_info["workflow_id"]))


async def workflow_history(request: web.Request) -> web.Response:
    temporal = get_services(request).temporal
    if not temporal.enabled:
        return web.json_response(_OFF)
    history = await temporal.history(request.match_info["workflow_id"])
    return web.json_response({k: v for k, v in history.items() if k != "steps"})


def _page_token(raw: str) -> bytes | None:
    if not raw:
        return None
    try:
        return base64.urlsafe_b64decode(raw.encode())
    except (binascii.Error, ValueError):
        raise InvalidRequest("page_token is not one this API returned", field="page_token") from None


def _statuses() -> dict[str, str]:
    """The status filter's values, imported on first use: the Temporal SDK costs ~25 MiB of RSS, which a server
    without durable orchestration should not pay to validate a query parameter."""
    from stages.durable.runtime import STATUSES

    return STATUSES
