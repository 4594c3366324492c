"""The configuration store's connection on PostgreSQL (psycopg 3), shaped like the ``sqlite3.Connection`` the
store's functions already use: ``execute`` / ``executemany`` with ``?`` placeholders, rows readable by
position and by name, and ``with db:`` as one transaction. So every store module runs unchanged on both.

Two things only PostgreSQL does here:
- a transaction that changed configuration (a table the routing snapshot is built from) NOTIFYs
  ``CHANNEL`` just before it commits, so the notification is delivered exactly when the change is visible;
- a lost connection raises ``ConfigStoreUnavailable`` (503) and the next call reconnects, so replicas keep
  serving from their snapshot while PostgreSQL is away and admin calls fail fast and clearly.

Runs on the config store's one thread (``ConfigStore.call``), never on the event loop.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg.rows import RowMaker

from pipeline.errors import ConfigStoreUnavailable

__all__ = ["CHANNEL", "CONFIG_TABLES", "PgConnection", "Row", "changes_config", "connect_kwargs", "to_pyformat"]

T = TypeVar("T")
log = structlog.get_logger("tokenhub.config_store")
CHANNEL = "tokenhub_config"
# The tables `ConfigStore.load_snapshot` reads (and the vault's, whose state decides which keys are usable).
CONFIG_TABLES = frozenset(
    {
        "providers",
        "models",
        "aliases",
        "routing_config",
        "tenants",
        "tenant_pipelines",
        "api_keys",
        "vault",
        "vault_secrets",
    }
)
_WRITE = re.compile(r"^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(\w+)", re.IGNORECASE)
# Housekeeping's batched last-used times touch api_keys but nothing the snapshot holds.
_READ = re.compile(r"^\s*(?:SELECT|PRAGMA|WITH)\b", re.IGNORECASE)
_NOT_CONFIG = re.compile(r"^\s*UPDATE\s+api_keys\s+SET\s+last_used_at\s*=", re.IGNORECASE)


def connect_kwargs(timeout_secs: float) -> dict[str, Any]:
    """libpq options that bound how long a dead server can hold a call: the connect itself, and (keepalives,
    tcp_user_timeout) a socket whose peer vanished without closing it."""
    secs = max(2, round(timeout_secs))  # libpq's connect_timeout has a 2 s floor
    return {
        "connect_timeout": secs,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": secs * 1000,
        "application_name": "tokenhub",
    }


def changes_config(sql: str) -> bool:
    """Whether a statement writes a table the routing snapshot is built from."""
    match = _WRITE.match(sql)
    return bool(match) and match.group(1).lower() in CONFIG_TABLES and not _NOT_CONFIG.match(sql)


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled); quoted text is left alone."""
    out: list[str] = []
    quoted = False
    for char in sql:
        if char == "'":
            quoted = not quoted  # '' inside a literal toggles twice: still quoted
        if char == "%":
            out.append("%%")
        elif char == "?" and not quoted:
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


class Row(tuple[Any, ...]):
    """A result row as ``sqlite3.Row`` offers it: by position, by column name, unpacked, and ``keys()``."""

    _index: dict[str, int] = {}
    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@functools.lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"_index": {name: i for i, name in enumerate(names)}, "_names": names})


def _rows(cursor: Any) -> RowMaker[Row]:
    cls = _row_class(tuple(column.name for column in cursor.description or ()))
    return cls  # called with each row's values: tuple.__new__ takes the sequence


