"""The admin API over HTTP (stdlib urllib: the CLI needs no server internals and no extra dependency).

Where the server is: ``--url``, else ``TOKENHUB_URL``, else the listen address of the server holding the data
directory (its lock file says), else ``TOKENHUB_LISTEN_ADDR`` on this host. The token: ``TOKENHUB_ADMIN_TOKEN``,
else the data directory's ``.admin-token`` (never a command-line flag: it would show in ``ps``).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, BinaryIO

from pipeline.admin_token import read_admin_token
from pipeline.data_lock import lock_holder
from pipeline.settings import Settings

__all__ = ["AdminClient", "ClientError", "Response", "connect"]

_TIMEOUT_SECS = 60.0


class ClientError(RuntimeError):
    """The server refused (``status`` set, ``message`` from its JSON error body) or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class AdminClient:
    def __init__(self, url: str, token: str, *, timeout: float = _TIMEOUT_SECS) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def call(self, method: str, path: str, *, body: Any = None, query: dict[str, str] | None = None) -> Response:
        """One admin API call (``path`` under /admin/v1); ClientError unless the answer is 2xx."""
        with self._open(method, path, body, query) as answer:
            return Response(answer.status, answer.read())

    def download(self, method: str, path: str, out: BinaryIO) -> dict[str, str]:
        """Stream the answer's body into ``out``; returns its headers."""
        with self._open(method, path, None, None) as answer:
            shutil.copyfileobj(answer, out, 1 << 20)
            return dict(answer.headers)

    def _open(self, method: str, path: str, body: Any, query: dict[str, str] | None) -> Any:
        url = f"{self.url}/admin/v1{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            return urllib.request.urlopen(request, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            raise ClientError(_error_message(exc.code, exc.read()), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach TokenHub at {self.url}: {reason}") from None


def connect(settings: Settings, url: str | None = None) -> AdminClient:
    """A client for the server these settings describe (see the module docstring for the order)."""
    found = read_admin_token(settings.admin_token, settings.data_dir)
    if found is None:
        raise ClientError(
            f"no admin token: set TOKENHUB_ADMIN_TOKEN (or run where {settings.data_dir}/.admin-token is readable)"
        )
    return AdminClient(url or os.environ.get("TOKENHUB_URL") or server_url(settings), found[0])


def server_url(settings: Settings) -> str:
    holder = lock_holder(settings.data_dir) or {}
    listen = str(holder.get("listen") or settings.listen_addr)
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def _error_message(status: int, raw: bytes) -> str:
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {raw[:200].decode(errors='replace').strip() or 'no body'}"
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("type") or error)
        return f"{message} (HTTP {status}, request id {error['request_id']})" if error.get("request_id") else message
    return f"{error} (HTTP {status})"
