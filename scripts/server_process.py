"""`tokenhub serve` in a subprocess on a free port with a throwaway data directory and a random admin token, and
a small admin client: what the soak (scripts/soak.py) drives and watches (its pid, for /proc)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ServerProcess", "cpu_secs", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_secs(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """The real server; keyword arguments are TOKENHUB_* settings over the load-test defaults below."""

    def __init__(self, **overrides: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_token = os.urandom(16).hex()
        self._data = tempfile.TemporaryDirectory(prefix="tokenhub-server-")
        env = dict(
            os.environ,
            TOKENHUB_DATA_DIR=self._data.name,
            TOKENHUB_LISTEN_ADDR=f"127.0.0.1:{self.port}",
            TOKENHUB_ADMIN_TOKEN=self.admin_token,
            TOKENHUB_RATE_LIMIT_RPS="100000",  # the load comes from one address
            TOKENHUB_RATE_LIMIT_BURST="100000",
            TOKENHUB_FEEDBACK_RATE_LIMIT_RPS="100000",
            TOKENHUB_FEEDBACK_RATE_LIMIT_BURST="100000",
            TOKENHUB_BANDIT_SEED="1",
            TOKENHUB_LOG_LEVEL="warning",
            TOKENHUB_SHUTDOWN_DRAIN_SECS="5",
        )
        env.update(overrides)
        self._proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve"], cwd=ROOT, env=env)
        self.pid = self._proc.pid
        self.key = ""

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.base + "/healthz"):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("TokenHub did not start")

    async def admin(self, session: aiohttp.ClientSession, method: str, path: str, body: object = None) -> dict:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with session.request(method, f"{self.base}/admin/v1{path}", json=body, headers=headers) as resp:
            data = await resp.json()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=30)
        self._data.cleanup()
