"""Rate limits and budget holds shared by replicas, as atomic Lua scripts in Redis (docs/scaling.md).

Two scripts carry everything a request does to the shared limits:

- `gate`, the request's one round trip before its provider call: the per-IP bucket, the API key's requests-
  and tokens-per-minute buckets, and the reservation of its worst-case cost against the key's monthly budget,
  all checked and taken atomically (so a request refused by a later check still spent the earlier ones, in the
  same order the local checks run: IP, then key limits, then budget).
- `apply`, a batch of what happens after a response (a hold shrunk to the actual cost, a cost moved into the
  spend together with the release of its hold, a token-count settle, a deferred take, a lease renewal), queued
  by the `OpFlusher` and never awaited by a request: the next gate call carries it, or, when no request comes
  within 10 ms, the flusher sends it on its own.

Both are written to touch as few keys as they can, because each command a script runs costs Redis time that
the request waits for. Buckets are one string each ("tokens timestamp"), refill continuously on Redis's clock
(`TIME`, so replicas' clocks do not matter) and expire once they would be full again: an idle bucket costs no
memory. An account's holds are one hash (holder -> "amount lease-expiry", with their sum and count), and an
expired lease (a killed replica's request) is swept by the first reservation after it ran out. Keys are named
from the link's prefix inside the scripts, so this targets a single Redis (or a primary with replicas), not
Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog

from store.redis_link import RedisDown, RedisLink
from store.redis_pipe import Script

__all__ = [
    "HOLD_LEASE_SECS",
    "SPEND_TTL_SECS",
    "BucketTake",
    "GateReply",
    "OpFlusher",
    "RedisLimits",
    "made_hold",
    "release_op",
]

log = structlog.get_logger("tokenhub.shared_limits")

HOLD_LEASE_SECS = 30.0  # a hold not renewed for this long (its replica died) frees itself
FLUSH_GATHER_SECS = 0.01  # how long the flusher lets settles and releases gather into one batch
SPEND_TTL_SECS = 62 * 86400  # a month's spend hash outlives its month, then expires

_COMMON = r"""
local P = ARGV[1]
local K = P .. 'l2:'  -- this layout's keys (strings and one hash per account), apart from older layouts'
local tm = redis.call('TIME')
local now = tonumber(tm[1]) + tonumber(tm[2]) / 1000000
local nowms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local EPS = 1e-12
local function fmt(x) return string.format('%.17g', x) end
local function pair(v)  -- "a b" -> a, b
  local sp = string.find(v, ' ', 1, true)
  return tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
end

-- A bucket is one string "tokens timestamp", expiring once it would be full again.
local function bucket_read(key, rate, burst)
  local v = redis.call('GET', K .. key)
  if not v then return burst end
  local t, ts = pair(v)
  local elapsed = now - ts
  if elapsed > 0 then t = t + elapsed * rate end
  if t > burst then t = burst end
  return t
end
local function admits(b, t)  -- strict (a request): a whole token left; else (tokens) anything above zero
  if b[5] then return t >= 1 end
  return t > 0
end
local function bucket_write(key, t, rate, burst)
  local ttl = math.ceil(((burst - t) / rate + 1) * 1000)
  redis.call('SET', K .. key, fmt(t) .. ' ' .. fmt(now), 'PX', ttl)
end

