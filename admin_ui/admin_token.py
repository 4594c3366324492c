"""POST /admin/v1/admin-token/rotate (spec row 72): a new admin token, random or the one sent; the old one
is refused from the next request on, the token file is replaced (0600) and every web UI session ends.

A token set by TOKENHUB_ADMIN_TOKEN is not rotated here (409): the next restart would bring the old one
back. The new token is in the response only; the audit row shows the body with the token redacted.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from pydantic import Field

from admin_ui.common import Body, read_model
from admin_ui.security import admin_ip
from admin_ui.sessions import ADMIN_TOKEN_KEY, SESSIONS
from pipeline.admin_token import MAX_ADMIN_TOKEN_CHARS, TokenFromEnvironment, WeakAdminToken
from pipeline.errors import Conflict, InternalError, InvalidRequest

__all__ = ["rotate_admin_token"]

log = structlog.get_logger("tokenhub.admin")


class RotateIn(Body):
    token: str | None = Field(None, repr=False, max_length=MAX_ADMIN_TOKEN_CHARS)


async def rotate_admin_token(request: web.Request) -> web.Response:
    body = await read_model(request, RotateIn)
    holder = request.config_dict[ADMIN_TOKEN_KEY]
    try:
        # the token file is written on a worker thread: no blocking I/O on the event loop
        token = await asyncio.get_running_loop().run_in_executor(None, holder.rotate, body.token)
    except TokenFromEnvironment as exc:
        raise Conflict(str(exc)) from None
    except WeakAdminToken as exc:
        raise InvalidRequest(str(exc), field="token") from None
    except OSError as exc:  # the token file could not be written: the old token stays live
        message = f"the token file {holder.path} could not be written ({exc.strerror}); the old token stays"
        raise InternalError(message) from None
    await request.config_dict[SESSIONS].close_all()
    log.warning("admin_token_rotated", client_ip=admin_ip(request), explicit=body.token is not None)
    return web.json_response({"ok": True, "token": token, "token_file": str(holder.path)})
