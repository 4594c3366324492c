"""Provider health shared through Redis: a circuit breaker one replica opened, a Retry-After back-off a provider
sent one replica, a model disabled for its provider's quota, and their recoveries, reach every replica.

- Request path: nothing awaited. The HealthTracker and ModelDisables tell `SharedHealth` what changed (a dict
  update); a background job (`sync_once`, every TOKENHUB_SHARED_SYNC_MS) pushes the changes in one Lua call and
  reads the shared state back (two hashes), applying what other replicas changed.
- Merging (in Redis, atomically, so concurrent pushes cannot lose one another): a breaker's state is the last
  event (opened or closed) by wall-clock time; a Retry-After back-off is the latest end anyone was told; a
  model's disable or admin re-enable is the last event by wall-clock time. Times cross replicas as wall-clock
  seconds (NTP-synchronised clocks assumed) and become each tracker's monotonic time on arrival.
- Half-open: after an opened breaker's cooldown each replica lets its own single trial call through; the first
  trial that succeeds closes the breaker everywhere, one that fails re-opens it everywhere.
- Redis down: each replica keeps its own health (metric `shared_state_fallbacks{what="health"}`); back up,
  it pushes the latest state of everything it changed (merging is idempotent) and reads the others'.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from pipeline.metrics import Metrics
from stages.health import HealthTracker
from stages.model_disables import DisabledModel, ModelDisables
from store.redis_link import RedisDown, RedisLink

__all__ = ["SharedHealth"]

# KEYS: the providers hash, the disabled-models hash. ARGV[1]: [[kind 'p' or 'm', field, entry], ...].
# A provider entry: {b = breaker event ('open', 'closed', '' for none), at = its time, u = open until,
# rl = back-off until, by = replica}; a model entry: {d = disabled?, at, by, provider, reason, since, u}.
# Each stored entry carries v, bumped on every merge, so readers apply only what changed.
_MERGE = """
local batch = cjson.decode(ARGV[1])
for _, item in ipairs(batch) do
  local key = KEYS[1]
  if item[1] == 'm' then key = KEYS[2] end
  local new = item[3]
  local raw = redis.call('HGET', key, item[2])
  local old = nil
  if raw then old = cjson.decode(raw) end
  local out
  if item[1] == 'p' then
    out = old or {b = '', at = 0, u = 0, rl = 0, by = ''}
    if new.b ~= '' and new.at >= out.at then
      out.b = new.b
      out.at = new.at
      out.u = new.u
      out.by = new.by
    end
    if new.rl > out.rl then out.rl = new.rl end
  else
    out = new
    if old and old.at > new.at then out = old end
  end
  out.v = 1
  if old and old.v then out.v = old.v + 1 end
  redis.call('HSET', key, item[2], cjson.encode(out))
end
return #batch
"""


class SharedHealth:
    def __init__(
        self,
        link: RedisLink,
        health: HealthTracker,
        disables: ModelDisables,
        metrics: Metrics,
        *,
        replica_id: str,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self._health = health
        self._disables = disables
        self._metrics = metrics
        self.replica_id = replica_id
        self._wall = wall
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}  # what this replica last said, merged
        self._dirty: set[tuple[str, str]] = set()  # said but not pushed yet
        self._seen: dict[tuple[str, str], int] = {}  # the version last read of each shared entry
        self._script = link.script(_MERGE)
        self._keys = [link.key("health", "providers"), link.key("health", "disabled")]
        health.on_shared = self._provider_changed
        disables.on_shared = self._model_changed
        link.on_up(self._resync)

    # --- told by the tracker and the disables on the request path (no I/O) -------------------------------
    def _provider_changed(self, provider_id: str, breaker: str, open_until: float, rate_limited_until: float) -> None:
        key = ("p", provider_id)
        entry = self._latest.get(key) or {"b": "", "at": 0.0, "u": 0.0, "rl": 0.0, "by": self.replica_id}
        if breaker:
            entry.update(b=breaker, at=self._wall(), u=self._to_wall(open_until) if open_until else 0.0)
        if rate_limited_until:
            entry["rl"] = max(entry["rl"], self._to_wall(rate_limited_until))
        self._latest[key] = entry
        self._dirty.add(key)

    def _model_changed(self, model_id: str, entry: DisabledModel | None) -> None:
        key = ("m", model_id)
        self._latest[key] = {"d": entry is not None, "at": self._wall(), "by": self.replica_id} | (
            {"provider": entry.provider_id, "reason": entry.reason, "since": entry.since, "u": entry.until}
            if entry is not None
            else {}
        )
        self._dirty.add(key)

    # --- background ------------------------------------------------------------------------------------
    async def sync_once(self) -> None:
        """Push this replica's changes, read everyone's and apply the others'."""
        try:
            await self._push()
            providers, models = await self._read()
        except RedisDown:
            self._metrics.shared_state_fallbacks.labels("health").inc()
            return
        self._apply("p", providers)
        self._apply("m", models)

    async def _resync(self) -> None:
        """Redis is back (or reached the first time): everything this replica said may be missing there; the
        next sync round pushes it all again and re-reads everything."""
        self._dirty |= set(self._latest)
        self._seen.clear()

    async def _push(self) -> None:
        if not self._dirty:
            return
        dirty = sorted(self._dirty)
        batch = json.dumps([[kind, name, self._latest[kind, name]] for kind, name in dirty])
        await self._link.run(lambda: self._script(keys=self._keys, args=[batch]))
        self._dirty.difference_update(dirty)

    async def _read(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        client = self._link.client

        async def both() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._keys[0])
                pipe.hgetall(self._keys[1])
                return await pipe.execute()

        providers, models = await self._link.run(both)
        return providers, models

    def _apply(self, kind: str, entries: dict[bytes, bytes]) -> None:
        for raw_name, raw in entries.items():
            name = raw_name.decode()
            entry = json.loads(raw)
            version = int(entry.get("v", 0))
            if self._seen.get((kind, name)) == version:
                continue
            self._seen[kind, name] = version
            # Ours, or older than what this replica said since (its push is still to come): not applied.
            said = self._latest.get((kind, name))
            mine = entry.get("by") == self.replica_id or (said is not None and said["at"] > entry["at"])
            if kind == "p":
                breaker = "" if mine else entry["b"]
                open_until = self._to_clock(entry["u"]) if entry["u"] else 0.0
                back_off = self._to_clock(entry["rl"]) if entry["rl"] else 0.0
                self._health.apply_shared(name, breaker, open_until, back_off)
            elif not mine:
                self._disables.apply_shared(name, _disabled(name, entry))

    def _to_wall(self, monotonic: float) -> float:
        return self._wall() + (monotonic - self._health.clock())

    def _to_clock(self, wall: float) -> float:
        return self._health.clock() + (wall - self._wall())


def _disabled(model_id: str, entry: dict[str, Any]) -> DisabledModel | None:
    if not entry.get("d"):
        return None
    return DisabledModel(model_id, entry["provider"], entry["reason"], entry["since"], entry["u"])