-- An account's holds are one hash: holder -> "amount lease-expiry-ms", '=' their sum, '#' their count, and
-- '<' a lower bound of the earliest expiry (a sweep is due only once it has passed).
local function hkey(acct) return K .. 'hold:' .. acct end
local function held_now(h)  -- the holds' sum, after sweeping expired ones when one may be due
  local v = redis.call('HMGET', h, '=', '<')
  local sum, due = tonumber(v[1]) or 0, tonumber(v[2])
  if due == nil or due > nowms then return math.max(sum, 0) end
  local all = redis.call('HGETALL', h)
  local dead, n, nxt = {}, 0, nil
  sum = 0
  for i = 1, #all, 2 do
    local f = all[i]
    if f ~= '=' and f ~= '<' and f ~= '#' then
      local amount, exp = pair(all[i + 1])
      if exp <= nowms then
        dead[#dead + 1] = f
      else
        sum, n = sum + amount, n + 1
        if nxt == nil or exp < nxt then nxt = exp end
      end
    end
  end
  if n == 0 then
    redis.call('DEL', h)
    return 0
  end
  for i = 1, #dead, 500 do redis.call('HDEL', h, unpack(dead, i, math.min(i + 499, #dead))) end
  redis.call('HSET', h, '=', fmt(sum), '#', n, '<', nxt)
  return sum
end
local function drop(acct, f)
  local h = hkey(acct)
  local v = redis.call('HMGET', h, f, '=', '#')
  if not v[1] then return end
  local n = (tonumber(v[3]) or 1) - 1
  if n <= 0 then
    redis.call('DEL', h)  -- no float residue keeps an idle account around
    return
  end
  local amount = pair(v[1])
  redis.call('HDEL', h, f)
  redis.call('HSET', h, '=', fmt((tonumber(v[2]) or 0) - amount), '#', n)
end
local function hold(acct, f, amount, lease)  -- returns the account's holds' sum after
  local h = hkey(acct)
  local v = redis.call('HMGET', h, f, '=', '#', '<')
  local old, n = 0, (tonumber(v[3]) or 0) + 1
  if v[1] then old, n = pair(v[1]), n - 1 end
  local sum = (tonumber(v[2]) or 0) - old + amount
  local exp = nowms + lease
  local due = tonumber(v[4])
  if due == nil or exp < due then due = exp end
  redis.call('HSET', h, f, fmt(amount) .. ' ' .. exp, '=', fmt(sum), '#', n, '<', due)
  redis.call('PEXPIRE', h, lease * 4)
  return sum
end
"""

# apply(ops): a list of ops (see OpFlusher). Returns {"w": [[op index, wait], ...] for takes refused,
# "s": [[hash, key id, spend], ...] for spend written}.
_APPLY_FN = r"""
local function apply(req)
local waits, spends = {}, {}
for i, op in ipairs(req) do
  local o = op.o
  if o == 'spend' then
    local v = redis.call('HINCRBYFLOAT', P .. op.h, op.k, fmt(op.c))
    redis.call('PEXPIRE', P .. op.h, op.ttl)
    spends[#spends + 1] = {op.h, op.k, v}
  elseif o == 'release' then
    for _, a in ipairs(op.a) do drop(a, op.f) end
  elseif o == 'settle' then
    for _, a in ipairs(op.a) do
      if redis.call('HEXISTS', hkey(a), op.f) == 1 then hold(a, op.f, op.v, op.lease) end
    end
  elseif o == 'renew' then
    for _, l in ipairs(op.l) do
      local h = hkey(l[1])
      local v = redis.call('HGET', h, l[2])
      if v then
        local amount = pair(v)
        redis.call('HSET', h, l[2], fmt(amount) .. ' ' .. (nowms + op.lease))  -- '<' stays a lower bound
        redis.call('PEXPIRE', h, op.lease * 4)
      end
    end
  elseif o == 'tpm' then
    local t = math.min(op.burst, bucket_read(op.k, op.rate, op.burst) - op.d)
    bucket_write(op.k, t, op.rate, op.burst)
  elseif o == 'take' then
    local b = op.b
    local t = bucket_read(b[1], b[2], b[3])
    if admits(b, t) then bucket_write(b[1], t - b[4], b[2], b[3]) else waits[#waits + 1] = {i, fmt((1 - t) / b[2])} end
  elseif o == 'reset' then
    redis.call('HDEL', P .. op.h, op.k)
  end
end
return cjson.encode({w = waits, s = spends})
end
"""

# ARGV[2]: the ops, as JSON.
APPLY_LUA = _COMMON + _APPLY_FN + "return apply(cjson.decode(ARGV[2]))"


# req: {"g": [[[key, rate/s, burst, cost, strict], ...], ...], "r": {"h", "prev", "a": [[account, limit,
# spend hash, key id], ...], "worst", "need", "lease"}}. Each group of buckets is all-or-nothing; groups are
# taken in order. Returns {"rl": [group, bucket, wait]} | {"refused": i, "info": [[spent, held], ...]} |
# {"held": amount, "info": [...]} | {}. Floats travel as strings (cjson keeps 14 digits).
# Batched: ARGV[3..] are the requests of every gate call made in one event-loop iteration (RedisLimits.gate),
# run in order in one script; ARGV[2] is the ops the flusher had waiting ('' for none), applied first, so that
# steady traffic needs no round trip of its own for them. Returns apply's reply ('' for none), then one reply
# per request.
GATE_LUA = (
    _COMMON
    + _APPLY_FN
    + r"""
local function gate(req)
for gi, group in ipairs(req.g or {}) do
  local vals = {}
  for i, b in ipairs(group) do
    local t = bucket_read(b[1], b[2], b[3])
    if not admits(b, t) then return cjson.encode({rl = {gi, i, fmt((1 - t) / b[2])}}) end
    vals[i] = t
  end
  for i, b in ipairs(group) do bucket_write(b[1], vals[i] - b[4], b[2], b[3]) end
end
local r = req.r
if not r then return '{}' end
local amount = math.max(0, r.worst)
local needed = math.min(amount, math.max(0, r.need))
local info = {}
for i, a in ipairs(r.a) do
  if r.prev ~= '' then drop(a[1], r.prev) end
  local spent = tonumber(redis.call('HGET', P .. a[3], a[4])) or 0
  local h = held_now(hkey(a[1]))
  info[i] = {fmt(spent), fmt(h)}
  local left = a[2] - spent - h
  if needed > left + EPS then return cjson.encode({refused = i, info = info}) end
  amount = math.min(amount, math.max(left, needed))
end
for i, a in ipairs(r.a) do info[i][2] = fmt(hold(a[1], r.h, amount, r.lease)) end
return cjson.encode({held = fmt(amount), info = info})
end
local out = {ARGV[2] == '' and '' or apply(cjson.decode(ARGV[2]))}
for i = 3, #ARGV do out[i - 1] = gate(cjson.decode(ARGV[i])) end
return out
"""
)

# A month's spend, and whether it was seeded since Redis last started empty.
SYNC_LUA = r"""
local seeded = redis.call('EXISTS', KEYS[2])
return {seeded, redis.call('HGETALL', KEYS[1])}
"""

# Seed a month's spend once (the first replica to find it unseeded wins): its durable copy added to whatever
# costs reached Redis since it came back empty.
SEED_LUA = r"""
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class BucketTake:
    """One bucket a request takes from. `strict`: admitted with a whole token left, taking `cost` (requests);
    else admitted while the bucket is positive, taking `cost` even past zero (tokens per minute: a large
    request is never refused forever). `message` is the 429's."""

    key: str
    rate: float  # tokens per second
    burst: float
    cost: float
    strict: bool
    message: str

    def wire(self) -> list[Any]:
        return [self.key, self.rate, self.burst, self.cost, self.strict]


@dataclass(frozen=True, slots=True)
class GateReply:
    """What the gate script said: a bucket that refused (`limited`: (group, bucket) and its wait), a budget
    account that refused (`refused`: its index), or the amount held; `info` is each account's spend and holds
    as Redis has them now (the replicas' local views are refreshed from it)."""

    limited: tuple[int, int] | None = None
    wait: float = 0.0
    refused: int | None = None
    held: float = 0.0
    info: tuple[tuple[float, float], ...] = ()


class RedisLimits:
    """The scripts, bound to one link. Every call goes through `link.run` (bounded; RedisDown when down)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        # The gate and apply scripts go over the link's lean pipe (store/redis_pipe.py), the rest over redis-py.
        self._gate = Script(GATE_LUA)
        # Gate calls of one event-loop iteration share one script call: under load, one socket write and read
        # for several requests instead of one each (the round trip's syscalls were most of Redis's cost).
        self._queued: list[tuple[bytes, asyncio.Future[bytes]]] = []
        self._in_flight = 0  # gate calls sent and not answered yet
        self.carry: OpFlusher | None = None  # whose waiting ops a gate call takes along (OpFlusher sets itself)
        self._prefix = link.prefix.encode()
        self._apply = Script(APPLY_LUA)
        self._sync = link.script(SYNC_LUA)
        self._seed = link.script(SEED_LUA)

    async def gate(self, groups: list[tuple[BucketTake, ...]], reservation: dict[str, Any] | None) -> GateReply:
        return self.parse(await self.start(groups, reservation))

    def start(self, groups: list[tuple[BucketTake, ...]], reservation: dict[str, Any] | None) -> asyncio.Future[bytes]:
        """Send a gate call (batched with the others of this loop iteration) without waiting: its raw answer,
        for `parse`."""
        request: dict[str, Any] = {"g": [[take.wire() for take in group] for group in groups if group]}
        if reservation is not None:
            request["r"] = reservation
        return self._queue(json.dumps(request).encode())

    @staticmethod
    def parse(raw: bytes) -> GateReply:
        reply = json.loads(raw)
        info = tuple((float(spent), float(held)) for spent, held in reply.get("info") or ())
        if "rl" in reply:
            group, bucket, wait = reply["rl"]
            return GateReply(limited=(group - 1, bucket - 1), wait=float(wait))
        if "refused" in reply:
            return GateReply(refused=reply["refused"] - 1, info=info)
        return GateReply(held=float(reply.get("held", 0.0)), info=info)

    def _queue(self, request: bytes) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()
        self._queued.append((request, answer))
        if len(self._queued) == 1:
            if self._in_flight:
                loop.call_soon(self._send_queued)  # after the callbacks already ready: they may queue more
            else:
                self._send_queued()  # nothing to share a call with: no reason to wait a loop iteration
        return answer

    def _send_queued(self) -> None:
        batch, self._queued = self._queued, []
        if not self.link.up:
            _fail(batch, RedisDown(self.link.last_error))
            return
        ops = self.carry.lend() if self.carry is not None else []
        args = (self._prefix, json.dumps(ops).encode() if ops else b"", *(r for r, _ in batch))
        self.link.send_script(self._gate, args, partial(self._answer, batch, ops))
        self._in_flight += 1

    def _answer(
        self,
        batch: list[tuple[bytes, asyncio.Future[bytes]]],
        ops: list[dict[str, Any]],
        replies: Any,
        error: Exception | None,
    ) -> None:
        self._in_flight -= 1
        if error is not None:
            down = self.link.failed(error)
            if ops and self.carry is not None:
                self.carry.returned(ops, None)
            _fail(batch, down)
            return
        if ops and self.carry is not None:
            self.carry.returned(ops, _apply_reply(replies[0]))
        for (request, answer), reply in zip(batch, replies[1:], strict=True):
            if not answer.done():
                answer.set_result(reply)
            elif made_hold(reply) and self.carry is not None:  # its caller was cancelled: nobody knows the hold
                reservation = json.loads(request)["r"]
                self.carry.add(release_op([account[0] for account in reservation["a"]], reservation["h"]))

    async def apply(self, ops: list[dict[str, Any]]) -> dict[str, Any]:
        return _apply_reply(await self.link.eval(self._apply, self._prefix, json.dumps(ops).encode()))

    async def month_spend(self, month: str) -> tuple[bool, dict[str, float]]:
        """(seeded since Redis last started empty, key id -> spend) for a month ("2026-12")."""
        keys = [self.link.key("spend", month), self.link.key("spendseed", month)]
        seeded, flat = await self.link.run(lambda: self._sync(keys=keys))
        values = {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2) if isinstance(flat[i], bytes)}
        return bool(seeded), values

    async def seed_month(self, month: str, spend: dict[str, float]) -> bool:
        """Seed a month's spend unless another replica did; True when this call seeded it."""
        keys = [self.link.key("spend", month), self.link.key("spendseed", month)]
        args: list[Any] = [int(SPEND_TTL_SECS * 1000)]
        for key_id, value in spend.items():
            if value > 0:
                args += [key_id, repr(float(value))]
        return bool(await self.link.run(lambda: self._seed(keys=keys, args=args)))


def made_hold(reply: bytes) -> bool:
    """Whether a gate script's raw reply says it made a hold (only that answer carries "held"), without parsing
    it: for the callers that only need to release a hold nobody will use."""
    return b'"held"' in reply


def release_op(accounts: list[str], field: str) -> dict[str, Any]:
    """The flusher's op that drops hold `field` from these accounts (a no-op for a hold already gone)."""
    return {"o": "release", "a": accounts, "f": field}


def _without_superseded(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A hold settled and released in the same batch needs only its release (the common case: a response's
    settle and its record's release are queued in the same loop iteration)."""
    released = {op["f"] for op in ops if op["o"] == "release"}
    if not released:
        return ops
    return [op for op in ops if op["o"] != "settle" or op["f"] not in released]


def _fail(batch: list[tuple[bytes, asyncio.Future[bytes]]], error: RedisDown) -> None:
    for _, answer in batch:
        if not answer.done():
            answer.set_exception(error)


def _apply_reply(raw: bytes) -> dict[str, Any]:
    reply = json.loads(raw)
    return {"w": _listed(reply.get("w")), "s": _listed(reply.get("s"))}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []  # cjson encodes an empty table as {}


class OpFlusher:
    """What requests leave for Redis after their response, sent in the background in batches: one `apply`
    script per batch, so a cost moved into the spend and the release of its hold (queued together by the
    key-accounting sink) land atomically. While a batch is in flight the next one gathers.

    While Redis is down the ops are folded into a backlog that `resync` (on the link's way back up) pushes in
    one script: costs summed per key, releases and resets kept; hold settles, deferred takes and token settles
    are dropped (the release follows; rate limits refill anyway). `stop` sends what is left."""

    def __init__(
        self,
        limits: RedisLimits,
        *,
        on_reply: Callable[[list[dict[str, Any]], dict[str, Any]], None],
        on_fallback: Callable[[str], None],
    ) -> None:
        self._limits = limits
        self._on_reply = on_reply
        self._on_fallback = on_fallback
        self._ops: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backlog_spend: dict[tuple[str, str], float] = {}  # (spend hash, key id) -> cost not yet in Redis
        self._backlog_ops: list[dict[str, Any]] = []  # releases and resets, in order
        self._lent = 0  # batches a gate call carries (RedisLimits.carry), not answered yet
        self._idle = asyncio.Event()
        self._idle.set()
        limits.carry = self

    def add(self, *ops: dict[str, Any]) -> None:
        self._ops.extend(ops)
        self._idle.clear()
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._backlog_spend) + len(self._backlog_ops)

    def backlog_spend(self) -> dict[tuple[str, str], float]:
        return dict(self._backlog_spend)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="shared-limits-flusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()  # the last batch (one bounded round trip; kept in the backlog if Redis is down)

    async def drained(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until every op queued so far was sent or folded into the backlog (tests, shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Let the ops of the next few ms gather: one round trip for many responses, not one each. Holds
            # and spend reach Redis that much later; the gate's bound counts holds, so budgets still hold.
            await asyncio.sleep(FLUSH_GATHER_SECS)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # a bug must not stop the flusher: log, keep going
                log.exception("shared_limits_flush_failed")

    async def flush(self) -> None:
        while self._ops:
            batch, self._ops = _without_superseded(self._ops), []
            if not self._limits.link.up:
                self._fold(batch)
                continue
            try:
                reply = await self._limits.apply(batch)
            except RedisDown:
                self._fold(batch)
                continue
            self._on_reply(batch, reply)
        self._settled()

    def lend(self) -> list[dict[str, Any]]:
        """The ops waiting, for a gate call to carry: steady traffic sends them on its own round trips."""
        if not self._ops:
            return []
        batch, self._ops = _without_superseded(self._ops), []
        self._lent += 1
        return batch

    def returned(self, batch: list[dict[str, Any]], reply: dict[str, Any] | None) -> None:
        """A carried batch was applied (`reply`), or its gate call failed (None: kept in the backlog)."""
        self._lent -= 1
        if reply is None:
            self._fold(batch)
        else:
            self._on_reply(batch, reply)
        self._settled()

    def _settled(self) -> None:
        if not self._ops and not self._lent:
            self._idle.set()

    async def resync(self) -> None:
        """Redis is back: push the backlog in one script (raises RedisDown to be retried on the next up)."""
        ops = list(self._backlog_ops)
        ops += [
            {"o": "spend", "h": h, "k": k, "c": c, "ttl": int(SPEND_TTL_SECS * 1000)}
            for (h, k), c in self._backlog_spend.items()
        ]
        if not ops:
            return
        reply = await self._limits.apply(ops)
        self._backlog_ops.clear()
        self._backlog_spend.clear()
        self._on_reply(ops, reply)
        log.info("shared_limits_resynced", ops=len(ops))

    def _fold(self, batch: list[dict[str, Any]]) -> None:
        for op in batch:
            kind = op["o"]
            if kind == "spend":
                key = (op["h"], op["k"])
                self._backlog_spend[key] = self._backlog_spend.get(key, 0.0) + op["c"]
            elif kind == "reset":
                self._backlog_spend.pop((op["h"], op["k"]), None)
                self._backlog_ops.append(op)
            elif kind == "release":
                self._backlog_ops.append(op)
            else:
                continue
            self._on_fallback("flush")
