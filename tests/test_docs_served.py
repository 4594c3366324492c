"""The documentation site at /docs/ (spec rows 9 and 129): served from TOKENHUB_DOCS_DIR (default ./site,
what `make docs` builds) when present, a JSON 404 saying how to build it when absent, the same path safety
as the admin UI's files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import SettingsError, load_settings


def _site(root: Path) -> Path:
    """A folder laid out the way MkDocs builds one."""
    site = root / "site"
    (site / "security").mkdir(parents=True)
    (site / "css").mkdir()
    (site / "index.html").write_text("<h1>TokenHub docs</h1>")
    (site / "security" / "index.html").write_text("<h1>Security</h1>")
    (site / "css" / "base.css").write_text("body {}")
    (site / ".env").write_text("TOKENHUB_ADMIN_TOKEN=leak")
    (root / "outside.txt").write_text("not for the web")
    (site / "escape.txt").symlink_to(root / "outside.txt")
    return site


async def test_served_when_present(make_hub: Callable[..., Any], tmp_path: Path) -> None:
    hub = await make_hub(docs_dir=str(_site(tmp_path)))
    resp = await hub.client.get("/docs", allow_redirects=False)
    assert resp.status == 308 and resp.headers["Location"] == "/docs/"
    for path, text in (("/docs/", "TokenHub docs"), ("/docs/security/", "Security"), ("/docs/css/base.css", "body")):
        resp = await hub.client.get(path)
        assert resp.status == 200 and text in await resp.text(), path
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert (await hub.client.get("/docs/css/base.css")).content_type == "text/css"


@pytest.mark.parametrize(
    "path",
    [
        "/docs/.env",
        "/docs/escape.txt",
        "/docs/../outside.txt",
        "/docs/%2e%2e/outside.txt",
        "/docs/nope/",
        "/docs/security/missing.html",
    ],
)
async def test_no_file_outside_or_hidden_or_missing(make_hub: Callable[..., Any], tmp_path: Path, path: str) -> None:
    hub = await make_hub(docs_dir=str(_site(tmp_path)))
    resp = await hub.client.get(path)
    body = await resp.text()
    assert resp.status == 404 and "leak" not in body and "not for the web" not in body


async def test_absent_site_is_a_json_404(
    make_hub: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default ./site, which this folder does not have
    hub = await make_hub()
    for path in ("/docs/", "/docs/security/"):
        resp = await hub.client.get(path)
        error = (await resp.json())["error"]
        assert resp.status == 404 and error["type"] == "not_found" and error["request_id"]
    assert "make docs" in (await (await hub.client.get("/docs/")).json())["error"]["message"]


def test_a_docs_dir_that_does_not_exist_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TOKENHUB_DOCS_DIR"):
        load_settings({"TOKENHUB_DOCS_DIR": str(tmp_path / "missing")})
