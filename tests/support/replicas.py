"""Several TokenHub replicas in one event loop, sharing one Redis key prefix: real aiohttp servers on 127.0.0.1,
each with its own data directory (SQLite, DuckDB). The first is configured through its admin API; the others
start from a copy of its configuration store (same providers, models, API keys and secret key), as replicas
sharing a configuration would see it."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.app import create_app
from pipeline.settings import load_settings
from tests.conftest import ADMIN_TOKEN, Hub
from tests.fakes.openai_fake import FakeOpenAI

__all__ = ["replica_env", "start_replicas"]


def replica_env(data_dir: Path, redis_url: str, prefix: str) -> dict[str, str]:
    return {
        "TOKENHUB_DATA_DIR": str(data_dir),
        "TOKENHUB_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOKENHUB_PROVIDER_TIMEOUT_SECS": "5",
        "TOKENHUB_RATE_LIMIT_RPS": "1000",
        "TOKENHUB_RATE_LIMIT_BURST": "1000",
        "TOKENHUB_ADMIN_RATE_LIMIT_RPS": "1000",
        "TOKENHUB_ADMIN_RATE_LIMIT_BURST": "1000",
        "TOKENHUB_VAULT_KDF_TIME_COST": "1",
        "TOKENHUB_VAULT_KDF_MEMORY_KIB": "64",
        "TOKENHUB_VAULT_KDF_PARALLELISM": "1",
        "TOKENHUB_VAULT_KDF_ALLOW_WEAK": "true",
        "TOKENHUB_HEALTH_PROBE_INTERVAL_SECS": "0",
        "TOKENHUB_EXPLORATION_TEMP": "0",
        "TOKENHUB_CREDENTIALS_FILE": str(data_dir / "no-credentials"),
        "TOKENHUB_HOST_API_KEY_ENABLED": "false",
        "TOKENHUB_CONTAINER": "false",
        "TOKENHUB_REDIS_URL": redis_url,
        "TOKENHUB_REDIS_PREFIX": prefix,
        "TOKENHUB_REDIS_TIMEOUT_MS": "3000",
    }


async def start_replicas(
    aiohttp_client: Callable[..., Any],
    fake: FakeOpenAI,
    tmp_path: Path,
    count: int,
    *,
    redis_url: str,
    prefix: str,
    configure: Callable[[Hub], Any],
    **overrides: Any,
) -> list[Hub]:
    """`count` replicas; `configure(first)` (async) sets up providers, models and keys on the first one."""
    first_dir = tmp_path / "replica-0"
    settings = load_settings(replica_env(first_dir, redis_url, prefix), **overrides)
    first = Hub(await aiohttp_client(create_app(settings)), fake)
    await configure(first)
    hubs = [first]
    for index in range(1, count):
        data_dir = tmp_path / f"replica-{index}"
        data_dir.mkdir(parents=True)
        await _copy_config(first, data_dir)
        settings = load_settings(replica_env(data_dir, redis_url, prefix), **overrides)
        hubs.append(Hub(await aiohttp_client(create_app(settings)), fake))
    return hubs


async def _copy_config(source: Hub, data_dir: Path) -> None:
    services = source.services
    shutil.copy(services.settings.data_dir / ".secret-key", data_dir / ".secret-key")
    target = data_dir / services.settings.sqlite_path.name

    def backup(db: sqlite3.Connection) -> None:
        with sqlite3.connect(target) as out:
            db.backup(out)

    await services.config.call(backup, services.config.db)
