"""The bandit's evidence shared through Redis, so every replica learns from every replica's requests.

What is shared is what the bandit itself keeps: the last `horizon` observations of each token bucket with
their raw terms, in order (stages/bandit.py). An objective's posteriors are a fold of those observations under
its reward, so sharing the observations (not one objective's sums) lets every tenant's objective, and the
change detector, learn from all traffic exactly as one process would. The order is the discount: every
observation of a bucket ages the bucket's evidence by one step, and Redis streams give one order to all
replicas.

- Request path: nothing awaited. `observed` / `rated` queue what this replica learned (the bandit already
  learned it locally); a background job (`sync_once`, every `TOKENHUB_SHARED_SYNC_MS`) pushes the queue in one
  Lua call (atomic: a batch lands contiguously in each bucket's stream, trimmed to the horizon) and pulls the
  other replicas' observations and feedback since its last read (one XREAD), folding them in locally.
- Exact agreement: the periodic refresh (`refresh_once`, TOKENHUB_BANDIT_REFRESH_SECS) rebuilds the posteriors
  from the shared streams, so every replica folds the same observations in the same order.
- Redis down: the queue is kept (bounded) and the replica learns alone (metric `shared_state_fallbacks
  {what="bandit"}`). Back up: the queue is pushed; if Redis lost its data (an epoch key is gone or new), each
  replica pushes every observation of its own it still keeps, and all rebuild from the result.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from pipeline.metrics import Metrics
from stages.bandit import Bandit, Observation
from store.redis_link import RedisDown, RedisLink

__all__ = ["BUCKETS", "SharedBandit"]

log = structlog.get_logger("tokenhub.shared_bandit")
BUCKETS = ("small", "medium", "large")  # stages.bandit.token_bucket's names: one stream each
FEEDBACK_PER_OBSERVATION = 4  # the feedback stream keeps this many entries per kept observation
MAX_PENDING = 100_000  # observations and ratings queued while Redis is down (the oldest are dropped)

# KEYS: epoch, feedback stream, then one stream per bucket (BUCKETS order).
# ARGV: the epoch the caller knows ('' = none yet), a fresh epoch to set if none, the observation stream length,
# the feedback stream length, then the batch as JSON: [[kind, bucket index (0 for feedback), entry], ...].
# Returns {epoch, appended, created}: nothing is appended when the caller's epoch is not Redis's (Redis lost its data,
# or another replica re-seeded it): the caller then re-pushes what it keeps of its own.
_PUSH = """
local epoch = redis.call('GET', KEYS[1])
local created = 0
if not epoch then
  epoch = ARGV[2]
  created = 1
  redis.call('SET', KEYS[1], epoch)
end
if ARGV[1] ~= epoch then
  return {epoch, 0, created}
end
local batch = cjson.decode(ARGV[5])
for _, item in ipairs(batch) do
  if item[1] == 'o' then
    redis.call('XADD', KEYS[3 + item[2]], 'MAXLEN', '~', ARGV[3], '*', 'e', item[3])
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', item[3])
  end
