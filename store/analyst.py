"""Analyst SQL: one read-only SELECT over the request log and the time series, sandboxed in layers.

1. DuckDB's own parser: exactly one statement, and it must be a SELECT (WITH, FROM-first, VALUES,
   DESCRIBE and SUMMARIZE parse as SELECT too). COPY, ATTACH, INSTALL, LOAD, SET, PRAGMA, EXPORT, CALL,
   EXPLAIN and every DDL/DML statement are refused here.
2. DuckDB's own syntax tree (``json_serialize_sql``): every table function must be on an allow list (so
   ``checkpoint()``, ``query('...')`` or ``arrow_scan(<pointer>)`` are refused, not just file readers),
   and a few scalar functions are refused: side-effecting ones, and those that read the server's
   environment or configuration (``getenv``, ``current_setting``: paths, limits, the home directory).
3. Execution: a fresh connection inside a READ ONLY transaction, on a database opened with external
   access disabled for good (store/analytics.py): even a query that slipped past 1 and 2 cannot write,
   read a file, reach the network or load an extension. (Changing a setting takes a SET statement,
   which 1 refuses; the configuration is not locked, as the writer's cache trim lowers memory_limit.)
4. Cluster views (store/analytics.py): with a log export directory, ``request_log`` and ``tsdb_points``
   are views over every replica's Parquet segments plus this database's unexported rows. The views may
   read the export directory (the only path the database may touch); user SQL still cannot name a file
   or call a file reader (2 refuses ``read_parquet``), so segments are reachable only through the views.
5. Limits: at most ``max_rows`` rows and about ``max_bytes`` bytes of JSON are fetched (the row limit is
   pushed into the plan), the query is interrupted after ``timeout`` seconds, and the database's
   ``memory_limit`` and ``max_temp_directory_size`` (store/analytics.py) bound what any query may hold.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import duckdb
import orjson

from store.analytics import Cursor

__all__ = [
    "ANALYST_TABLES",
    "QueryFailed",
    "QueryRefused",
    "QueryTimedOut",
    "analyst_schema",
    "check_statement",
    "run_query",
]

MAX_SQL_CHARS = 100_000
FETCH_BATCH = 1024
_PATH_CHARS = "/\\:."  # a table name with one of these is a file path or URL (schemas are parsed apart)
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "repeat",
        "json_each",
        "json_tree",
        "summary",
        "pragma_table_info",
        "pragma_version",
        "duckdb_tables",
        "duckdb_columns",
        "duckdb_views",
        "duckdb_types",
        "duckdb_functions",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_constraints",
        "duckdb_indexes",
        "pg_timezone_names",
        "icu_calendar_names",
    }
)
DENIED_FUNCTIONS = frozenset(
    {"nextval", "currval", "setseed", "getenv", "query", "query_table", "current_setting", "getvariable"}
)


# The tables analyst queries are meant for (the refusal messages name them too); the schema lists these.
ANALYST_TABLES = ("request_log", "tsdb_points")


class QueryRefused(Exception):
    """The statement is not allowed (a different statement kind, a forbidden function, file access)."""


class QueryFailed(Exception):
    """An allowed statement that DuckDB could not run (syntax, unknown column, conversion, ...)."""


class QueryTimedOut(Exception):
    pass


def check_statement(db: Cursor, sql: str) -> None:
    """Raise QueryRefused / QueryFailed unless ``sql`` is one SELECT using only allowed functions."""
    if len(sql) > MAX_SQL_CHARS:
        raise QueryRefused(f"the query is longer than {MAX_SQL_CHARS} characters")
    try:
        statements = db.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryFailed(f"syntax error: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise QueryRefused(f"exactly one statement is allowed; found {len(statements)}")
    try:
        kind = statements[0].type.name
    except ValueError:  # a statement kind this DuckDB client cannot even name (e.g. UPDATE EXTENSIONS)
        kind = "unknown"
    if kind != "SELECT":
        raise QueryRefused(f"only SELECT (or WITH ... SELECT) is allowed; refused statement kind: {kind}")
    tree = json.loads(db.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        raise QueryRefused(f"this SELECT cannot be checked, so it is refused: {tree.get('error_message', '')}")
    table_functions: set[str] = set()
    functions: set[str] = set()
    tables: set[str] = set()
    _collect(tree, table_functions, functions, tables)
    if paths := sorted(name for name in tables if any(c in name for c in _PATH_CHARS)):
        # FROM 'file.csv' is a replacement scan: DuckDB would read the file if it could.
        raise QueryRefused(f"table name(s) that look like files or URLs are not allowed: {', '.join(paths)}")
    if refused := sorted(table_functions - ALLOWED_TABLE_FUNCTIONS):
        raise QueryRefused(
            f"table function(s) not allowed: {', '.join(refused)}; analyst queries read the request_log and "
            f"tsdb_points tables (allowed table functions: {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))})"
        )
    if refused := sorted(functions & DENIED_FUNCTIONS):
        raise QueryRefused(f"function(s) not allowed: {', '.join(refused)}")


def run_query(
    db: Cursor,
    sql: str,
    *,
    max_rows: int,
    max_bytes: int,
    timeout: float,
    new_cursor: Callable[[], Cursor],
    retry_on: Callable[[duckdb.Error], bool] = lambda exc: False,
) -> dict[str, Any]:
    """Check, then run ``sql`` on a fresh read-only connection. Runs on a reader thread. ``retry_on`` sees a
    failure first: True (it dropped a vanished or unreadable segment from the cluster views) runs it again."""
    check_statement(db, sql)
    for _ in range(3):
        try:
            return _execute(sql, max_rows, max_bytes, timeout, new_cursor, retry_on)
        except _Retry:
            continue
    return _execute(sql, max_rows, max_bytes, timeout, new_cursor)  # the last try: its failure is the answer


class _Retry(Exception):
    """The cluster views changed under a failed query: run it again."""


def _execute(
    sql: str,
    max_rows: int,
    max_bytes: int,
    timeout: float,
    new_cursor: Callable[[], Cursor],
    retry_on: Callable[[duckdb.Error], bool] = lambda exc: False,
) -> dict[str, Any]:
    started = time.perf_counter()
    conn = new_cursor()
    timer = threading.Timer(timeout, conn.interrupt)  # interrupt() is safe to call from another thread
    try:
        conn.execute("BEGIN TRANSACTION READ ONLY")
        timer.start()
        relation = conn.sql(sql)
        columns = [
            {"name": name, "type": str(kind)} for name, kind in zip(relation.columns, relation.types, strict=True)
        ]
        rows, truncated_by = _fetch(relation.limit(max_rows + 1), max_rows, max_bytes)
    except duckdb.InterruptException:
        raise QueryTimedOut(f"the query ran longer than the {timeout:g} s limit and was stopped") from None
    except duckdb.OutOfMemoryException as exc:
        raise QueryFailed(
            f"the query needs more memory than the analytics limit allows ({_first_line(exc)}); aggregate more"
            " or select fewer rows"
        ) from None
    except duckdb.PermissionException as exc:
        raise QueryRefused(f"file, network and extension access are disabled: {_first_line(exc)}") from None
    except duckdb.Error as exc:
        if retry_on(exc):
            raise _Retry from None
        raise QueryFailed(_first_line(exc)) from None
    finally:
        timer.cancel()
        conn.close()  # also ends the read-only transaction
    return {
        "columns": columns,
        "rows": [list(row) for row in rows],
        "row_count": len(rows),
        "truncated": truncated_by is not None,
        "truncated_by": truncated_by,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def analyst_schema(db: Cursor) -> dict[str, Any]:
    """The analyst tables' columns as DuckDB's catalog has them now (an older file gains columns on open, so
    the catalog, not the CREATE statements, is the truth). Runs on a reader thread."""
    rows = db.execute(
        "SELECT database_name = 'temp' AS cluster, table_name, column_name, data_type, is_nullable"
        " FROM duckdb_columns() WHERE database_name IN (current_database(), 'temp') AND schema_name = 'main'"
        " AND table_name IN ? ORDER BY table_name, cluster DESC, column_index",
        [list(ANALYST_TABLES)],
    ).fetchall()
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in ANALYST_TABLES}
    shadowed: set[str] = set()  # a cluster view (store/analytics.py) is what the name means on this cursor
    for cluster, table, column, kind, nullable in rows:
        if cluster:
            shadowed.add(table)
        elif table in shadowed:
            continue
        tables[table].append({"name": column, "type": kind, "nullable": bool(nullable)})
    return {"tables": [{"name": name, "columns": columns} for name, columns in tables.items() if columns]}


def _fetch(relation: duckdb.DuckDBPyRelation, max_rows: int, max_bytes: int) -> tuple[list[Any], str | None]:
    """Rows in batches until ``max_rows`` or about ``max_bytes`` of JSON (each row measured as the answer
    will encode it, near enough): (rows, None | "rows" | "bytes")."""
    rows: list[Any] = []
    size = 0
    for row in relation.iter_rows(FETCH_BATCH):
        if len(rows) == max_rows:
            return rows, "rows"
        size += len(orjson.dumps(row, default=str))
        if size > max_bytes:
            return rows, "bytes"
        rows.append(row)
    return rows, None


def _collect(node: Any, table_functions: set[str], functions: set[str], tables: set[str]) -> None:
    if isinstance(node, dict):
        name = node.get("function_name")
        if isinstance(name, str):
            functions.add(name.lower())
        if node.get("type") == "TABLE_FUNCTION":
            inner = node.get("function") or {}
            table_functions.add(str(inner.get("function_name", "")).lower())
        elif node.get("type") == "BASE_TABLE":
            tables.add(str(node.get("table_name", "")))
        for value in node.values():
            _collect(value, table_functions, functions, tables)
    elif isinstance(node, list):
        for value in node:
            _collect(value, table_functions, functions, tables)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
