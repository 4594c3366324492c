"""Model prices from a LiteLLM price table (``model_prices_and_context_window.json``): parse it, and apply
it to the stored models (config.md §4).

``parse_price_table`` turns the table's bytes into ``{name: PriceEntry}``, skipping malformed entries.
``apply_prices`` runs on the config store's thread: for each stored model whose provider is not vLLM,
unless it carries a non-zero manual price, a table entry named like the model (its id, else the name
it is sent upstream as) sets both prices per 1k tokens, ``pricing_source = 'litellm'``, and the context
window when it is still 0. Only rows that change are written, in one transaction.
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["PriceEntry", "PriceTableError", "PricingOutcome", "apply_prices", "parse_price_table"]

SKIPPED_PROVIDER_TYPES = frozenset({"vllm"})  # self-hosted: a public list price means nothing
MAX_COST_PER_TOKEN = 1.0  # a dollar a token is no real price: such an entry is malformed
MAX_CONTEXT_TOKENS = 100_000_000


class PriceTableError(ValueError):
    """The table as a whole is unusable (not JSON, not an object, no usable entry)."""


@dataclass(frozen=True, slots=True)
class PriceEntry:
    input_per_1k: float
    output_per_1k: float
    max_input_tokens: int = 0  # 0 = the table does not say


@dataclass(frozen=True, slots=True)
class PricingOutcome:
    updated: tuple[str, ...]  # model ids whose row changed
    unchanged: int  # matched a table entry that already agreed with the row
    manual: int  # kept: a non-zero manual price
    unmatched: int  # no entry under the model's id or upstream name


def parse_price_table(raw: bytes) -> tuple[dict[str, PriceEntry], int]:
    """(entries by model name, how many entries were malformed and skipped). Raises PriceTableError."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PriceTableError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PriceTableError("expected a JSON object of model name -> prices")
    entries: dict[str, PriceEntry] = {}
    skipped = 0
    for name, value in data.items():
        if name == "sample_spec":  # LiteLLM's documentation of the format, not a model
            continue
        entry = _entry(value)
        if entry is None:
            skipped += 1
        else:
            entries[name] = entry
    if not entries:
        raise PriceTableError(f"no usable entry ({skipped} malformed)")
    return entries, skipped


def _entry(value: Any) -> PriceEntry | None:
    if not isinstance(value, dict):
        return None
    prices = (value.get("input_cost_per_token"), value.get("output_cost_per_token"))
    if not all(_is_cost(p) for p in prices):
        return None
    window = value.get("max_input_tokens")
    if not (isinstance(window, int) and not isinstance(window, bool) and 0 < window <= MAX_CONTEXT_TOKENS):
        window = 0
    return PriceEntry(_per_1k(prices[0]), _per_1k(prices[1]), window)


def _is_cost(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= MAX_COST_PER_TOKEN
    )


def _per_1k(per_token: float) -> float:
    return round(per_token * 1000, 12)  # 1000 * 2.5e-06 is 0.0025000000000000005 in binary floating point


def apply_prices(db: sqlite3.Connection, table: dict[str, PriceEntry]) -> PricingOutcome:
    """Update the stored models from ``table`` (on the config store's thread)."""
    rows = db.execute(
        "SELECT m.id, m.upstream_model, m.input_per_1k, m.output_per_1k, m.max_context_tokens, m.pricing_source,"
        " p.type FROM models m JOIN providers p ON p.id = m.provider_id ORDER BY m.id"
    ).fetchall()
    updates: list[tuple[float, float, int, float, str]] = []
    unchanged = manual = unmatched = 0
    for model_id, upstream, input_per_1k, output_per_1k, window, source, provider_type in rows:
        if provider_type in SKIPPED_PROVIDER_TYPES:
            continue
        if source == "manual" and (input_per_1k or output_per_1k):
            manual += 1
            continue
        entry = table.get(model_id) or (table.get(upstream) if upstream else None)
        if entry is None:
            unmatched += 1
            continue
        new_window = window or entry.max_input_tokens
        if (input_per_1k, output_per_1k, window, source) == (
            entry.input_per_1k,
            entry.output_per_1k,
            new_window,
            "litellm",
        ):
            unchanged += 1
            continue
        updates.append((entry.input_per_1k, entry.output_per_1k, new_window, time.time(), model_id))
    if updates:
        with db:
            db.executemany(
                "UPDATE models SET input_per_1k = ?, output_per_1k = ?, max_context_tokens = ?,"
                " pricing_source = 'litellm', updated_at = ? WHERE id = ?"
                " AND NOT (pricing_source = 'manual' AND (input_per_1k != 0 OR output_per_1k != 0))",
                updates,
            )
    return PricingOutcome(tuple(u[-1] for u in updates), unchanged, manual, unmatched)
