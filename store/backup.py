"""Backups of a data directory: consistent copies of both databases, a manifest, verification and retention.

A backup is a directory named by its UTC time (``20260509T073525Z``) holding ``tokenhub.sqlite``,
``tokenhub.duckdb`` and ``manifest.json`` (format, versions, row counts, and each file's size and SHA-256).

- SQLite is copied with SQLite's online backup API (``Connection.backup``) from the connection the caller
  passes: the config store's own, on its thread, while the server runs.
- DuckDB admits one writer per file and the server holds it, so the copy runs on the analytics store's
  writer thread: ``CHECKPOINT`` moves the write-ahead log into the file, then the file is copied while that
  thread (the only one that writes) is held, so nothing changes under the copy. The copy is then opened on
  its own and counted, which also proves it is a readable database.

Secrets: provider keys are in SQLite only as ciphertext (sealed with the data directory's ``.secret-key``, or
in the vault under the vault password), so a backup holds ciphertext. The key file and the admin token are
not part of a backup unless asked for (``add_secret_files``, which the CLI does from the data directory
itself, never over HTTP); the manifest records a fingerprint of the key file so a restore can check it has
the right one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import shutil
import sqlite3
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

# duckdb is imported where it is used: every `tokenhub` command line (`tokenhub healthcheck` every few
# seconds in a container) loads this module through `tokenhub backup`'s registration, and must stay light.
if TYPE_CHECKING:
    import duckdb

__all__ = [
    "ADMIN_TOKEN_FILE",
    "DUCKDB_FILE",
    "FORMAT",
    "MANIFEST",
    "SECRET_KEY_FILE",
    "SQLITE_FILE",
    "BackupError",
    "add_secret_files",
    "archive",
    "backup_files",
    "copy_duckdb",
    "copy_sqlite",
    "key_fingerprint",
    "list_backups",
    "new_backup_dir",
    "prune",
    "unpack",
    "verify",
    "write_manifest",
]

FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_FILE = "tokenhub.sqlite"
DUCKDB_FILE = "tokenhub.duckdb"
SECRET_KEY_FILE = ".secret-key"
ADMIN_TOKEN_FILE = ".admin-token"
SECRET_FILES = (SECRET_KEY_FILE, ADMIN_TOKEN_FILE)
_NAME = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
_CHUNK = 1 << 20
# A checkpoint waits for running readers (an analyst query) to finish; how long to keep retrying.
_CHECKPOINT_TRIES = 50
_CHECKPOINT_PAUSE_SECS = 0.1


class BackupError(RuntimeError):
    """A backup could not be taken, or a backup directory is not one this version can restore."""


@dataclass(frozen=True, slots=True)
class Copied:
    path: Path
    rows: dict[str, int]
    schema_version: int = 0
    sealed_provider_keys: int = 0  # provider keys sealed with the key file (vault ones need its password)


def copy_sqlite(conn: sqlite3.Connection, dest: Path) -> Copied:
    """An online, consistent copy of ``conn``'s database (SQLite's backup API), and its tables' row counts."""
    target = sqlite3.connect(dest)
    try:
        conn.backup(target)
        tables = [r[0] for r in target.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: target.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        version = target.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        sealed = target.execute("SELECT count(*) FROM providers WHERE api_key_sealed != ''").fetchone()[0]
        # The copy is a standalone file: no WAL beside it (journal_mode is stored in the file itself).
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()
    return Copied(dest, rows, int(version), int(sealed))


def copy_duckdb(conn: duckdb.DuckDBPyConnection, source: Path, dest: Path) -> Copied:
    """Checkpoint ``conn`` (the database's only writer, called on its thread) and copy the file; returns the
    copy's row counts, read by opening the copy on its own."""
    _checkpoint(conn)
    shutil.copyfile(source, dest)
    return Copied(dest, duckdb_rows(dest))


def duckdb_rows(path: Path) -> dict[str, int]:
    import duckdb

    db = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})
    try:
        tables = [r[0] for r in db.execute("SELECT table_name FROM duckdb_tables() ORDER BY table_name").fetchall()]
        return {t: int(db.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0]) for t in tables}
    finally:
        db.close()


def _checkpoint(conn: duckdb.DuckDBPyConnection) -> None:
    import duckdb

    for _ in range(_CHECKPOINT_TRIES):
        try:
            conn.execute("CHECKPOINT")
            return
        except duckdb.TransactionException:  # a reader's transaction is open: it ends within its time limit
            time.sleep(_CHECKPOINT_PAUSE_SECS)
    raise BackupError("the analytics database stayed busy (a long query?): no checkpoint for the backup")