class PgConnection:
    """One PostgreSQL connection in autocommit mode; ``with conn:`` is an explicit transaction (nested ones are
    savepoints). Reconnects on the next call after the server went away."""

    def __init__(self, url: str, *, origin: str, timeout_secs: float = 3.0) -> None:
        self._url = url
        self._origin = origin  # the NOTIFY payload: a replica ignores its own changes (it reloaded already)
        self._kwargs = connect_kwargs(timeout_secs)
        self._conn: psycopg.Connection[Row] | None = None
        self._transactions: list[psycopg.Transaction] = []
        self._notify = False  # the open transaction changed configuration

    # --- the connection ------------------------------------------------------------------------------
    def connect(self) -> psycopg.Connection[Row]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if self._transactions:  # lost mid-transaction: that transaction is gone, say so
            raise ConfigStoreUnavailable(_UNAVAILABLE)
        self._discard()
        try:
            self._conn = psycopg.connect(self._url, autocommit=True, row_factory=_rows, **self._kwargs)
        except psycopg.Error as exc:
            log.warning("config_store_unreachable", error=type(exc).__name__)
            raise ConfigStoreUnavailable(_UNAVAILABLE) from None
        return self._conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        self._transactions.clear()
        self._discard()

    def commit(self) -> None:
        """Each statement outside ``with conn:`` commits by itself; there is nothing pending."""

    def rollback(self) -> None:
        """As ``commit``: a failed ``with conn:`` block has already rolled back."""

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """A lost connection becomes ConfigStoreUnavailable; SQL errors pass through unchanged."""
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                log.warning("config_store_connection_lost", error=type(exc).__name__)
                if not self._transactions:
                    self._discard()
                raise ConfigStoreUnavailable(_UNAVAILABLE) from None
            raise

    def _safely(self, fn: Callable[[psycopg.Connection[Row]], T], *, may_retry: bool) -> T:
        """Run ``fn`` on the connection. A connection that was idle while the server restarted only shows it
        is dead when used: when nothing was done yet (``may_retry``), one fresh connection gets a second try."""
        reused = may_retry and not self._transactions and self._conn is not None and not self._conn.broken
        try:
            with self._guard():
                return fn(self.connect())
        except ConfigStoreUnavailable:
            if not reused:
                raise
        with self._guard():
            return fn(self.connect())

    # --- statements ----------------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Row]:
        if not self._transactions and changes_config(sql):
            with self:  # a configuration write outside a transaction still notifies, atomically with it
                return self.execute(sql, params)
        text = to_pyformat(sql) if params else sql
        cursor = self._safely(lambda conn: conn.execute(text, params or None), may_retry=bool(_READ.match(sql)))  # type: ignore[arg-type]
        if self._transactions and changes_config(sql):
            self._notify = True
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Row]:
        rows = list(rows)
        if not self._transactions:
            with self:
                return self.executemany(sql, rows)
        conn = self.connect()
        with self._guard():
            cursor = conn.cursor()
            if rows:
                cursor.executemany(to_pyformat(sql), rows)  # type: ignore[arg-type]
        if rows and changes_config(sql):
            self._notify = True
        return cursor

    @contextmanager
    def consistent_reads(self) -> Iterator[None]:
        """Several reads as one snapshot of the database (a read-only, repeatable-read transaction)."""
        with self:
            with self._guard():
                self.connect().execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    # --- `with conn:` ----------------------------------------------------------------------------------
    def __enter__(self) -> PgConnection:
        def begin(conn: psycopg.Connection[Row]) -> psycopg.Transaction:
            transaction = conn.transaction()
            transaction.__enter__()
            return transaction

        self._transactions.append(self._safely(begin, may_retry=True))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        transaction = self._transactions.pop()
        outermost = not self._transactions
        try:
            with self._guard():
                if exc_type is None and outermost and self._notify:
                    try:  # queued by the server and delivered on commit: never before the change is visible
                        self.connect().execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._origin))
                    except BaseException as error:
                        transaction.__exit__(type(error), error, error.__traceback__)
                        raise
                return bool(transaction.__exit__(exc_type, exc, tb))
        finally:
            if outermost:
                self._notify = False
                conn = self._conn
                if conn is not None and (conn.closed or conn.broken):
                    self._discard()


_UNAVAILABLE = (
    "the configuration store (PostgreSQL) is unreachable: this replica keeps serving its last configuration;"
    " admin changes and reads that need the store are refused until it is back"
)