end
return {epoch, 1, 0}
"""


def _encode(obs: Observation, origin: str) -> str:
    feedback = None if math.isnan(obs.feedback) else obs.feedback
    return json.dumps(
        [
            origin,
            obs.request_id,
            obs.model_id,
            1 if obs.succeeded else 0,
            obs.cost_usd,
            obs.latency_ms,
            obs.cost_ref_usd,
            obs.latency_ref_ms,
            obs.prior,
            feedback,
        ],
        separators=(",", ":"),
    )


def _decode(raw: bytes, bucket: str, me: str) -> Observation:
    origin, request_id, model_id, ok, cost, latency, cost_ref, latency_ref, prior, feedback = json.loads(raw)
    return Observation(
        request_id,
        model_id,
        bucket,
        bool(ok),
        cost,
        latency,
        cost_ref,
        latency_ref,
        prior,
        math.nan if feedback is None else feedback,
        origin="" if origin == me else origin,
    )


class SharedBandit:
    def __init__(
        self,
        link: RedisLink,
        bandit: Bandit,
        metrics: Metrics,
        *,
        replica_id: str,
        seed_locally: Callable[[], Awaitable[object]],
    ) -> None:
        self._link = link
        self._bandit = bandit
        self._metrics = metrics
        self.replica_id = replica_id
        self._seed_locally = seed_locally  # the request-log rebuild: this replica's own history
        self._pending: deque[tuple[str, int, str]] = deque(maxlen=MAX_PENDING)
        self._epoch = ""  # Redis's epoch when this replica last agreed with it ('' = not yet)
        self._seeded = False
        self._cursor = {key: "0-0" for key in self._streams()}
        self._script = link.script(_PUSH)
        self._resync_wanted = False
        link.on_up(self._on_up)

    # --- what the request path calls (no I/O) -------------------------------------------------------
    def observed(self, observations: Iterable[Observation]) -> None:
        for obs in observations:
            self._pending.append(("o", BUCKETS.index(obs.bucket), _encode(obs, self.replica_id)))

    def rated(self, request_id: str, score: float) -> None:
        entry = json.dumps([self.replica_id, request_id, score], separators=(",", ":"))
        self._pending.append(("f", 0, entry))

    # --- background ----------------------------------------------------------------------------------
    async def sync_once(self) -> None:
        """Push what this replica learned and pull what the others did (the whole shared evidence after first
        contact, a Redis comeback or when the refresh asks); Redis down keeps the queue for later."""
        if not self._seeded:
            return
        try:
            if self._resync_wanted:
                self._resync_wanted = False
                await self._send()
                await self._rebuild()
            elif await self._send():
                await self._rebuild()  # Redis's data changed under us: start again from it
            else:
                await self._pull()
        except RedisDown:
            self._resync_wanted = True  # whatever this replica missed is read again when Redis is back
            self._metrics.shared_state_fallbacks.labels("bandit").inc()

    async def refresh_once(self) -> int:
        """The periodic rebuild. The first time from this replica's request log (then agreed with Redis by the
        next sync round); afterwards the next sync round rebuilds from the shared streams. No Redis call here:
        only the sync loop talks to Redis (and is never cancelled mid-call)."""
        if not self._seeded:
            used = await self._seed_locally()
            self._seeded = True
            self._resync_wanted = True
            return int(used) if isinstance(used, int) else 0
        self._resync_wanted = True
        return 0

    async def _on_up(self) -> None:
        """Redis is back (or reached the first time): the next round pushes what it lacks and rebuilds."""
        self._resync_wanted = True

    async def _send(self) -> bool:
        """Push the queue. Returns True when Redis's epoch was not the one this replica knew: Redis is new or
        lost its data (then every observation of ours still kept is pushed again), or this is first contact."""
        pending = list(self._pending)
        epoch, appended, created = await self._run_script(pending)
        if appended:
            self._sent(len(pending))
            return False
        reseed = bool(created) or self._epoch != ""
        self._epoch = epoch
        batch = pending
        if reseed:
            own = [
                ("o", BUCKETS.index(bucket), _encode(obs, self.replica_id))
                for bucket in BUCKETS
                for obs in self._bandit.log(bucket)
                if not obs.origin
            ]
            batch = own + [item for item in pending if item[0] == "f"]
        epoch, appended, _ = await self._run_script(batch)
        if appended:
            self._sent(len(pending))
            if reseed:
                log.info("shared_bandit_seeded", observations=len(batch))
        return True

    def _sent(self, count: int) -> None:
        """Drop the `count` oldest queued entries (pushed); what was queued during the push stays."""
        for _ in range(min(count, len(self._pending))):
            self._pending.popleft()

    async def _run_script(self, batch: list[tuple[str, int, str]]) -> tuple[str, bool, bool]:
        horizon = self._bandit.horizon
        keys = [self._link.key("bandit", "epoch"), *self._streams()]
        args = [self._epoch, uuid.uuid4().hex, horizon, horizon * FEEDBACK_PER_OBSERVATION, json.dumps(batch)]
        epoch, appended, created = await self._link.run(lambda: self._script(keys=keys, args=args))
        return _text(epoch), bool(appended), bool(created)

    async def _pull(self) -> None:
        client = self._link.client
        streams = dict(self._cursor)
        replies = await self._link.run(lambda: client.xread(streams))
        fb_key = self._streams()[0]
        ratings: list[tuple[str, float]] = []
        for raw_key, entries in replies or ():
            key = _text(raw_key)
            if not entries:
                continue
            self._cursor[key] = _text(entries[-1][0])
            if key == fb_key:
                for _, fields in entries:
                    origin, request_id, score = json.loads(fields[b"e"])
                    if origin != self.replica_id:
                        ratings.append((request_id, score))
                continue
            bucket = BUCKETS[self._streams().index(key) - 1]
            for _, fields in entries:
                obs = _decode(fields[b"e"], bucket, self.replica_id)
                if obs.origin:  # ours were learned when they happened
                    self._bandit.observe(obs)
        for request_id, score in ratings:  # after the observations they may rate
            self._bandit.rate(request_id, score)

    async def _rebuild(self) -> int:
        """Every replica folds the same observations in the same order: the shared streams, feedback applied."""
        client = self._link.client
        keys = self._streams()

        async def read_all() -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.xrange(key)
                return await pipe.execute()

        replies = await self._link.run(read_all)
        scores: dict[str, float] = {}
        for _, fields in replies[0]:
            _, request_id, score = json.loads(fields[b"e"])
            scores[request_id] = score
        observations: list[Observation] = []
        for bucket, entries in zip(BUCKETS, replies[1:], strict=True):
            for _, fields in entries[-self._bandit.horizon :]:
                obs = _decode(fields[b"e"], bucket, self.replica_id)
                if obs.request_id in scores and obs.succeeded:
                    obs.feedback = scores[obs.request_id]
                observations.append(obs)
        for key, entries in zip(keys, replies, strict=True):
            if entries:
                self._cursor[key] = _text(entries[-1][0])
        return self._bandit.rebuild(observations)

    def _streams(self) -> list[str]:
        return [self._link.key("bandit", "feedback")] + [self._link.key("bandit", "obs", b) for b in BUCKETS]


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
