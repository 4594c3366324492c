"""``tokenhub backup`` and ``tokenhub restore`` (docs/backup.md).

backup: when a server holds the data directory (its lock), or ``--url``/``TOKENHUB_URL`` names one, the server
takes the copies (POST /admin/v1/backup: only the process that has DuckDB open may copy it) and this command
unpacks and verifies the archive; otherwise it takes the lock itself and copies the files directly. Then it
keeps the newest ``--keep`` backups. restore: verifies the backup first, refuses a data directory a server
holds, and never overwrites a database unless ``--force`` (which moves the current files aside, not away).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.admin_cli import client_options
from pipeline.admin_cli.client import ClientError, connect
from pipeline.data_lock import DataDirInUse, DataDirLock, lock_holder
from pipeline.settings import Settings, SettingsError, load_settings
from store.backup import (
    ADMIN_TOKEN_FILE,
    DUCKDB_FILE,
    SECRET_KEY_FILE,
    SQLITE_FILE,
    BackupError,
    add_secret_files,
    backup_files,
    key_fingerprint,
    new_backup_dir,
    prune,
    unpack,
    verify,
)

__all__ = ["add_backup_commands", "backup_command", "restore_command"]

# Backups and restores of a PostgreSQL configuration store are PostgreSQL's own tools' job.
POSTGRES_REFUSAL = (
    "TOKENHUB_DATABASE_URL is set: the configuration is in PostgreSQL; use pg_dump / pg_restore for it"
    " (docs/scaling.md, Configuration in PostgreSQL)"
)


def add_backup_commands(commands: Any) -> None:
    backup = commands.add_parser(
        "backup",
        help="take a consistent backup of the configuration and analytics (online or offline)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[client_options()],
    )
    backup.add_argument("--to", metavar="DIR", help="where backups go (TOKENHUB_BACKUP_DIR, default ./backups)")
    backup.add_argument(
        "--keep", type=int, metavar="N", help="keep the newest N backups (TOKENHUB_BACKUP_KEEP); 0 = all"
    )
    backup.add_argument(
        "--include-secrets",
        action="store_true",
        help="also copy .secret-key and .admin-token from the data directory (then guard the backup like them)",
    )
    backup.add_argument("--json", action="store_true", help="print the backup's manifest as JSON")
    backup.set_defaults(run=backup_command)
    restore = commands.add_parser(
        "restore",
        help="restore a backup into a data directory no server is using",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restore.add_argument("backup", metavar="BACKUP_DIR", help="one backup directory (with its manifest.json)")
    restore.add_argument("--data-dir", metavar="DIR", help="the data directory to restore into (TOKENHUB_DATA_DIR)")
    restore.add_argument(
        "--secret-key", metavar="FILE", help="the .secret-key the backup's sealed provider keys need, if not in it"
    )
    restore.add_argument(
        "--force", action="store_true", help="replace existing databases (moved to <data dir>/pre-restore-<time>/)"
    )
    restore.set_defaults(run=restore_command)


def backup_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(data_dir=args.data_dir)
    except SettingsError as exc:
        return _fail(str(exc), 2)
    if settings.database_url:
        return _fail(f"backup refused: {POSTGRES_REFUSAL}", 2)
    root = Path(args.to) if args.to else settings.backup_dir
    keep = settings.backup_keep if args.keep is None else args.keep
    if keep < 0:
        return _fail("--keep must be 0 (keep all) or more", 2)
    try:
        online = bool(args.url or os.environ.get("TOKENHUB_URL")) or lock_holder(settings.data_dir) is not None
        folder = _online(settings, args.url, root) if online else _offline(settings, root)
        if args.include_secrets:
            add_secret_files(folder, settings.data_dir)
        manifest = verify(folder)
        removed = prune(root, keep)
    except ClientError as exc:
        return _fail(f"backup failed: {exc.message}", 1)
    except (BackupError, DataDirInUse, OSError) as exc:
        return _fail(f"backup failed: {exc}", 1)
    if args.json:
        print(json.dumps({"path": str(folder), "manifest": manifest, "removed": [str(p) for p in removed]}))
    else:
        rows = manifest["rows"]
        print(f"backup {folder} ({'online' if online else 'offline'})")
        print(f"  sqlite rows: {sum(rows['sqlite'].values())}, duckdb rows: {sum(rows['duckdb'].values())}")
        print(f"  files: {', '.join(sorted(manifest['files']))}")
        for path in removed:
            print(f"  removed old backup {path}")
    return 0


def _online(settings: Settings, url: str | None, root: Path) -> Path:
    client = connect(settings, url)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=root, prefix=".download-", suffix=".tar") as handle:
        client.download("POST", "/backup", handle)
        handle.flush()
        return unpack(Path(handle.name), root)


def _offline(settings: Settings, root: Path) -> Path:
    lock = DataDirLock.acquire(settings.data_dir, role="backup")
    try:
        folder = new_backup_dir(root)
        try:
            backup_files(settings.sqlite_path, settings.analytics_path, settings.data_dir / SECRET_KEY_FILE, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder
    finally:
        lock.release()


def restore_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(data_dir=args.data_dir)
    except SettingsError as exc:
        return _fail(str(exc), 2)
    if settings.database_url:
        return _fail(f"restore refused: {POSTGRES_REFUSAL}", 2)
    source = Path(args.backup)
    try:
        manifest = verify(source)  # before anything is touched
        lock = DataDirLock.acquire(settings.data_dir, role="restore")
    except BackupError as exc:
        return _fail(f"restore refused: {exc}", 1)
    except DataDirInUse as exc:
        return _fail(f"restore refused: {exc}; stop it first (restoring under a running server loses data)", 1)
    try:
        moved = _restore(settings, source, manifest, args)
    except BackupError as exc:
        return _fail(f"restore refused: {exc}", 1)
    finally:
        lock.release()
    print(f"restored {source} into {settings.data_dir}")
    if moved:
        print(f"  the previous files are in {moved}")
    if manifest["sealed_provider_keys"] == 0 and _vault_secrets(manifest):
        print("  provider keys are in the vault: unlock it with the vault password after starting")
    return 0


def _restore(settings: Settings, source: Path, manifest: dict[str, Any], args: argparse.Namespace) -> Path | None:
    data_dir = settings.data_dir
    targets = {SQLITE_FILE: settings.sqlite_path}
    if settings.analytics_path != ":memory:" and DUCKDB_FILE in manifest["files"]:
        targets[DUCKDB_FILE] = Path(settings.analytics_path)
    key_source = _key_source(source, manifest, args, data_dir)
    existing = [p for p in (*targets.values(), *_companions(targets.values())) if p.exists()]
    if existing and not args.force:
        raise BackupError(
            f"{data_dir} already holds a TokenHub database ({existing[0]}); use --force to replace it"
            " (the current files are moved aside)"
        )
    moved = None
    if existing or (key_source and (data_dir / SECRET_KEY_FILE).exists()):
        moved = data_dir / f"pre-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        moved.mkdir(parents=True)
        for path in existing:
            path.rename(moved / path.name)
    for name, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".restoring")
        shutil.copyfile(source / name, partial)
        partial.replace(target)
    if key_source:
        _replace_secret(key_source, data_dir / SECRET_KEY_FILE, moved)
    if ADMIN_TOKEN_FILE in manifest["files"] and not (data_dir / ADMIN_TOKEN_FILE).exists():
        _replace_secret(source / ADMIN_TOKEN_FILE, data_dir / ADMIN_TOKEN_FILE, None)
    return moved


def _key_source(source: Path, manifest: dict[str, Any], args: argparse.Namespace, data_dir: Path) -> Path | None:
    """The key file to install (None: keep the data directory's), checked against the backup's fingerprint
    when the backup has provider keys sealed with one."""
    if args.secret_key:
        candidate: Path | None = Path(args.secret_key)
    elif SECRET_KEY_FILE in manifest["files"]:
        candidate = source / SECRET_KEY_FILE
    else:
        candidate = None
    needed = manifest.get("secret_key_fingerprint", "") if manifest.get("sealed_provider_keys") else ""
    if needed:
        have = key_fingerprint(candidate or data_dir / SECRET_KEY_FILE)
        if have != needed:
            raise BackupError(
                f"the backup's {manifest['sealed_provider_keys']} sealed provider key(s) need the .secret-key of the"
                " data directory it was taken from: pass it with --secret-key FILE (or back up with"
                " --include-secrets)"
            )
    if candidate is not None and candidate.resolve() == (data_dir / SECRET_KEY_FILE).resolve():
        return None
    return candidate


def _replace_secret(source: Path, target: Path, moved: Path | None) -> None:
    if target.exists() and moved is not None:
        target.rename(moved / target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())


def _companions(paths: Any) -> list[Path]:
    """The side files of a database (SQLite's WAL and shared memory, DuckDB's WAL): stale after a restore."""
    found = []
    for path in paths:
        found += [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", ".wal")]
    return found


def _vault_secrets(manifest: dict[str, Any]) -> bool:
    return bool(manifest["rows"]["sqlite"].get("vault_secrets"))


def _fail(message: str, code: int) -> int:
    print(f"tokenhub: {message}", file=sys.stderr)
    return code
