"""Real Redis and PostgreSQL for the scale-out tests: the machine's services with a fresh key prefix or a fresh
database per test, and a private `redis-server` on a free port for the tests that stop and restart Redis."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import psycopg
import redis.asyncio as aioredis

from tests.support.server import free_port

__all__ = ["REDIS_URL", "PrivateRedis", "fresh_postgres", "fresh_redis_prefix", "private_redis"]

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@asynccontextmanager
async def fresh_redis_prefix(url: str = REDIS_URL) -> AsyncIterator[str]:
    """A key prefix no other test uses on the shared Redis; its keys are deleted afterwards."""
    prefix = f"tokenhub-test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        client = aioredis.Redis.from_url(url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new, empty database on the machine's PostgreSQL; dropped (connections closed) afterwards."""
    name = f"tokenhub_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PrivateRedis:
    """`redis-server` on a free port, nothing kept on disk; `stop()` and `start()` again mid-test (same port)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = aioredis.Redis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    if await client.ping():
                        return
                except (OSError, aioredis.ConnectionError):
                    await asyncio.sleep(0.025)
            raise RuntimeError("redis-server did not start")
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@asynccontextmanager
async def private_redis() -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis()
    await server.start()
    try:
        yield server
    finally:
        server.stop()
