"""`tokenhub serve` as a real subprocess on a free port, for the tests that need the real command line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

__all__ = ["Server", "free_port", "quiet_server_env"]

START_TIMEOUT_SECS = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quiet_server_env(admin_token: str, scratch: Path) -> dict[str, str]:
    """The settings every subprocess server of the tests shares: a known admin token, and nothing that reads the
    machine (credentials file, container detection) or works on its own (host key, health probes); quiet logs."""
    return {
        "TOKENHUB_ADMIN_TOKEN": admin_token,
        "TOKENHUB_HOST_API_KEY_ENABLED": "false",
        "TOKENHUB_HEALTH_PROBE_INTERVAL_SECS": "0",
        "TOKENHUB_CREDENTIALS_FILE": str(scratch / "none"),
        "TOKENHUB_CONTAINER": "false",
        "TOKENHUB_LOG_LEVEL": "error",
    }


class Server:
    """`command` (default `python -m pipeline serve`) as a subprocess on a free port of `bind`; reached on 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        *,
        command: Sequence[str] = (),
        bind: str = "127.0.0.1",
        port: int = 0,
        **env: str,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = list(command) or [sys.executable, "-m", "pipeline", "serve"]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_")},
            "TOKENHUB_DATA_DIR": str(data_dir),
            "TOKENHUB_LISTEN_ADDR": f"{bind}:{self.port}",
            **env,
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.signalled = False

    async def start(self) -> None:
        self.signalled = False
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        # A cold start (imports, DuckDB, PostgreSQL) on a loaded machine can take long: a generous deadline,
        # while a process that exited fails at once.
        deadline = time.monotonic() + START_TIMEOUT_SECS
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    break
                try:
                    async with session.get(f"{self.url}/healthz"):
                        return
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        if self.proc.returncode is None:  # still not listening: stop it, and show what it said
            self.proc.kill()
        _, err = await asyncio.wait_for(self.proc.communicate(), 20)
        raise AssertionError(f"server did not start: {err.decode()[-2000:]}")

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)  # once: a second signal would cut the drain short
        self.signalled = True

    async def kill(self) -> tuple[str, str]:
        """SIGKILL: no drain, no flush, no cleanup (a crash). Returns what it wrote until then."""
        assert self.proc is not None
        self.proc.kill()
        self.signalled = True
        out, err = await asyncio.wait_for(self.proc.communicate(), 20)
        return out.decode(), err.decode()

    async def stop(self) -> tuple[int, str, str]:
        assert self.proc is not None
        if not self.signalled:
            self.terminate()
        out, err = await asyncio.wait_for(self.proc.communicate(), 20)
        return self.proc.returncode or 0, out.decode(), err.decode()
