"""`tokenhub backup` / `tokenhub restore` against a real server: online while it takes traffic, offline, restore
into a fresh data directory that a new server then runs on, and every refusal."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import aiohttp
import duckdb

from tests.conftest import ADMIN_TOKEN, Hub
from tests.test_cli import ADMIN as CLI_ADMIN
from tests.test_cli import Server


async def _populate(hub: Hub) -> str:
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.002, max_context_tokens=8000)
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme"}, expect=201)
    key = await hub.new_key(tenant_id="acme")
    for _ in range(3):
        await hub.chat_ok(key)
    await hub.services.records.flush()
    return key


async def _backup(cli: Any, *args: str) -> dict[str, Any]:
    code, out, err = await cli("backup", "--json", *args)
    assert code == 0, err
    return json.loads(out)


async def test_online_backup_while_serving_restores_into_a_fresh_dir_that_serves_the_same(
    hub: Hub, cli: Any, make_hub: Any, tmp_path: Path
) -> None:
    key = await _populate(hub)
    data_dir = str(tmp_path / "data")

    async def traffic() -> int:
        served = 0
        for _ in range(20):
            await hub.chat_ok(key)
            served += 1
        return served

    during = asyncio.create_task(traffic())
    result = await _backup(cli, "--data-dir", data_dir, "--to", str(tmp_path / "backups"), "--include-secrets")
    served = await during
    await hub.services.records.flush()
    folder = Path(result["path"])
    manifest = result["manifest"]
    assert folder.parent == tmp_path / "backups" and re.fullmatch(r"\d{8}T\d{6}Z(-\d+)?", folder.name)
    # the hub's admin token comes from the environment: there is no token file to copy
    assert set(manifest["files"]) == {"tokenhub.sqlite", "tokenhub.duckdb", ".secret-key"}
    assert manifest["rows"]["sqlite"]["providers"] == 1 and manifest["rows"]["sqlite"]["api_keys"] == 1
    logged = manifest["rows"]["duckdb"]["request_log"]
    assert 3 <= logged <= 3 + served  # a consistent point in time while requests kept coming
    assert manifest["versions"]["sqlite_schema"] >= 1 and manifest["versions"]["duckdb"] == duckdb.__version__
    assert not (tmp_path / "data" / ".backup-staging").exists() or not any(
        (tmp_path / "data" / ".backup-staging").iterdir()
    )

    fresh = tmp_path / "fresh"
    code, _, err = await cli("restore", str(folder), "--data-dir", str(fresh))
    assert code == 0, err
    restored = await make_hub(data_dir=str(fresh))
    assert [p["id"] for p in (await restored.admin("GET", "/providers"))["items"]] == ["fake"]
    assert [m["id"] for m in (await restored.admin("GET", "/models"))["items"]] == ["gpt-test"]
    assert "acme" in [t["id"] for t in (await restored.admin("GET", "/tenants"))["items"]]
    assert len(await restored.logs()) == logged
    body = await restored.chat_ok(key)  # the API key still authenticates; the sealed provider key still opens
    assert body["negotiated_model"] == "gpt-test"


async def test_restore_refuses_a_live_data_dir_and_changes_nothing(hub: Hub, cli: Any, tmp_path: Path) -> None:
    await _populate(hub)
    result = await _backup(cli, "--data-dir", str(tmp_path / "data"), "--to", str(tmp_path / "b"))
    before = (tmp_path / "data" / "tokenhub.sqlite").stat().st_mtime_ns
    code, _, err = await cli("restore", result["path"], "--data-dir", str(tmp_path / "data"), "--force")
    assert code == 1
    assert "in use by a TokenHub server" in err and "stop it first" in err
    assert (tmp_path / "data" / "tokenhub.sqlite").stat().st_mtime_ns == before
    assert await hub.admin("GET", "/providers", expect=200)


async def test_a_second_server_refuses_a_held_data_dir(hub: Hub, make_hub: Any) -> None:
    try:
        await make_hub()
    except Exception as exc:
        assert "in use by a TokenHub server" in str(exc)
    else:
        raise AssertionError("a second server started on a held data directory")


async def test_damaged_backups_are_refused_before_anything_is_written(hub: Hub, cli: Any, tmp_path: Path) -> None:
    await _populate(hub)
    folder = Path((await _backup(cli, "--data-dir", str(tmp_path / "data"), "--to", str(tmp_path / "b")))["path"])
    target = tmp_path / "fresh"

    duck = folder / "tokenhub.duckdb"
    original = duck.read_bytes()
    duck.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    code, _, err = await cli("restore", str(folder), "--data-dir", str(target))
    assert code == 1 and "does not match the manifest" in err
    assert not (target / "tokenhub.sqlite").exists()
    duck.write_bytes(original)

    (folder / "manifest.json").write_text("{not json")
    code, _, err = await cli("restore", str(folder), "--data-dir", str(target))
    assert code == 1 and "manifest.json is unreadable" in err
    code, _, err = await cli("restore", str(tmp_path), "--data-dir", str(target))
    assert code == 1 and "no manifest.json" in err
    assert not (target / "tokenhub.sqlite").exists()


async def test_sealed_provider_keys_need_their_key_file(hub: Hub, cli: Any, make_hub: Any, tmp_path: Path) -> None:
    key = await _populate(hub)
    folder = (await _backup(cli, "--data-dir", str(tmp_path / "data"), "--to", str(tmp_path / "b")))["path"]
    assert ".secret-key" not in json.loads((Path(folder) / "manifest.json").read_text())["files"]
    fresh = tmp_path / "fresh"
    code, _, err = await cli("restore", folder, "--data-dir", str(fresh))
    assert code == 1 and "--secret-key" in err and not (fresh / "tokenhub.sqlite").exists()
    code, _, err = await cli("restore", folder, "--data-dir", str(fresh), "--secret-key", str(fresh / "nope"))
    assert code == 1 and "sealed provider key" in err

    code, _, err = await cli(
        "restore", folder, "--data-dir", str(fresh), "--secret-key", str(tmp_path / "data" / ".secret-key")
    )
    assert code == 0, err
    code, _, err = await cli("restore", folder, "--data-dir", str(fresh))
    assert code == 1 and "already holds a TokenHub database" in err and "--force" in err
    code, out, err = await cli("restore", folder, "--data-dir", str(fresh), "--force")
    assert code == 0 and "pre-restore-" in out, err
    restored = await make_hub(data_dir=str(fresh))
    await restored.chat_ok(key)


async def test_offline_backup_and_retention(hub: Hub, cli: Any, monkeypatch: Any, tmp_path: Path) -> None:
    await _populate(hub)
    await hub.client.close()  # the server stops: the data directory is free, the backup is taken offline
    monkeypatch.delenv("TOKENHUB_URL")
    root = tmp_path / "b"
    names = []
    for _ in range(3):
        code, out, err = await cli("backup", "--data-dir", str(tmp_path / "data"), "--to", str(root), "--keep", "2")
        assert code == 0 and "(offline)" in out, err
        names.append(out.split()[1])
    kept = sorted(str(p) for p in root.iterdir())
    assert kept == sorted(names[1:])  # the oldest went
    assert "removed old backup" in out
    copy = sqlite3.connect(Path(names[-1]) / "tokenhub.sqlite")
    assert copy.execute("SELECT id FROM models").fetchall() == [("gpt-test",)]
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    db = duckdb.connect(str(Path(names[-1]) / "tokenhub.duckdb"), read_only=True)
    assert db.execute("SELECT count(*) FROM request_log").fetchall() == [(3,)]


async def test_backup_errors_exit_1_with_the_reason(cli: Any, monkeypatch: Any, tmp_path: Path) -> None:
    code, _, err = await cli("backup", "--data-dir", str(tmp_path / "data"), "--url", "http://127.0.0.1:9")
    assert code == 1 and "cannot reach TokenHub" in err
    monkeypatch.setenv("TOKENHUB_ADMIN_TOKEN", "x" * 40)
    code, _, err = await cli("backup", "--data-dir", str(tmp_path / "data"), "--to", str(tmp_path / "b"))
    assert code == 1 and "invalid admin token" in err
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())
    code, _, err = await cli("backup", "--keep", "-1")
    assert code == 2


async def test_backup_endpoint_needs_the_admin_token(hub: Hub) -> None:
    resp = await hub.client.post("/admin/v1/backup")
    assert resp.status == 401 and (await resp.json())["error"]["request_id"]
    async with aiohttp.ClientSession() as session:
        url = hub.client.make_url("/admin/v1/backup")
        async with session.post(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as ok:
            assert ok.status == 200 and ok.headers["Content-Type"] == "application/x-tar"
            assert len(await ok.read()) == int(ok.headers["Content-Length"])


async def test_a_finished_backup_never_removes_a_later_one_of_the_same_name(hub: Hub) -> None:
    """Staging folders are named by the second: once a backup has freed its name, the next backup in that second
    takes it, and the first one's clean-up must not remove the second's copy under its feet."""
    await _populate(hub)
    async with aiohttp.ClientSession() as session:
        url = hub.client.make_url("/admin/v1/backup")
        async with session.post(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 200  # headers out: this backup's staging is gone, its name free
            reused = Path(hub.services.settings.data_dir) / ".backup-staging" / resp.headers["X-Backup-Name"]
            reused.mkdir()
            (reused / "tokenhub.sqlite").write_bytes(b"a later backup, mid-copy")
            with tarfile.open(fileobj=io.BytesIO(await resp.read())) as tar:
                assert len(tar.getmembers()) == 3
    await asyncio.sleep(0.3)  # the first request's handler has long returned
    assert (reused / "tokenhub.sqlite").read_bytes() == b"a later backup, mid-copy"


async def test_the_cli_finds_a_local_server_through_its_lock_file(tmp_path: Path) -> None:
    """`tokenhub backup --data-dir DIR` with no URL: the server's lock file says where it listens."""
    server = Server(tmp_path / "data", TOKENHUB_ADMIN_TOKEN=CLI_ADMIN)
    await server.start()
    try:
        env = {k: v for k, v in server.env.items() if k != "TOKENHUB_LISTEN_ADDR"}  # not the way it is found
        argv = [sys.executable, "-m", "pipeline", "backup", "--data-dir", str(tmp_path / "data")]
        done = await asyncio.to_thread(
            subprocess.run, [*argv, "--to", str(tmp_path / "b")], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0 and "(online)" in done.stdout, done.stderr
        restore = [sys.executable, "-m", "pipeline", "restore", done.stdout.split()[1], "--data-dir"]
        refused = await asyncio.to_thread(
            subprocess.run, [*restore, str(tmp_path / "data")], env=env, capture_output=True, text=True
        )
        assert refused.returncode == 1 and f"listening on 127.0.0.1:{server.port}" in refused.stderr
    finally:
        code, _, err = await server.stop()
    assert code == 0, err
