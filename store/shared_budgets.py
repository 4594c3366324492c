"""Per-key month-to-date spend and budget holds shared by replicas through Redis (docs/scaling.md).

`SharedKeyLedger` is the `KeyLedger` whose spend is Redis's: what the request path reads (`spent`) is the last
value Redis reported plus this replica's costs not yet acknowledged, kept current from every gate reply, every
flushed batch and a periodic read of the month's spend hash. `SharedReservations` is the `Reservations` whose
key-budget holds live in Redis (the gate script reserves, the flusher settles and releases); plan budgets
(one /v1/plan runs in one process) and, while Redis is down with `shared_budget_on_outage=open`, key budgets
too, are held in the embedded `LocalReservations`.

Durability: Redis is the live total while it is up. Every replica copies the month's spend, as absolute
values, into the config store each housekeeping round (idempotent, so replicas never double-count); when a
month's spend is found unseeded in Redis (it restarted empty, or this is the first start) the first replica to
notice seeds it once from max(the copy, what it last saw in Redis, its own request log).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from store.key_ledger import KeyLedger
from store.redis_limits import HOLD_LEASE_SECS, SPEND_TTL_SECS, OpFlusher, release_op
from store.reservations import BudgetAccount, LocalReservations

__all__ = ["SharedKeyLedger", "SharedReservations", "month_tag"]

SPEND_TTL_MS = int(SPEND_TTL_SECS * 1000)
LEASE_MS = int(HOLD_LEASE_SECS * 1000)


def month_tag(ts: float) -> str:
    """The UTC month a timestamp falls in, as the spend hash names it: "2026-12"."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m")


class SharedKeyLedger(KeyLedger):
    def __init__(self, flusher: OpFlusher, now: float | None = None) -> None:
        super().__init__(now)
        self._flusher = flusher
        self._month = month_tag(self.month_start)
        self._base: dict[str, float] = {}  # key id -> spend as Redis last reported it (this month)
        self._pending: dict[str, float] = {}  # key id -> this replica's costs Redis has not acknowledged
        self._seed: dict[str, float] = {}  # start-up: this replica's own month-to-date spend (its request log)

    @property
    def spend_hash(self) -> str:
        return f"spend:{self._month}"

    @property
    def month(self) -> str:
        return self._month

    def add_cost(self, key_id: str, cost_usd: float, ts: float) -> None:
        if ts >= self._next_month:
            self._roll(ts)
        elif ts < self._month_start:
            return
        self._pending[key_id] = self._pending.get(key_id, 0.0) + cost_usd
        self._flusher.add({"o": "spend", "h": self.spend_hash, "k": key_id, "c": cost_usd, "ttl": SPEND_TTL_MS})

    def spent(self, key_id: str, now: float) -> float:
        if now >= self._next_month:
            self._roll(now)
        return self._base.get(key_id, 0.0) + self._pending.get(key_id, 0.0)

    def reset(self, key_id: str) -> None:
        self._base.pop(key_id, None)
        self._pending.pop(key_id, None)
        self._flusher.add({"o": "reset", "h": self.spend_hash, "k": key_id})

    def seed(self, spend: dict[str, float]) -> None:
        """Start-up: this replica's own month-to-date spend; a lower bound used when Redis needs seeding."""
        self._seed = dict(spend)
        for key_id, value in spend.items():
            self._base[key_id] = max(self._base.get(key_id, 0.0), value)

    def observe(self, key_id: str, spent_usd: float) -> None:
        """Redis's current spend for a key (a gate reply)."""
        self._base[key_id] = spent_usd

    def observe_month(self, month: str, spend: dict[str, float]) -> None:
        """The month's whole spend hash (the periodic read)."""
        if month == self._month:
            self._base = dict(spend)

    def seed_values(self, copy: dict[str, float]) -> dict[str, float]:
        """What to seed an empty month with: per key, the most of the durable copy, what this replica last saw
        in Redis and its own request log (each a lower bound of the true spend; costs not yet acknowledged are
        pushed separately, so they are not in it)."""
        values = dict(copy)
        for source in (self._base, self._seed):
            for key_id, value in source.items():
                values[key_id] = max(values.get(key_id, 0.0), value)
        return values

    def acknowledged(self, batch: list[dict[str, Any]], reply: dict[str, Any]) -> None:
        """A flushed batch: its costs are in Redis now, and Redis said what each key's spend became."""
        for op in batch:
            if op["o"] == "spend" and op["h"] == self.spend_hash:
                left = self._pending.get(op["k"], 0.0) - op["c"]
                if left > 1e-12:
                    self._pending[op["k"]] = left
                else:
                    self._pending.pop(op["k"], None)
        for spend_hash, key_id, value in reply.get("s", ()):
            if spend_hash == self.spend_hash:
                self._base[key_id] = float(value)

    def _roll(self, ts: float) -> None:
        super()._roll(ts)
        self._month = month_tag(self.month_start)
        self._base, self._pending, self._seed = {}, {}, {}


