"""The admin application is built from explicit dependencies (``admin_app(services, pipelines, token)``) and
serves the web UI's static folder at /admin/ beside the authenticated JSON API at /admin/v1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from admin_ui.app import ADMIN_PREFIX, admin_app
from pipeline.app import build_services
from pipeline.registry import default_registry
from pipeline.services import Services
from pipeline.settings import load_settings
from pipeline.tenants import TenantPipelines
from pipeline.web import request_id_and_errors
from tests.conftest import Hub

TOKEN = "explicit-admin-token-0123456789"
INDEX = b"<!doctype html><title>TokenHub admin</title>"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = build_services(load_settings({"TOKENHUB_DATA_DIR": str(tmp_path / "data")}))
    yield built
    built.analytics.close()
    built.config.close()


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "static"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_bytes(INDEX)
    (folder / "assets" / "app.js").write_text("console.log('admin')")
    (folder / ".env").write_text("SECRET=1")
    (tmp_path / "outside.txt").write_text("not for the web")
    (folder / "escape.txt").symlink_to(tmp_path / "outside.txt")
    return folder


@pytest.fixture
def serve(aiohttp_client: Callable[..., Any], services: Services) -> Callable[[Path], Any]:
    """A bare root application (no edge, no application state of its own) with only the admin mounted."""

    async def start(folder: Path) -> Any:
        root = web.Application(middlewares=[request_id_and_errors])
        root.add_subapp(
            ADMIN_PREFIX, admin_app(services, TenantPipelines(default_registry(), services), TOKEN, static_dir=folder)
        )
        return await aiohttp_client(root)

    return start


async def test_the_static_folder_is_served_at_admin_without_a_token(serve: Any, static_dir: Path) -> None:
    client = await serve(static_dir)
    resp = await client.get("/admin", allow_redirects=False)
    assert resp.status == 308 and resp.headers["Location"] == "/admin/"
    resp = await client.get("/admin/")
    assert resp.status == 200 and await resp.read() == INDEX
    assert resp.content_type == "text/html" and resp.headers["Cache-Control"] == "no-cache"
    resp = await client.get("/admin/assets/app.js")
    assert resp.status == 200 and await resp.text() == "console.log('admin')"
    assert "javascript" in resp.content_type
    (static_dir / "assets" / "added.css").write_text("body{}")  # served as the folder holds it, no restart
    assert await (await client.get("/admin/assets/added.css")).text() == "body{}"


async def test_nothing_outside_the_folder_or_hidden_is_served(serve: Any, static_dir: Path) -> None:
    client = await serve(static_dir)
    for path in [
        "/admin/.env",
        "/admin/escape.txt",
        "/admin/%2e%2e/outside.txt",
        "/admin/assets/%2e%2e/%2e%2e/outside.txt",
        "/admin/nope.js",
    ]:
        resp = await client.get(URL(path, encoded=True))
        body = await resp.json()
        assert resp.status == 404 and body["error"]["type"] == "not_found", (path, body)
        assert "SECRET" not in str(body) and "not for the web" not in str(body)


async def test_an_empty_slot_says_the_ui_is_not_installed(serve: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    client = await serve(empty)
    resp = await client.get("/admin/")
    body = await resp.json()
    assert resp.status == 404 and "not installed" in body["error"]["message"]
    assert resp.headers["X-Request-Id"] == body["error"]["request_id"]


async def test_the_api_uses_the_services_it_was_given_and_keeps_its_token(
    serve: Any, static_dir: Path, services: Services
) -> None:
    client = await serve(static_dir)
    assert (await client.get("/admin/v1/info")).status == 401  # the static slot takes no API path
    headers = {"Authorization": f"Bearer {TOKEN}"}
    resp = await client.post("/admin/v1/tenants", json={"id": "acme", "name": "Acme"}, headers=headers)
    assert resp.status == 201 and (await resp.json())["id"] == "acme"
    assert "acme" in services.snapshot.tenants  # written through the services passed in, snapshot swapped
    pipeline = await (await client.get("/admin/v1/tenants/acme/pipeline", headers=headers)).json()
    assert pipeline["custom"] is False and pipeline["stages"][0]["stage"] == "record"
    resp = await client.get("/admin/v1/nope", headers=headers)
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found"


def test_an_empty_admin_token_is_refused(services: Services) -> None:
    with pytest.raises(ValueError, match="admin token"):
        admin_app(services, TenantPipelines(default_registry(), services), "")


async def test_the_running_server_mounts_the_slot(hub: Hub) -> None:
    resp = await hub.client.get("/admin/.gitkeep")  # the repository's placeholder is hidden
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found"
    assert (await hub.admin("GET", "/info"))["tokenhub"] == "admin"
