"""Where a stream's first token's time goes, read off the wire: streams sent one at a time through a proxy are
captured on the loopback interface (tcpdump), and each gives two spans with the kernel's timestamps:

  in     the client's request reaching the proxy -> the proxy's request leaving for the provider
  relay  the provider's first content token reaching the proxy -> the proxy's write of it to the client

Nothing inside the server is timed, and the client's own costs are left out. The two spans add up to what the
proxy adds to the first token (the harness's `+ttft1_dir`), except for the client's extra hop and, where the
response head comes with the first token, the client's handling of it (the client's time to the first token,
printed too, holds both).

Two targets run at once on one core, their streams alternating, so a machine whose speed drifts (a shared VM)
moves both alike: compare within a run. A target is a TokenHub checkout (a directory: started by its
scripts/bench-tokenhub.sh) or any proxy's command, with {port} and {upstream} in it. The provider is
scripts/bench_fake_provider.py: the role chunk at once, the first token --ttft-ms later.

    python scripts/first_token_probe.py --a . --b /tmp/other-checkout [--streams 300]
    python scripts/first_token_probe.py --a . --b 'python passthrough.py --port {port} --upstream {upstream}'

Needs tcpdump and the right to capture (root, or CAP_NET_RAW); docs/benchmark.md has runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from scripts.server_process import free_port  # noqa: E402

# A chunk that carries a token: the role chunk's content is "".
TOKEN = re.compile(rb'"content": ?"[^"]')
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Hello"}], "stream": True}

__all__ = ["Spans", "read_pcap", "spans"]


@dataclass
class Spans:
    inbound: list[float] = field(default_factory=list)  # seconds, one per stream
    relay: list[float] = field(default_factory=list)


def read_pcap(data: bytes) -> list[tuple[float, int, int, bytes]]:
    """(time, source port, destination port, payload) of every IPv4 TCP segment that carries data, from a
    pcap file (micro- or nanosecond timestamps; Ethernet, Linux cooked or raw/loopback framing)."""
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise ValueError("not a little-endian pcap file")
    scale = 1e-9 if magic == 0xA1B23C4D else 1e-6
    link = struct.unpack("<I", data[20:24])[0]
    skip = {1: 14, 113: 16}.get(link, 4 if link == 0 else 0)
    packets = []
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, captured, _ = struct.unpack("<IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        ip = frame[skip:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:  # IPv4, TCP
            continue
        tcp = ip[(ip[0] & 15) * 4 :]
        source, destination = struct.unpack(">HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            packets.append((seconds + fraction * scale, source, destination, payload))
    return packets


def spans(packets: list[tuple[float, int, int, bytes]], proxy_port: int, provider_port: int) -> Spans:
    """Each stream's two spans, for streams that reach `proxy_port` one at a time (others may interleave
    between them, not within one)."""
    found = Spans()
    state, arrived, upstream_port, token_in = "idle", 0.0, 0, 0.0
    for at, source, destination, payload in packets:
        if state == "idle" and destination == proxy_port and payload.startswith(b"POST "):
            state, arrived = "routing", at
        elif state == "routing" and destination == provider_port and payload.startswith(b"POST "):
            found.inbound.append(at - arrived)
            state, upstream_port = "waiting", source
        elif state == "waiting" and source == provider_port and destination == upstream_port and TOKEN.search(payload):
            state, token_in = "relaying", at
        elif state == "relaying" and source == proxy_port and TOKEN.search(payload):
            found.relay.append(at - token_in)
            state = "idle"
    return found


@dataclass
class Target:
    label: str
    port: int
    key: str
    process: subprocess.Popen[bytes]


def _pinned(command: list[str], cpu: int) -> list[str]:
    """On its own core (as the harness does) when there is more than one and taskset exists."""
    return ["taskset", "-c", str(cpu), *command] if (os.cpu_count() or 1) > 1 and shutil.which("taskset") else command


def _wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"first_token_probe: a process on port {port} exited during start-up")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"first_token_probe: nothing listens on port {port} after {seconds:g}s")


def start_target(spec: str, upstream: str, folder: Path) -> Target:
    port = free_port()
    if Path(spec).is_dir():  # a TokenHub checkout: its benchmark start script configures it and writes a key
        key_file = folder / f"key-{port}"
        command = ["bash", str(Path(spec).resolve() / "scripts" / "bench-tokenhub.sh"), str(port), upstream]
        env = {**os.environ, "TOKENHUB_LOG_LEVEL": "warning"}
        process = subprocess.Popen(
            _pinned([*command, str(key_file)], 1), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while not (key_file.exists() and key_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"first_token_probe: TokenHub from {spec} did not start")
            time.sleep(0.1)
        return Target(spec, port, key_file.read_text().strip(), process)
    command = shlex.split(spec.format(port=port, upstream=upstream))
    process = subprocess.Popen(_pinned(command, 1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port, process)
    return Target(spec, port, "probe", process)


async def _streams(targets: list[Target], count: int) -> dict[int, list[float]]:
    """`count` streams per target, one at a time, alternating; each one's time to its first token (seconds)."""
    ttft: dict[int, list[float]] = {t.port: [] for t in targets}
    async with aiohttp.ClientSession() as session:
        for index in range(count):
            for target in targets if index % 2 else reversed(targets):
                url = f"http://127.0.0.1:{target.port}/v1/chat/completions"
                started, first = time.perf_counter(), 0.0
                headers = {"Authorization": f"Bearer {target.key}"}
                async with session.post(url, json=BODY, headers=headers) as response:
                    if response.status != 200:
                        raise SystemExit(f"first_token_probe: {target.label} answered {response.status}")
                    async for line in response.content:
                        if not first and TOKEN.search(line):
                            first = time.perf_counter()
                ttft[target.port].append(first - started)
    return ttft