class SharedReservations:
    """The `Reservations` of a replica sharing key budgets through Redis. The gate (stages/shared_gate.py)
    reserves in Redis and tells this object (`held_in_redis`); settle and release are queued for the flusher.
    Each reservation is a new hold field (`<holder>#<n>`), so a settle still queued when a failover reserves
    again cannot touch the new hold.

    `reserved` (what auth and policy count as spent before routing) is this replica's own holds, exact and
    never stale; the other replicas' holds are checked by the gate script, atomically, at the reservation."""

    def __init__(self, flusher: OpFlusher) -> None:
        self.local = LocalReservations()
        self._flusher = flusher
        self._holds: dict[str, tuple[str, tuple[str, ...], float]] = {}  # holder -> (field, accounts, amount)
        self._own: dict[str, float] = {}  # account -> this replica's Redis holds on it
        self._serial = itertools.count(1)
        self.total_usd_redis = 0.0

    # --- the Reservations protocol ---------------------------------------------------------------------------
    def reserve(
        self, holder: str, accounts: tuple[BudgetAccount, ...], worst_usd: float, needed_usd: float
    ) -> BudgetAccount | None:
        """In this process only (plan budgets; key budgets while Redis is down and budgets fail open)."""
        return self.local.reserve(holder, accounts, worst_usd, needed_usd)

    def settle(self, holder: str, actual_usd: float) -> None:
        self.local.settle(holder, actual_usd)
        self._hold_at(holder, max(0.0, actual_usd))

    def release(self, holder: str) -> None:
        self.local.release(holder)
        entry = self._holds.get(holder)
        if entry is not None:
            self._drop(holder)
            self._flusher.add(release_op(list(entry[1]), entry[0]))

    def reserved(self, account_id: str) -> float:
        return self._own.get(account_id, 0.0) + self.local.reserved(account_id)

    @property
    def total_usd(self) -> float:
        return self.local.total_usd + self.total_usd_redis

    # --- what the gate uses ----------------------------------------------------------------------------------
    def next_field(self, holder: str) -> tuple[str, str]:
        """(the field of the hold about to be made, the holder's current Redis field or "")."""
        entry = self._holds.get(holder)
        return f"{holder}#{next(self._serial)}", entry[0] if entry else ""

    def held_in_redis(self, holder: str, field: str, accounts: tuple[str, ...], amount: float) -> None:
        """The gate held `amount` under `field` (and dropped the holder's previous Redis hold, if any)."""
        self._drop(holder)
        self._set(holder, field, accounts, amount)

    def shrink(self, holder: str, amount_usd: float) -> None:
        """A hold made at a bound before routing, brought down to the routed call's worst case (queued)."""
        entry = self._holds.get(holder)
        if entry is not None and amount_usd < entry[2]:
            self._hold_at(holder, amount_usd)

    def forget_redis(self, holder: str) -> None:
        """The gate dropped the holder's previous Redis hold itself (and was refused: nothing new is held)."""
        self._drop(holder)

    def renewals(self) -> list[dict[str, Any]]:
        """The lease renewal of every hold this replica has in Redis (one op; none when it holds nothing)."""
        pairs = [[account, field] for field, accounts, _ in self._holds.values() for account in accounts]
        return [{"o": "renew", "l": pairs, "lease": LEASE_MS}] if pairs else []

    @property
    def holders(self) -> int:
        return len(self._holds) + self.local.holders

    def _hold_at(self, holder: str, amount: float) -> None:
        """The holder's Redis hold becomes `amount`, here now and in Redis with the next flush."""
        entry = self._holds.get(holder)
        if entry is not None:
            field, accounts, _ = entry
            self._set(holder, field, accounts, amount)
            self._flusher.add({"o": "settle", "a": list(accounts), "f": field, "v": amount, "lease": LEASE_MS})

    def _set(self, holder: str, field: str, accounts: tuple[str, ...], amount: float) -> None:
        previous = self._holds.get(holder)
        before = previous[2] if previous else 0.0
        self._holds[holder] = (field, accounts, amount)
        for account in accounts:
            self._own[account] = self._own.get(account, 0.0) + amount - before
        self.total_usd_redis += amount - before

    def _drop(self, holder: str) -> None:
        entry = self._holds.pop(holder, None)
        if entry is None:
            return
        _, accounts, amount = entry
        for account in accounts:
            left = self._own.get(account, 0.0) - amount
            if left > 1e-12:
                self._own[account] = left
            else:
                self._own.pop(account, None)
        self.total_usd_redis = max(0.0, self.total_usd_redis - amount) if self._holds else 0.0
