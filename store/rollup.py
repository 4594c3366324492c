"""Time-series points derived from a batch of request records: one roll-up per (second, metric, model,
provider) holding the sum, count, min and max of that second's samples.

Done in numpy on the batch's columns before they go to DuckDB: about 1 ms per 2000 records, where the
same GROUP BY in DuckDB (single-threaded, over Python-object columns) took about 8 ms and capped the
writer near 50,000 rows/s. The derived metrics:

| metric     | sample per request                     | which requests                      |
|------------|----------------------------------------|-------------------------------------|
| `requests` | 1                                      | all                                 |
| `latency`  | whole-request latency (ms)             | all                                 |
| `errors`   | 1                                      | status >= 400                       |
| `cost`     | cost (USD)                             | status < 400, or any charged one    |
| `tokens`   | input + output tokens                  | tokens > 0, any status              |
| `ttft`     | time to first token (ms)               | streams (ttft > 0)                  |
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["rollup"]


def rollup(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns for ``tsdb_points`` (``second`` as unix seconds) from a batch's record columns."""
    count = len(batch["timestamp"])
    series: dict[tuple[str, str], int] = {}  # (model, provider) -> small integer code
    codes = np.fromiter(
        (series.setdefault(pair, len(series)) for pair in zip(batch["model_id"], batch["provider_id"], strict=True)),
        dtype=np.int64,
        count=count,
    )
    width = max(1, len(series))
    # One integer per (second, series): group ids for every record in a single sort.
    keys, group = np.unique(np.floor(batch["timestamp"]).astype(np.int64) * width + codes, return_inverse=True)
    ok = batch["status"] < 400
    tokens = (batch["input_tokens"] + batch["output_tokens"]).astype(np.float64)
    ones = np.ones(count)
    ttft = batch["ttft_ms"]
    parts = []
    for metric, mask, values in (
        ("requests", None, ones),
        ("latency", None, batch["latency_ms"]),
        ("errors", ~ok, ones),
        ("cost", ok | (batch["cost_usd"] > 0), batch["cost_usd"]),
        ("tokens", tokens > 0, tokens),
        ("ttft", ttft > 0, ttft),
    ):
        groups, samples = (group, values) if mask is None else (group[mask], values[mask])
        if not len(groups):
            continue
        present, index = np.unique(groups, return_inverse=True)
        low = np.full(len(present), np.inf)
        high = np.full(len(present), -np.inf)
        np.minimum.at(low, index, samples)
        np.maximum.at(high, index, samples)
        parts.append((metric, keys[present], np.bincount(index, weights=samples), np.bincount(index), low, high))
    if not parts:
        return {}
    key = np.concatenate([part[1] for part in parts])
    models = np.array([model for model, _ in series], dtype=object)
    providers = np.array([provider for _, provider in series], dtype=object)
    return {
        "second": key // width,
        "metric": np.concatenate([np.full(len(part[1]), part[0], dtype=object) for part in parts]),
        "model_id": models[key % width],
        "provider_id": providers[key % width],
        "value": np.concatenate([part[2] for part in parts]),
        "samples": np.concatenate([part[3] for part in parts]),
        "min_value": np.concatenate([part[4] for part in parts]),
        "max_value": np.concatenate([part[5] for part in parts]),
    }
