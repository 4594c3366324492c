"""scripts/bench-tokenhub.sh, the benchmark's start command: it serves a chat request with the key it wrote, on
the interpreter BENCH_PYTHON names (a relative path taken from the repository), and cleans up after the server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from tests.fakes.openai_fake import FakeOpenAI
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parent.parent


async def test_the_start_command_serves_with_the_key_it_wrote_and_cleans_up(fake: FakeOpenAI, tmp_path: Path) -> None:
    key_file, port = tmp_path / "key", free_port()
    python = os.path.relpath(sys.executable, ROOT) if Path(sys.executable).is_relative_to(ROOT) else sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENHUB_")}
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "scripts" / "bench-tokenhub.sh"),
        str(port),
        fake.base_url.removesuffix("/v1"),
        str(key_file),
        env={**env, "BENCH_PYTHON": python, "TOKENHUB_LOG_LEVEL": "warning"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,  # the relative interpreter path must not depend on where the harness runs it
    )
    try:
        for _ in range(600):
            if key_file.exists() and key_file.read_text().strip():
                break
            assert proc.returncode is None, "the server exited during set-up"
            await asyncio.sleep(0.05)
        key = key_file.read_text().strip()
        async with aiohttp.ClientSession() as session:
            body = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
            url, headers = f"http://127.0.0.1:{port}/v1/chat/completions", {"Authorization": f"Bearer {key}"}
            async with session.post(url, json=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["model"] == "fake-gpt"
    finally:
        proc.send_signal(signal.SIGTERM)  # the script exec'd the server: this pid is the server's
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    for _ in range(100):  # the detached helper removes the key and the data directory once the server is gone
        if not key_file.exists():
            break
        await asyncio.sleep(0.1)
    assert not key_file.exists()