def _capture(path: Path, ports: list[int]) -> subprocess.Popen[bytes]:
    rule = " or ".join(f"tcp port {port}" for port in ports)
    command = ["tcpdump", "-i", "lo", "-nn", "-s", "0", "--time-stamp-precision=nano", "-w", str(path), rule]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    line = process.stderr.readline().decode()  # "listening on lo, ..." once it captures
    if "listening" not in line:
        raise SystemExit(f"first_token_probe: tcpdump did not start: {line.strip() or process.wait()}")
    return process


def _quartiles(values: list[float]) -> str:
    q1, q2, q3 = statistics.quantiles([v * 1e6 for v in values], n=4)
    return f"{q2:6.0f} µs (quartiles {q1:.0f} to {q3:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", default=str(ROOT), help="a TokenHub checkout or a proxy command (default: this one)")
    parser.add_argument("--b", required=True, help="the other target")
    parser.add_argument("--streams", type=int, default=300, help="streams per target (default 300)")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="the provider's wait before the first token")
    options = parser.parse_args()
    if not shutil.which("tcpdump"):
        raise SystemExit("first_token_probe: needs tcpdump (Debian's tcpdump package) and the right to capture")
    folder = Path(tempfile.mkdtemp(prefix="first-token-probe-"))
    provider_port = free_port()
    provider_command = [sys.executable, str(ROOT / "scripts" / "bench_fake_provider.py"), "--port", str(provider_port)]
    provider = subprocess.Popen(
        _pinned([*provider_command, "--stream-ttft-ms", str(options.ttft_ms)], 0), stdout=subprocess.DEVNULL
    )
    targets: list[Target] = []
    try:
        _wait_for_port(provider_port, provider)
        upstream = f"http://127.0.0.1:{provider_port}"
        targets = [start_target(spec, upstream, folder) for spec in (options.a, options.b)]
        asyncio.run(_streams(targets, 20))  # warm-up: connections open, code loaded
        capture = _capture(folder / "capture.pcap", [provider_port, *(t.port for t in targets)])
        ttft = asyncio.run(_streams(targets, options.streams))
        time.sleep(0.5)
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=10)
        packets = read_pcap((folder / "capture.pcap").read_bytes())
        for target in targets:
            found = spans(packets, target.port, provider_port)
            print(f"{target.label}: {len(found.relay)} streams")
            print(f"  in     {_quartiles(found.inbound)}")
            print(f"  relay  {_quartiles(found.relay)}")
            print(f"  client's time to the first token {statistics.median(ttft[target.port]) * 1000:.3f} ms (median)")
    finally:
        for process in [*(t.process for t in targets), provider]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*(t.process for t in targets), provider]:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
