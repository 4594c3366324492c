"""The first-token probe's reading of a capture (scripts/first_token_probe.py): the spans come from the right
packets, whatever else is on the wire. The capture itself needs tcpdump and root, so it is run by hand
(docs/benchmark.md); the fake provider's stream and the bare proxy it is compared with are checked here too."""

from __future__ import annotations

import json
import struct
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from scripts.bench_fake_provider import app
from scripts.bench_passthrough import build_app
from scripts.first_token_probe import read_pcap, spans

PROXY, OTHER_PROXY, PROVIDER = 18190, 18191, 18181
ROLE = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
TOKEN = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'


def _pcap(packets: list[tuple[float, int, int, bytes]], *, nano: bool = True) -> bytes:
    """A pcap file of IPv4/TCP segments in Ethernet frames, as tcpdump writes them on lo."""
    out = [struct.pack("<IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for at, source, destination, payload in packets:
        tcp = struct.pack(">HHIIBBHHH", source, destination, 0, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, b"\x7f\0\0\1", b"\x7f\0\0\1") + tcp
        frame = b"\0" * 12 + b"\x08\x00" + ip
        seconds = int(at)
        fraction = round((at - seconds) * (1e9 if nano else 1e6))
        out.append(struct.pack("<IIII", seconds, fraction, len(frame), len(frame)) + frame)
    return b"".join(out)


def test_each_stream_gives_its_in_and_relay_spans() -> None:
    wire = [
        (10.0000, 50001, PROXY, b"POST /v1/chat/completions HTTP/1.1\r\n"),
        (10.0004, 40001, PROVIDER, b"POST /v1/chat/completions HTTP/1.1\r\n"),  # in: 400 us
        (10.0010, PROVIDER, 40001, b"HTTP/1.1 200 OK\r\n\r\n" + ROLE),  # the role chunk is no token
        (10.0100, PROVIDER, 40002, TOKEN),  # another connection's token: not this stream's
        (10.0200, PROVIDER, 40001, TOKEN),
        (10.0203, PROXY, 50001, b"HTTP/1.1 200 OK\r\n\r\n" + ROLE + TOKEN),  # relay: 300 us
        (10.0500, 50002, OTHER_PROXY, b"POST /v1/chat/completions HTTP/1.1\r\n"),  # the other target's stream
        (10.0501, 40002, PROVIDER, b"POST /v1/chat/completions HTTP/1.1\r\n"),
        (10.0700, PROVIDER, 40002, TOKEN),
        (10.0702, OTHER_PROXY, 50002, TOKEN),
        (11.0000, 50001, PROXY, b"POST /v1/chat/completions HTTP/1.1\r\n"),
        (11.0005, 40001, PROVIDER, b"POST /v1/chat/completions HTTP/1.1\r\n"),  # in: 500 us
        (11.0200, PROVIDER, 40001, ROLE + TOKEN),
        (11.0202, PROXY, 50001, TOKEN),  # relay: 200 us
    ]
    for nano in (True, False):
        packets = read_pcap(_pcap(wire, nano=nano))
        assert len(packets) == len(wire)
        found = spans(packets, PROXY, PROVIDER)
        assert [round(s * 1e6) for s in found.inbound] == [400, 500]
        assert [round(s * 1e6) for s in found.relay] == [300, 200]
        other = spans(packets, OTHER_PROXY, PROVIDER)
        assert [round(s * 1e6) for s in other.inbound] == [100]
        assert [round(s * 1e6) for s in other.relay] == [200]


async def test_the_fake_provider_streams_its_role_chunk_then_the_tokens() -> None:
    async with TestClient(TestServer(app(stream_ttft_ms=1, stream_tokens=3))) as client:
        response = await client.post("/v1/chat/completions", json={"model": "m", "messages": [], "stream": True})
        events = [e.removeprefix("data: ") for e in (await response.text()).split("\n\n") if e]
        plain = await (await client.post("/v1/chat/completions", json={"model": "m", "messages": []})).json()
    assert response.headers["Content-Type"] == "text/event-stream" and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1] if c["choices"]) == (
        "word0 word1 word2 "
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["completion_tokens"] == 3
    assert plain["choices"][0]["message"]["content"] == "ok"


@pytest.mark.parametrize("hold_head", [False, True])
async def test_the_passthrough_relays_a_stream_holding_its_head_only_when_asked(hold_head: bool) -> None:
    """The probe's floor: the bare proxy sends the head as soon as the provider does; with --hold-head, the head
    leaves with the first token (the provider waits a second before it), as TokenHub's does."""
    async with TestClient(TestServer(app(stream_ttft_ms=1000, stream_tokens=2))) as provider:
        proxy_app = build_app(str(provider.make_url("")), hold_head=hold_head)
        async with TestClient(TestServer(proxy_app)) as proxy:
            started = time.monotonic()
            response = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": [], "stream": True})
            head_after = time.monotonic() - started
            text = await response.text()
            plain = await (await proxy.post("/v1/chat/completions", json={"model": "m", "messages": []})).json()
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    assert (head_after >= 1.0) is hold_head  # held: not before the token; else well before it
    assert '"content": "word0 "' in text and '"content": "word1 "' in text and text.endswith("data: [DONE]\n\n")
    assert plain["choices"][0]["message"]["content"] == "ok"
