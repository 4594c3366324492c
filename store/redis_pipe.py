"""One lean, pipelined Redis connection for the scripts on the request path (docs/scaling.md, Latency).

redis-py's asyncio client costs ~0.1 ms of Python per call (a connection checked out of a pool and back, its
lock, a reader task's handoff): more than Redis takes to run the gate script. This connection writes a command
straight onto its socket in the caller's own call (no task, no await) and hands each reply, parsed by hiredis
(redis-py's own C parser), to the next waiting future, in order: Redis answers one connection's commands in the
order they were sent, so any number of them can be in flight at once.

It carries only script calls (`EVALSHA`, falling back to `EVAL` once when Redis answers NOSCRIPT, i.e. after it
restarted empty); everything else keeps using redis-py. Failures surface as `PipeError` (an `OSError`) on every
waiting future, and close the socket: the next call connects again.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

__all__ = ["PipeError", "RedisPipe", "Script"]


class PipeError(OSError):
    """The connection failed, timed out, or Redis answered an error."""


class Script:
    """A Lua script as the pipe sends it: by its SHA1, and whole when Redis does not know it yet."""

    def __init__(self, lua: str) -> None:
        self.body = lua.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()


_Call = tuple[Script, tuple[bytes, ...]]


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _connect_options(url: str) -> dict[str, Any]:
    """Where and how to connect, from the same URL forms redis-py accepts (redis://, rediss://, unix://)."""
    from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

    parsed = parse_url(url)
    options: dict[str, Any] = {
        "db": int(parsed.get("db") or 0),
        "username": parsed.get("username"),
        "password": parsed.get("password"),
    }
    cls = parsed.get("connection_class")
    if cls is UnixDomainSocketConnection:
        options["path"] = parsed["path"]
        return options
    options["host"] = parsed.get("host") or "localhost"
    options["port"] = int(parsed.get("port") or 6379)
    if cls is SSLConnection:
        context = ssl.create_default_context(cafile=parsed.get("ssl_ca_certs"))
        if str(parsed.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        options["ssl"] = context
    return options


class _Protocol(asyncio.Protocol):
    def __init__(self, on_reply: Callable[[Any, bool], None], on_lost: Callable[[Exception | None], None]) -> None:
        import hiredis  # loaded with the first connection: only a server with Redis configured needs it

        self._reader = hiredis.Reader()
        self._error = hiredis.ReplyError
        self._on_reply = on_reply
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._on_reply(reply, isinstance(reply, self._error))

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


Done = Callable[[Any, "PipeError | None"], None]  # a call's reply, or why there is none


class RedisPipe:
    def __init__(self, url: str, *, timeout_secs: float) -> None:
        self._options = _connect_options(url)
        self._timeout = timeout_secs
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        # (who takes the reply, the script call to repeat as EVAL on NOSCRIPT, the timeout's timer), oldest first
        self._waiting: deque[tuple[Done, _Call | None, asyncio.TimerHandle]] = deque()
        self._unsent: list[tuple[Done, bytes, _Call | None]] = []  # while connecting

    def send(self, script: Script, args: tuple[bytes, ...], done: Done) -> None:
        """Run `script` with no keys and `args` as ARGV, and call `done(reply, None)` from the socket's own
        callback when the reply arrives (one event-loop hop less than a future), or `done(None, error)`. Sent
        now when connected (nothing awaited), else as soon as the connection is made."""
        command = _command(b"EVALSHA", script.sha, b"0", *args)
        if self._connecting is None and self._protocol is not None and self._protocol.transport is not None:
            self._send(done, command, (script, args))
            return
        self._unsent.append((done, command, (script, args)))
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def eval(self, script: Script, *args: bytes) -> asyncio.Future[Any]:
        """`send`, as a future."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.send(script, args, partial(_settle, future))
        return future

    def close(self, reason: str = "closed") -> None:
        """Drop the connection; every waiting call fails with `reason`."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        self._fail_all(PipeError(reason))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        options = self._options

        def make() -> _Protocol:
            return _Protocol(self._on_reply, self._on_lost)

        try:
            async with asyncio.timeout(self._timeout):
                if "path" in options:
                    _, protocol = await loop.create_unix_connection(make, options["path"])
                else:
                    _, protocol = await loop.create_connection(
                        make, options["host"], options["port"], ssl=options.get("ssl")
                    )
                self._protocol = protocol
                await self._handshake()
        except (OSError, TimeoutError) as exc:
            self._connecting = None
            self.close(f"connect failed: {type(exc).__name__}")
            return
        self._connecting = None
        unsent, self._unsent = self._unsent, []
        for done, command, call in unsent:
            self._send(done, command, call)

    async def _handshake(self) -> None:
        options = self._options
        steps: list[bytes] = []
        if options["password"]:
            user = options["username"]
            secret = options["password"].encode()
            steps.append(_command(b"AUTH", user.encode(), secret) if user else _command(b"AUTH", secret))
        if options["db"]:
            steps.append(_command(b"SELECT", str(options["db"]).encode()))
        loop = asyncio.get_running_loop()
        for command in steps:
            future: asyncio.Future[Any] = loop.create_future()
            self._send(partial(_settle, future), command, None)
            await future  # an error reply (a wrong password) raises PipeError without echoing the command

    def _send(self, done: Done, command: bytes, call: _Call | None) -> None:
        protocol = self._protocol
        assert protocol is not None and protocol.transport is not None
        timer = asyncio.get_running_loop().call_later(self._timeout, self.close, "timed out")
        self._waiting.append((done, call, timer))
        protocol.transport.write(command)

    def _on_reply(self, reply: Any, failed: bool) -> None:
        """`failed`: Redis answered an error (hiredis.ReplyError)."""
        done, call, timer = self._waiting.popleft()
        timer.cancel()
        if failed:
            if call is not None and str(reply).startswith("NOSCRIPT"):
                # Redis restarted empty: the same call with the whole script (which also caches it again)
                script, args = call
                self._send(done, _command(b"EVAL", script.body, b"0", *args), None)
                return
            done(None, PipeError(f"redis error: {str(reply)[:200]}"))
            return
        done(reply, None)

    def _on_lost(self, exc: Exception | None) -> None:
        self._protocol = None
        self._fail_all(PipeError(f"connection lost: {type(exc).__name__ if exc else 'closed by redis'}"))

    def _fail_all(self, error: PipeError) -> None:
        waiting, self._waiting = self._waiting, deque()
        for done, _, timer in waiting:
            timer.cancel()
            done(None, error)
        unsent, self._unsent = self._unsent, []
        for done, _, _ in unsent:
            done(None, error)


def _settle(future: asyncio.Future[Any], reply: Any, error: PipeError | None) -> None:
    if future.done():  # its caller gave up; the reply still had to be taken off the line
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(reply)
