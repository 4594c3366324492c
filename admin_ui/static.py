"""The admin web UI's slot: whatever the static folder holds, served at /admin/ without authentication (the
page asks for the admin token itself, and every datum it shows comes from the authenticated /admin/v1 API).

Hidden files (a leading dot: ``.gitkeep``, ``.env``) are never served, nor anything outside the folder, through
``..`` or a symlink.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from pipeline.errors import NotFound
from pipeline.openapi import Operation

__all__ = ["STATIC_DIR", "StaticFiles"]

STATIC_DIR = Path(__file__).parent / "static"
INDEX = "index.html"
# The page runs only its own files: no inline script or style, no other origin, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    # no-cache: revalidate (cheap, by ETag / Last-Modified) so a new UI build shows at once.
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class StaticFiles:
    """Serves the files under ``root``; a folder means its index.html. ``what`` names the site in 404s and
    ``missing`` says what to do when it has no index.html (the documentation site reuses this class)."""

    def __init__(
        self,
        root: Path,
        *,
        headers: dict[str, str] = HEADERS,
        what: str = "admin UI",
        missing: str = "the admin web UI is not installed (its static folder has no index.html)",
    ) -> None:
        self.root = root
        self.headers = headers
        self.what = what
        self.missing = missing

    def operations(self) -> dict[object, Operation]:
        """What /openapi.json says about the routes below (public: the page asks for the token itself)."""
        return {
            self.to_folder: Operation(
                "The web UI: redirects to /admin/", "admin web UI", security="none", status=308, media=()
            ),
            self.serve: Operation("The web UI's files", "admin web UI", security="none", media=("*/*",)),
        }

    def routes(self) -> list[web.RouteDef]:
        """``/admin`` redirects to ``/admin/`` (so the page's relative links resolve under it); the rest are files.
        Mounted at /docs the same holds for ``/docs``."""
        return [web.get("", self.to_folder), web.get("/{path:.*}", self.serve)]

    async def to_folder(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect(request.path + "/")

    async def serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["path"]
        path = await asyncio.get_running_loop().run_in_executor(None, self.locate, name)
        if path is None:
            if not name.strip("/"):
                raise NotFound(self.missing)
            raise NotFound(f"no {self.what} file {name[:200]!r}")
        return web.FileResponse(path, headers=self.headers)

    def locate(self, name: str) -> Path | None:
        """The file ``name`` names inside the folder, or None. Blocking: runs on a worker thread."""
        parts = [part for part in name.split("/") if part]
        if any(part.startswith(".") or "\\" in part or "\0" in part for part in parts):
            return None
        try:
            root = self.root.resolve(strict=True)
            path = root.joinpath(*parts)
            if path.is_dir():
                path = path / INDEX
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop
            return None
        if not resolved.is_relative_to(root) or not resolved.is_file():
            return None
        return resolved
