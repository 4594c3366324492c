"""Admin API: POST /backup, an online backup of the running server's databases, answered as a tar archive.

The running server is the only process that may touch its DuckDB file, so it takes the copies itself, each on
its store's own thread (store/backup.py: SQLite's backup API on the config store's thread; CHECKPOINT and a
file copy on the analytics writer's thread), into a staging folder in the data directory, and streams the
archive back; `tokenhub backup` unpacks it where the operator wants it and verifies it. The staging folder is
removed whatever happens. Secret files (the key file, the admin token) are never sent.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from admin_ui.common import get_services
from pipeline.errors import BackupFailed, Conflict
from store.backup import (
    DUCKDB_FILE,
    SECRET_KEY_FILE,
    SQLITE_FILE,
    BackupError,
    archive,
    copy_duckdb,
    copy_sqlite,
    key_fingerprint,
    new_backup_dir,
    write_manifest,
)

__all__ = ["POSTGRES_BACKUP", "STAGING_DIR", "create_backup"]

STAGING_DIR = ".backup-staging"
_CHUNK = 1 << 20
POSTGRES_BACKUP = (
    "the configuration is in PostgreSQL (TOKENHUB_DATABASE_URL): back it up with pg_dump, not tokenhub backup"
    " (docs/scaling.md, Configuration in PostgreSQL)"
)


async def create_backup(request: web.Request) -> web.StreamResponse:
    services = get_services(request)
    settings = services.settings
    if services.config.database_url:
        raise Conflict(POSTGRES_BACKUP)
    folder = await asyncio.to_thread(new_backup_dir, settings.data_dir / STAGING_DIR)
    tar: Path | None = None
    try:
        sqlite = await services.config.call(copy_sqlite, services.config.db, folder / SQLITE_FILE)
        duck = None
        if settings.analytics_path != ":memory:":
            source = Path(settings.analytics_path)
            duck = await services.analytics.call_with_db(copy_duckdb, source, folder / DUCKDB_FILE)
        fingerprint = await asyncio.to_thread(key_fingerprint, settings.data_dir / SECRET_KEY_FILE)
        await asyncio.to_thread(
            write_manifest, folder, sqlite=sqlite, duckdb_copy=duck, secret_key_fingerprint=fingerprint
        )
        tar = await asyncio.to_thread(archive, folder)
        size = tar.stat().st_size
        handle = await asyncio.to_thread(tar.open, "rb")
    except (BackupError, OSError) as exc:
        raise BackupFailed(f"backup failed: {exc}") from None
    finally:
        # Removed exactly once, before the first byte goes out (the open handle still reads the unlinked
        # archive): a client holding the whole archive never finds staging left behind, and a second backup
        # that reuses this second's folder name once it is free is never removed under its feet.
        await asyncio.to_thread(_remove, folder, tar)
    return await _send(request, handle, size, folder.name)


async def _send(request: web.Request, handle: BinaryIO, size: int, name: str) -> web.StreamResponse:
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-tar",
                "Content-Disposition": f'attachment; filename="{name}.tar"',
                "X-Backup-Name": name,
            }
        )
        response.content_length = size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            await response.write(chunk)
    finally:
        await asyncio.to_thread(handle.close)
    await response.write_eof()
    return response


def _remove(folder: Path, tar: Path | None) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    if tar is not None:
        tar.unlink(missing_ok=True)
