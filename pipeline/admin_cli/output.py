"""Readable output for people: a list of records as an aligned table, anything else as ``key: value`` lines.

Scripts use ``--json``, which prints the server's body exactly as it came.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["render"]

_MAX_CELL = 60
_AUTO_COLUMNS = 8


def render(data: Any, columns: Sequence[str] = ()) -> str:
    rows_key = _rows_key(data)
    if rows_key is None:
        return _pairs(data) if isinstance(data, dict) else _cell(data)
    rows = data[rows_key]
    lines = [_table(rows, columns or _auto_columns(rows))] if rows else [f"(no {rows_key})"]
    rest = {k: v for k, v in data.items() if k != rows_key and not isinstance(v, dict | list)}
    if rest:
        lines.append(_pairs(rest))
    return "\n".join(lines)


def _rows_key(data: Any) -> str | None:
    """The key of the first list of records in an answer object (``items``, ``keys``, ``logs``, ...)."""
    if not isinstance(data, dict):
        return None
    for key, value in data.items():
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return key
    return None


def _auto_columns(rows: list[dict[str, Any]]) -> list[str]:
    scalars = [k for k, v in rows[0].items() if not isinstance(v, dict | list)]
    return scalars[:_AUTO_COLUMNS]


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([header.rstrip(), *body])


def _pairs(data: dict[str, Any]) -> str:
    width = max((len(k) for k in data), default=0)
    return "\n".join(f"{k.ljust(width)}  {_cell(v, limit=None)}" for k, v in data.items())


def _cell(value: Any, limit: int | None = _MAX_CELL) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