def new_backup_dir(root: Path, now: datetime | None = None) -> Path:
    """A new, empty directory under ``root`` named by the UTC time (a suffix if two land in one second)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1, 1000):
        path = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise BackupError(f"could not name a new backup in {root}")


def write_manifest(
    folder: Path,
    *,
    sqlite: Copied,
    duckdb_copy: Copied | None,
    secret_key_fingerprint: str,
) -> dict[str, Any]:
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "tokenhub": _version(),
            "sqlite_schema": sqlite.schema_version,
            "sqlite": sqlite3.sqlite_version,
            "duckdb": metadata.version("duckdb"),
        },
        "rows": {"sqlite": sqlite.rows, "duckdb": duckdb_copy.rows if duckdb_copy else {}},
        "secret_key_fingerprint": secret_key_fingerprint,
        "sealed_provider_keys": sqlite.sealed_provider_keys,
        "files": {},
    }
    for copied in (sqlite, duckdb_copy):
        if copied is not None:
            manifest["files"][copied.path.name] = _describe(copied.path)
    _save(folder, manifest)
    return manifest


def add_secret_files(folder: Path, data_dir: Path) -> list[str]:
    """Copy the key file and the admin token file (those that exist) into the backup, mode 0600, and list them
    in its manifest. Returns the names copied."""
    manifest = _load(folder)
    copied = []
    for name in SECRET_FILES:
        source = data_dir / name
        if source.is_file():
            target = folder / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            manifest["files"][name] = _describe(target)
            copied.append(name)
    _save(folder, manifest)
    return copied


def verify(folder: Path) -> dict[str, Any]:
    """The manifest, once every file it lists is present with its size and SHA-256; BackupError otherwise."""
    manifest = _load(folder)
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{folder / MANIFEST}: unknown backup format {manifest.get('format')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or SQLITE_FILE not in files:
        raise BackupError(f"{folder / MANIFEST}: lists no {SQLITE_FILE}")
    for name, expected in files.items():
        if not isinstance(name, str) or "/" in name or name in ("", ".", "..") or not isinstance(expected, dict):
            raise BackupError(f"{folder / MANIFEST}: bad file entry {name!r}")
        path = folder / name
        if not path.is_file():
            raise BackupError(f"{path} is missing")
        if _describe(path) != {"bytes": expected.get("bytes"), "sha256": expected.get("sha256")}:
            raise BackupError(f"{path} does not match the manifest (size or SHA-256): the backup is damaged")
    return manifest


def key_fingerprint(key_file: Path) -> str:
    """Names a key file without revealing it: an HMAC of a fixed label under the key ('' when there is none)."""
    try:
        key = key_file.read_bytes()
    except FileNotFoundError:
        return ""
    return hmac.new(key, b"tokenhub backup key fingerprint", hashlib.sha256).hexdigest()[:32]


def list_backups(root: Path) -> list[Path]:
    """The backups under ``root``, oldest first (only directories named as backups are, with a manifest)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=_sort_key)


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups under ``root`` (0 keeps them all); returns what went."""
    if keep <= 0:
        return []
    doomed = list_backups(root)[:-keep]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def _sort_key(path: Path) -> tuple[str, int]:
    stamp, _, n = path.name.partition("-")
    return stamp, int(n or 1)


def _describe(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _load(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{folder} is not a backup: no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder / MANIFEST} is unreadable: {exc}") from None
    if not isinstance(manifest, dict):
        raise BackupError(f"{folder / MANIFEST} is not a JSON object")
    return manifest


def _save(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _version() -> str:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("tokenhub")
    return "unknown"


def backup_files(sqlite_path: Path, duckdb_path: str, key_file: Path, folder: Path) -> dict[str, Any]:
    """A backup of databases no server has open (the caller holds the data directory's lock) into ``folder``;
    returns the manifest."""
    if not sqlite_path.is_file():
        raise BackupError(f"no TokenHub database at {sqlite_path}")
    source = sqlite3.connect(f"file:{sqlite_path}?mode=rw", uri=True)  # never creates an empty one
    try:
        sqlite = copy_sqlite(source, folder / SQLITE_FILE)
    finally:
        source.close()
    duck = None
    if duckdb_path != ":memory:" and Path(duckdb_path).is_file():
        import duckdb

        conn = duckdb.connect(duckdb_path, config={"enable_external_access": False})
        try:
            duck = copy_duckdb(conn, Path(duckdb_path), folder / DUCKDB_FILE)
        finally:
            conn.close()
    return write_manifest(folder, sqlite=sqlite, duckdb_copy=duck, secret_key_fingerprint=key_fingerprint(key_file))


def archive(folder: Path) -> Path:
    """``folder`` as an uncompressed tar beside it (``<name>.tar``, members under ``<name>/``), for sending."""
    target = folder.with_name(folder.name + ".tar")
    with tarfile.open(target, "w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"{folder.name}/{path.name}", recursive=False)
    return target


def unpack(tar_path: Path, root: Path) -> Path:
    """Unpack a backup archive under ``root`` and verify it against its manifest; returns the backup's
    directory. A partly written or damaged archive leaves nothing behind."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            members = tar.getmembers()
            names = {m.name.partition("/")[0] for m in members}
            if len(names) != 1 or not _NAME.match(next(iter(names))):
                raise BackupError("the archive is not one backup directory")
            for member in members:
                _top, _, leaf = member.name.partition("/")
                if not member.isfile() or not leaf or "/" in leaf or leaf in (".", ".."):
                    raise BackupError(f"unexpected entry in the backup archive: {member.name!r}")
            name = names.pop()
            folder = root / name
            if folder.exists():
                raise BackupError(f"{folder} already exists")
            staging = root / f".{name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            try:
                for member in members:
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file, checked above
                    with source, (staging / member.name.partition("/")[2]).open("wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                verify(staging)
                staging.rename(folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except tarfile.TarError as exc:
        raise BackupError(f"the backup archive is damaged: {exc}") from None
    return folder
