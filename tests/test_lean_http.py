"""The lean provider-call client (adapters/lean_http.py) against a raw local TCP server that answers with exactly
the bytes each test scripts: framing, encodings, broken answers, connection reuse and refusal to reuse."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import ssl
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.lean_http import LeanClient, LeanHttpError, LeanStream
from tests.support.polling import until


class Hold:
    """A point in an answer where the server stops writing until the test calls `release()`; `reached` is set
    when it gets there (orders a test by the server's progress, not by delays)."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def wait(self) -> None:
        self.reached.set()
        await self._released.wait()


# request bytes -> chunks to write (None: close the connection; a Hold: wait for the test)
Answer = Callable[[bytes], Sequence[bytes | Hold | None]]


class RawServer:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = int(next(h.split(b":")[1] for h in lines if h.lower().startswith(b"content-length")))
                request = head + await reader.readexactly(length)
                for chunk in self.answer(request):
                    if chunk is None:
                        writer.close()
                        return
                    if isinstance(chunk, Hold):
                        await chunk.wait()
                        continue
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[RawServer]:
    server = RawServer(answer)
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/v1/chat/completions?x=1"
    try:
        yield server
    finally:
        listener.close()


def _ok(body: bytes, *extra: str) -> list[bytes | None]:
    headers = "".join(f"{h}\r\n" for h in extra)
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    return [head.encode() + body]


def _halves(data: bytes) -> list[bytes | None]:
    return [data[: len(data) // 2], data[len(data) // 2 :]]


async def test_the_request_line_headers_and_body_and_keep_alive_reuse() -> None:
    seen: list[bytes] = []

    def answer(request: bytes) -> list[bytes | None]:
        seen.append(request)
        return _ok(b'{"ok": 1}', "Content-Type: application/json")

    async with raw_server(answer) as server:
        client = LeanClient()
        for _ in range(3):
            response = await client.post(server.url, b'{"q": 1}', {"Authorization": "Bearer k"})
            assert response.status == 200 and response.body == b'{"ok": 1}'
            assert response.headers["content-type"] == "application/json"  # any case
        assert server.connections == 1  # one connection, kept alive
        assert seen[0].startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
        assert b"\r\nAuthorization: Bearer k\r\n" in seen[0] and seen[0].endswith(b'\r\n\r\n{"q": 1}')
        client.close()


async def test_chunked_gzip_and_deflate_bodies_are_decoded() -> None:
    payload = b'{"text": "' + b"x" * 5000 + b'"}'
    packed = gzip.compress(payload)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (packed[:100], packed[100:])) + b"0\r\n\r\n"
    answers = [
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n", *_halves(chunked)],
        _ok(zlib.compress(payload), "Content-Encoding: deflate"),
        _ok(zlib.compress(payload)[2:-4], "Content-Encoding: deflate"),  # raw deflate, no zlib wrapper
    ]
    async with raw_server(lambda _: answers.pop(0)) as server:
        client = LeanClient()
        for _ in range(3):
            assert (await client.post(server.url, b"{}", {})).body == payload
        client.close()


async def test_a_body_ended_by_closing_the_connection_is_read_whole() -> None:
    async with raw_server(lambda _: [b"HTTP/1.0 200 OK\r\n\r\n", b'{"a": ', b"2}", None]) as server:
        client = LeanClient()
        assert (await client.post(server.url, b"{}", {})).body == b'{"a": 2}'
        await client.post(server.url, b"{}", {})
        assert server.connections == 2  # HTTP/1.0: not kept alive
        client.close()


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"a"', None], "closed the connection before"),
        ([None], "closed the connection before"),
        ([b"hello, this is not http\r\n\r\n"], "malformed HTTP response"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Encoding: gzip\r\n\r\nnope"], "undecodable"),
    ],
)
async def test_broken_answers_are_transport_errors(chunks: list[bytes | None], message: str) -> None:
    async with raw_server(lambda _: list(chunks)) as server:
        client = LeanClient()
        with pytest.raises(LeanHttpError, match=message):
            await asyncio.wait_for(client.post(server.url, b"{}", {}), 5)
        client.close()


async def test_a_cancelled_call_never_returns_its_connection_to_the_pool() -> None:
    hold = Hold()  # the answer's head and half its body are out, the rest waits for the cancellation
    answers = [[b'HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{"a"', hold, b": 1}"], _ok(b"{}")]
    async with raw_server(lambda _: answers.pop(0)) as server:
        client = LeanClient()
        call = asyncio.ensure_future(client.post(server.url, b"{}", {}))
        await asyncio.wait_for(hold.reached.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        hold.release()  # the rest of the answer: what a pooled connection would hand the next call
        assert (await asyncio.wait_for(client.post(server.url, b"{}", {}), 5)).body == b"{}"
        assert server.connections == 2
        client.close()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    answers = [[*_ok(b"{}", "Connection: keep-alive"), None], _ok(b"{}")]
    async with raw_server(lambda _: answers.pop(0)) as server:
        client = LeanClient()
        await client.post(server.url, b"{}", {})
        (pooled,) = client._idle[_origin_of(server)]
        await until(lambda: pooled.closed, 10)  # the server closes it right after its answer
        assert (await asyncio.wait_for(client.post(server.url, b"{}", {}), 5)).status == 200
        assert server.connections == 2
        client.close()


async def test_a_header_that_would_split_the_request_is_refused_and_nothing_is_sent() -> None:
    async with raw_server(lambda _: _ok(b"{}")) as server:
        client = LeanClient()
        with pytest.raises(ValueError, match="line break"):
            await client.post(server.url, b"{}", {"Authorization": "Bearer k\r\nX-Evil: 1"})
        assert server.connections == 0
        client.close()


def _self_signed(folder: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


async def test_https_works_and_refuses_a_certificate_nobody_vouches_for(tmp_path: Path) -> None:
    server = RawServer(lambda _: _ok(b'{"tls": true}'))
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=_self_signed(tmp_path))
    url = f"https://127.0.0.1:{listener.sockets[0].getsockname()[1]}/v1/x"
    try:
        client = LeanClient()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(client.post(url, b"{}", {}), 5)
        client.close()
        trusting = LeanClient(tls=ssl.create_default_context(cafile=tmp_path / "cert.pem"))
        assert (await asyncio.wait_for(trusting.post(url, b"{}", {}), 5)).body == b'{"tls": true}'
        trusting.close()
    finally:
        listener.close()


# ---- streamed answers (HttpClient.open_stream) -----------------------------------------------------------------

_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _read_all(stream: LeanStream) -> list[bytes]:
    parts = []
    while part := await asyncio.wait_for(stream.readany(), 5):
        parts.append(part)
    return parts


async def test_a_stream_returns_at_its_head_and_reads_the_body_as_it_arrives_then_reuses_the_connection() -> None:
    seen: list[bytes] = []

    def answer(request: bytes) -> list[bytes | None]:
        seen.append(request)
        return [_SSE_HEAD, _chunk(b"data: 1\n\n"), _chunk(b"data: 2\n\n"), b"0\r\n\r\n"]

    async with raw_server(answer) as server:
        client = LeanClient()
        stream = await asyncio.wait_for(client.open_stream(server.url, b"{}", {"X-K": "v"}), 5)
        assert stream.status == 200 and stream.headers["content-type"] == "text/event-stream"
        first = await asyncio.wait_for(stream.readany(), 5)
        assert first == b"data: 1\n\n"  # the server writes the next piece 10 ms later: not waited for
        assert await _read_all(stream) == [b"data: 2\n\n"]
        assert await stream.readany() == b""
        stream.release()
        again = await asyncio.wait_for(client.open_stream(server.url, b"{}", {}), 5)
        assert b"".join(await _read_all(again)) == b"data: 1\n\ndata: 2\n\n"
        again.release()
        assert server.connections == 1  # read to its end, then released: kept alive
        assert b"\r\nAccept-Encoding: identity\r\n" in seen[0]  # compression would hold tokens back
        client.close()


async def test_a_stream_cut_before_its_end_is_a_transport_error_and_never_reused() -> None:
    answers = [[_SSE_HEAD, _chunk(b"data: 1\n\n"), None], [_SSE_HEAD, b"0\r\n\r\n"]]
    async with raw_server(lambda _: answers.pop(0)) as server:
        client = LeanClient()
        stream = await client.open_stream(server.url, b"{}", {})
        assert await stream.readany() == b"data: 1\n\n"
        with pytest.raises(LeanHttpError, match="closed the connection before"):
            await asyncio.wait_for(stream.readany(), 5)
        stream.release()  # not at its end: closed, not pooled
        await (await client.open_stream(server.url, b"{}", {})).read(100)
        assert server.connections == 2
        client.close()


async def test_a_stream_closed_half_read_is_not_reused_and_one_ended_by_the_close_is_whole() -> None:
    answers = [
        [_SSE_HEAD, _chunk(b"data: 1\n\n"), _chunk(b"data: 2\n\n"), b"0\r\n\r\n"],
        [b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n", b"data: a\n\n", b"data: b\n\n", None],
    ]
    async with raw_server(lambda _: answers.pop(0)) as server:
        client = LeanClient()
        stream = await client.open_stream(server.url, b"{}", {})
        assert await stream.readany() == b"data: 1\n\n"
        stream.close()  # the client went away: the upstream must see its connection close
        assert await stream.readany() == b""
        closed_delimited = await client.open_stream(server.url, b"{}", {})
        assert b"".join(await _read_all(closed_delimited)) == b"data: a\n\ndata: b\n\n"
        closed_delimited.release()
        assert server.connections == 2
        client.close()


async def test_a_compressed_stream_is_decoded_piece_by_piece_and_an_error_answer_read_whole() -> None:
    events = b"".join(b"data: %d\n\n" % i for i in range(200))
    squeezer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    packed = squeezer.compress(events) + squeezer.flush()
    gzipped_head = _SSE_HEAD.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n")
    refusal = b'{"error": "slow down"}'
    answers: list[list[bytes | None]] = [
        [gzipped_head, _chunk(packed[:50]), _chunk(packed[50:]), b"0\r\n\r\n"],
        [b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: %d\r\n\r\n%s" % (len(refusal), refusal)],
    ]
    async with raw_server(lambda _: answers.pop(0)) as server:
        client = LeanClient()
        stream = await client.open_stream(server.url, b"{}", {})
        assert b"".join(await _read_all(stream)) == events
        stream.release()
        refused = await client.open_stream(server.url, b"{}", {})
        assert refused.status == 429 and await refused.read(1024) == refusal
        refused.release()
        assert server.connections == 1
        client.close()


async def test_a_reader_slower_than_the_upstream_gets_every_byte_in_order() -> None:
    pieces = [b"data: %06d %s\n\n" % (i, b"x" * 4000) for i in range(400)]  # ~1.6 MB: past the read buffer
    async with raw_server(lambda _: [_SSE_HEAD + b"".join(map(_chunk, pieces)) + b"0\r\n\r\n"]) as server:
        client = LeanClient()
        stream = await client.open_stream(server.url, b"{}", {})
        await asyncio.sleep(0.2)  # the server has written everything meanwhile
        held = stream._conn._buffered  # type: ignore[union-attr]  # what the client read off the socket unasked
        assert held <= 2 * 256 * 1024  # the buffer's bound plus one socket read (256 KiB): the rest waits unread
        received = bytearray()
        while part := await asyncio.wait_for(stream.readany(), 5):
            received += part
        assert bytes(received) == b"".join(pieces)
        stream.release()
        client.close()


async def test_a_stream_released_at_its_done_marker_is_pooled_once_its_body_ends_within_the_grace_time() -> None:
    answers = [
        [_SSE_HEAD, _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"],  # the body's end comes with the marker
        [_SSE_HEAD, _chunk(b"data: [DONE]\n\n"), _chunk(b": more\n\n"), b"0\r\n\r\n"],  # ... 20 ms after it
        [_SSE_HEAD, b"0\r\n\r\n"],
    ]
    async with raw_server(lambda _: answers.pop(0)) as server:
        client = LeanClient(tail_grace_secs=5)
        for _ in range(3):
            stream = await client.open_stream(server.url, b"{}", {})
            assert await asyncio.wait_for(stream.readany(), 5) in (b"data: [DONE]\n\n", b"")
            stream.release()  # a reader stops at the marker, without reading the body's end
            await _pooled(client)  # what comes after the marker is dropped, then the connection is kept
        assert server.connections == 1
        client.close()


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param([], id="the end never comes"),
        pytest.param([_chunk(b"x" * 70_000)], id="more than a tail comes"),
    ],
)
async def test_a_stream_released_before_a_body_that_does_not_end_soon_is_closed(tail: list[bytes]) -> None:
    answers = [[_SSE_HEAD, _chunk(b"data: [DONE]\n\n"), *tail], [_SSE_HEAD, b"0\r\n\r\n"]]
    async with raw_server(lambda _: answers.pop(0)) as server:
        client = LeanClient(tail_grace_secs=0.2)
        stream = await client.open_stream(server.url, b"{}", {})
        assert await asyncio.wait_for(stream.readany(), 5) == b"data: [DONE]\n\n"
        conn = stream._conn
        stream.release()
        for _ in range(100):
            if conn is not None and conn.closed:
                break
            await asyncio.sleep(0.01)
        assert conn is not None and conn.closed and not client._idle[_origin_of(server)]
        again = await client.open_stream(server.url, b"{}", {})
        assert await asyncio.wait_for(again.readany(), 5) == b""
        again.release()
        assert server.connections == 2
        client.close()


async def test_closing_the_client_closes_a_connection_still_waiting_for_its_body_to_end() -> None:
    async with raw_server(lambda _: [_SSE_HEAD, _chunk(b"data: [DONE]\n\n")]) as server:
        client = LeanClient(tail_grace_secs=60)
        stream = await client.open_stream(server.url, b"{}", {})
        assert await asyncio.wait_for(stream.readany(), 5) == b"data: [DONE]\n\n"
        conn = stream._conn
        stream.release()
        assert conn is not None and not conn.closed  # waiting for the terminator
        client.close()  # shutdown: nothing may stay open behind it
        assert conn.closed


def _origin_of(server: RawServer) -> tuple[str, str, int]:
    return ("http", "127.0.0.1", int(server.url.split(":")[2].split("/")[0]))


async def _pooled(client: LeanClient) -> None:
    for _ in range(500):
        if any(client._idle.values()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the connection was never returned to the pool")


async def test_a_stream_that_ended_while_its_reading_was_paused_leaves_a_connection_that_reads_again() -> None:
    first, last = b"x" * (250 * 1024), b"y" * (10 * 1024)  # the end arrives past the read buffer's bound
    answers = [[_SSE_HEAD + _chunk(first), _chunk(last) + b"0\r\n\r\n"], _ok(b"{}")]
    async with raw_server(lambda _: answers.pop(0)) as server:
        client = LeanClient()
        stream = await client.open_stream(server.url, b"{}", {})
        conn = stream._conn
        assert conn is not None
        await until(lambda: conn.complete, 10)  # both pieces have arrived unread...
        assert conn._paused  # ... reading paused with the whole answer in
        stream.release()  # arrived whole: pooled
        assert (await asyncio.wait_for(client.post(server.url, b"{}", {}), 5)).body == b"{}"
        assert server.connections == 1
        client.close()
