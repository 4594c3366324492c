"""The shared gate: a request's rate limits and budget reservation in Redis, in one round trip (docs/scaling.md).

With TOKENHUB_REDIS_URL the per-IP limit (taken at the edge) and the key's per-minute limits (auth) do not call
Redis where they run: they append the buckets to take to the context (`ctx.shared_takes`), and auth sends them,
with a hold on the key's budget at an upper bound (stages/budget_bound.py), in one atomic script whose round
trip overlaps routing; dispatch awaits it before the provider call, shrinks the hold to the routed model's
worst case, or reserves exactly when the bound was refused or falls short. A request that ends before dispatch
(a bad body, a refused key, no model) has its takes sent afterwards by the flusher, so it still counts, and its
early hold released. A bucket Redis found empty is remembered here until it refills, so the next request from
that IP or key is refused at the edge or in auth with no round trip and no work.

Redis down (`RedisDown`): the same takes run on this process's buckets, a key budget fails closed (503) or, with
`shared_budget_on_outage=open`, is checked against this replica's local view; each counts
`tokenhub_shared_state_fallbacks{what}`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pipeline.context import RequestContext
from pipeline.errors import RateLimited, SharedBudgetUnavailable
from pipeline.metrics import Metrics
from pipeline.types import ApiKeyInfo, RequestRecord
from stages.key_limits import KeyLimits
from stages.shared_spend import SharedSpend
from store.config_store import ConfigStore
from store.redis_limits import BucketTake, OpFlusher, RedisLimits, made_hold, release_op
from store.redis_link import RedisDown, RedisLink
from store.reservations import EPSILON_USD, BudgetAccount, key_account_id
from store.shared_budgets import LEASE_MS, SharedKeyLedger, SharedReservations

__all__ = ["EarlyCall", "Shared", "SharedGate", "TakeGroup", "build_shared"]

MAX_REMEMBERED = 100_000  # denied buckets and Redis token charges kept (bounds, not working limits)


@dataclass(frozen=True, slots=True)
class TakeGroup:
    """Buckets taken all or none (the key's requests and tokens per minute), and the same check on this
    process's buckets for when Redis is down: returns (seconds to wait, the 429's message), (0, "") admitted."""

    takes: tuple[BucketTake, ...]
    local: Callable[[], tuple[float, str]]


class SharedGate:
    name = "shared_limits"  # also a record sink: it sends the takes of requests that ended before dispatch

    def __init__(
        self,
        *,
        limits: RedisLimits,
        flusher: OpFlusher,
        ledger: SharedKeyLedger,
        reservations: SharedReservations,
        key_limits: KeyLimits,
        metrics: Metrics,
        fail_open: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self.flusher = flusher  # public: tests and shutdown wait for it to drain
        self._ledger = ledger
        self._reservations = reservations
        self._key_limits = key_limits
        self._fallbacks = metrics.shared_state_fallbacks
        self._fail_open = fail_open
        self._clock = clock
        self._denied: OrderedDict[str, float] = OrderedDict()  # bucket key -> when it has a token again
        self._charged: OrderedDict[str, tuple[str, float, float, float]] = OrderedDict()  # request -> tpm charge

    # --- the edge and auth: defer the takes (no I/O) ---------------------------------------------------------
    def defer_ip(self, ctx: RequestContext, rate: float, burst: float, local: Callable[[], float]) -> float:
        """The per-IP bucket of a rate_limit stage with these options: the seconds to wait when it is known to
        be empty (refuse now), else 0 with the take deferred to the request's round trip."""
        key = f"rl:ip:{rate:g}:{burst:g}:{ctx.client_ip}"
        if wait := self._denied_for(key):
            return wait
        take = BucketTake(key, rate, float(burst), 1.0, True, "rate limit exceeded")

        def local_take() -> tuple[float, str]:
            return local(), take.message

        ctx.shared_takes.append(TakeGroup((take,), local_take))
        return 0.0

    def defer_key(self, ctx: RequestContext, key: ApiKeyInfo, estimate: Callable[[], int]) -> tuple[float, str]:
        """The key's requests- and tokens-per-minute buckets, as `KeyLimits.admit` answers."""
        takes: list[BucketTake] = []
        rpm, tpm = key.rate_limit_rpm, key.rate_limit_tpm
        if rpm > 0:
            bucket = f"rl:rpm:{key.id}"
            if wait := self._denied_for(bucket):
                return wait, "requests"
            message = f"api key rate limit exceeded: {rpm} requests per minute"
            takes.append(BucketTake(bucket, rpm / 60.0, float(rpm), 1.0, True, message))
        if tpm > 0:
            bucket = f"rl:tpm:{key.id}"
            if wait := self._denied_for(bucket):
                return wait, "tokens"
            charged = float(max(0, estimate()))
            message = f"api key rate limit exceeded: {tpm} tokens per minute"
            takes.append(BucketTake(bucket, tpm / 60.0, float(tpm), charged, False, message))
        if not takes:
            return 0.0, ""

        def local_take() -> tuple[float, str]:
            wait, what = self._key_limits.admit(key, ctx.request_id, estimate)
            limit = rpm if what == "requests" else tpm
            return wait, f"api key rate limit exceeded: {limit} {what} per minute" if wait else ""

        ctx.shared_takes.append(TakeGroup(tuple(takes), local_take))
        return 0.0, ""

    def send_early(self, ctx: RequestContext, key: ApiKeyInfo, bound_usd: Callable[[], float]) -> None:
        """After auth: the request's rate limits go to Redis now, and so does, for a key with a monthly budget, a
        hold of `bound_usd()` (the most any model could bill it), so the round trip overlaps routing and dispatch
        finds the answer waiting. A bound refused (the budget is nearly spent) or short of the routed model's
        worst case is made exactly by dispatch (a second round trip); a bound held is shrunk to it."""
        if not self._limits.link.up:
            return  # dispatch runs the takes on this process's buckets
        if ctx.plan_budget is not None or (key.monthly_budget_usd > 0 and ctx.scope == "plan"):
            return  # a plan's steps reserve on its budget too: its first step sends the takes with its hold
        hold: tuple[str, str] | None = None
        reservation: dict[str, Any] | None = None
        if key.monthly_budget_usd > 0:
            account = key_account_id(key.id)
            field, previous = self._reservations.next_field(ctx.request_id)
            hold = (field, account)
            bound = bound_usd()
            reservation = {
                "h": field,
                "prev": previous,
                "a": [[account, key.monthly_budget_usd, self._ledger.spend_hash, key.id]],
                "worst": bound,
                "need": bound,
                "lease": LEASE_MS,
            }
        elif not ctx.shared_takes:
            return
        groups, ctx.shared_takes = ctx.shared_takes, []
        answer = self._limits.start([group.takes for group in groups], reservation)
        answer.add_done_callback(partial(self._early_answered, groups))
        ctx.shared_early = EarlyCall(groups, answer, hold)

    def _early_answered(self, groups: list[TakeGroup], answer: asyncio.Future[bytes]) -> None:
        """Whether or not dispatch comes to await it: an empty bucket is remembered, a failure retrieved."""
        if answer.cancelled() or answer.exception() is not None or b'"rl"' not in answer.result():
            return
        reply = self._limits.parse(answer.result())
        if reply.limited is not None:
            group, bucket = reply.limited
            self._deny(groups[group].takes[bucket].key, reply.wait)

    async def _await_early(self, ctx: RequestContext) -> float:
        """Dispatch's side of `send_early`: 429 when a bucket was empty (Redis down: the takes run here); returns
        what the early hold holds for this request (0.0: none, or refused)."""
        early: EarlyCall = ctx.shared_early
        ctx.shared_early = None
        try:
            reply = self._limits.parse(await early.answer)
        except RedisDown:
            self._run_locally(early.groups, ctx.request_id)
            return 0.0
        if reply.limited is not None:
            group, bucket = reply.limited
            raise RateLimited(early.groups[group].takes[bucket].message, retry_after=reply.wait)
        self._remember_charges(ctx.request_id, early.groups)
        if early.hold is None:
            return 0.0
        field, account = early.hold
        if reply.info:
            self._ledger.observe(account.removeprefix("key:"), reply.info[0][0])
        if reply.refused is not None:
            return 0.0
        self._reservations.held_in_redis(ctx.request_id, field, (account,), reply.held)
        return reply.held

    # --- dispatch: the one round trip --------------------------------------------------------------------------
    async def admit(
        self, ctx: RequestContext, accounts: tuple[BudgetAccount, ...], worst_usd: float, needed_usd: float
    ) -> tuple[BudgetAccount, float] | None:
        """Take the deferred buckets and reserve `worst_usd` (`needed_usd` at least) on the budgets, atomically
        in Redis. Raises RateLimited (a bucket is empty) or SharedBudgetUnavailable (Redis down, budgets fail
        closed); returns (the refusing account with its recorded spend, what requests in flight hold on it), or
        None when admitted (and held)."""
        held_early = await self._await_early(ctx) if ctx.shared_early is not None else 0.0
        groups: list[TakeGroup] = ctx.shared_takes
        ctx.shared_takes = []
        holder = ctx.request_id
        if held_early + EPSILON_USD >= worst_usd and not groups and len(accounts) == 1:  # the bound covers it
            self._reservations.shrink(holder, worst_usd)
            return None
        local = self._reservations.local
        keys = tuple(a for a in accounts if a.id.startswith("key:"))
        plans = tuple(a for a in accounts if not a.id.startswith("key:"))
        worst = worst_usd
        if plans:  # one /v1/plan runs in this process: its budget is held here, first, so Redis holds no more
            refused = local.reserve(holder, plans, worst_usd, needed_usd)
            if refused is not None:
                self.defer(groups)
                return refused, local.reserved(refused.id)
            worst = local.held(holder)
        reservation: dict[str, Any] | None = None
        field = ""
        if keys:
            field, previous = self._reservations.next_field(holder)
            reservation = {
                "h": field,
                "prev": previous,
                "a": [[a.id, a.limit_usd, self._ledger.spend_hash, a.id.removeprefix("key:")] for a in keys],
                "worst": worst,
                "need": min(needed_usd, worst),
                "lease": LEASE_MS,
            }
        if not groups and reservation is None:
            return None
        try:
            reply = await self._limits.gate([group.takes for group in groups], reservation)
        except RedisDown:
            return self._fall_back(groups, holder, accounts, keys, worst_usd, needed_usd)
        if reply.limited is not None:
            group, bucket = reply.limited
            take = groups[group].takes[bucket]
            self._deny(take.key, reply.wait)
            local.release(holder)
            raise RateLimited(take.message, retry_after=reply.wait)
        self._remember_charges(holder, groups)
        if reservation is None:
            return None
        for account, (spent, _held) in zip(keys, reply.info, strict=False):
            self._ledger.observe(account.id.removeprefix("key:"), spent)
        if reply.refused is not None:
            self._reservations.forget_redis(holder)
            local.release(holder)
            account = keys[reply.refused]
            spent, held = reply.info[reply.refused]
            return BudgetAccount(account.id, account.limit_usd, spent), held
        self._reservations.held_in_redis(holder, field, tuple(a.id for a in keys), reply.held)
        return None

    def _fall_back(
        self,
        groups: list[TakeGroup],
        holder: str,
        accounts: tuple[BudgetAccount, ...],
        keys: tuple[BudgetAccount, ...],
        worst_usd: float,
        needed_usd: float,
    ) -> tuple[BudgetAccount, float] | None:
        local = self._reservations.local
        self._run_locally(groups, holder)
        if not keys:
            return None
        self._fallbacks.labels("budget").inc()
        if not self._fail_open:
            local.release(holder)
            raise SharedBudgetUnavailable()
        # open: this replica's view (Redis's last spend + its own costs since) against every budget, held here
        refused = local.reserve(holder, accounts, worst_usd, needed_usd)
        return (refused, local.reserved(refused.id)) if refused is not None else None

    def _run_locally(self, groups: list[TakeGroup], holder: str) -> None:
        if not groups:
            return
        self._fallbacks.labels("rate_limit").inc()
        for group in groups:
            wait, message = group.local()
            if wait:
                self._reservations.local.release(holder)
                raise RateLimited(message, retry_after=wait)

    # --- after the request ---------------------------------------------------------------------------------------
    def defer(self, groups: list[TakeGroup]) -> None:
        """Takes of a request that never reached its round trip: sent by the flusher (counted, not enforced on
        it: it has already ended), or on this process's buckets while Redis is down."""
        if not groups:
            return
        if not self._limits.link.up:
            self._count_locally(groups)
            return
        self.flusher.add(*({"o": "take", "b": take.wire()} for group in groups for take in group.takes))

    def __call__(self, record: RequestRecord, ctx: RequestContext) -> None:
        """The recorder's last word on a request (a sink): its deferred takes, if dispatch never sent them."""
        groups, ctx.shared_takes = ctx.shared_takes, []
        self.defer(groups)
        if (early := ctx.shared_early) is not None:  # sent early, never awaited (the request ended before dispatch)
            ctx.shared_early = None
            early.answer.add_done_callback(partial(self._early_unused, early))

    def _early_unused(self, early: EarlyCall, answer: asyncio.Future[bytes]) -> None:
        """An early call no dispatch awaited: counted here if Redis failed; a hold it made is released."""
        if answer.cancelled():
            return  # shutdown: a hold it made expires with its lease
        if answer.exception() is not None:
            self._count_locally(early.groups)
        elif early.hold is not None and made_hold(answer.result()):
            field, account = early.hold
            self.flusher.add(release_op([account], field))

    def _count_locally(self, groups: list[TakeGroup]) -> None:
        self._fallbacks.labels("rate_limit").inc()
        for group in groups:
            group.local()

    def settle(self, request_id: str, actual_tokens: int, tpm: int) -> None:
        """The key's tokens-per-minute charge made by the gate becomes the request's actual tokens (batched);
        a charge made locally (Redis was down) is settled locally."""
        charge = self._charged.pop(request_id, None)
        if charge is None:
            self._key_limits.settle(request_id, actual_tokens, tpm)
            return
        bucket, rate, burst, charged = charge
        self.flusher.add({"o": "tpm", "k": bucket, "rate": rate, "burst": burst, "d": actual_tokens - charged})

    def on_flushed(self, batch: list[dict[str, Any]], reply: dict[str, Any]) -> None:
        """A flushed batch's deferred takes that found their bucket empty: refuse its next requests locally."""
        for index, wait in reply.get("w", ()):
            op = batch[int(index) - 1]
            if op["o"] == "take":
                self._deny(op["b"][0], float(wait))

    def _remember_charges(self, holder: str, groups: list[TakeGroup]) -> None:
        for group in groups:
            for take in group.takes:
                if not take.strict:  # the tokens-per-minute charge, settled after the record
                    self._charged[holder] = (take.key, take.rate, take.burst, take.cost)
                    if len(self._charged) > MAX_REMEMBERED:
                        self._charged.popitem(last=False)

    def _deny(self, key: str, wait: float) -> None:
        self._denied[key] = self._clock() + wait
        self._denied.move_to_end(key)
        while len(self._denied) > MAX_REMEMBERED:
            self._denied.popitem(last=False)

    def _denied_for(self, key: str) -> float:
        until = self._denied.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left > 0:
            return left
        del self._denied[key]
        return 0.0


@dataclass(frozen=True, slots=True)
class EarlyCall:
    """A gate call auth sent before routing: its groups of takes, the pending answer, and the (field, account) of
    the key-budget hold it asked for (None: takes only; always None for a /v1/plan, whose first step may take
    the call over)."""

    groups: list[TakeGroup]
    answer: asyncio.Future[bytes]
    hold: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class Shared:
    gate: SharedGate
    ledger: SharedKeyLedger
    reservations: SharedReservations
    spend: SharedSpend  # the start/stop component: flusher, lease renewals, spend sync and its durable copy


def build_shared(
    link: RedisLink, config: ConfigStore, metrics: Metrics, key_limits: KeyLimits, on_outage: str
) -> Shared:
    """The shared limits, spend and holds of one replica, wired to one flusher."""
    limits = RedisLimits(link)
    parts: dict[str, Any] = {}

    def on_reply(batch: list[dict[str, Any]], reply: dict[str, Any]) -> None:
        parts["ledger"].acknowledged(batch, reply)
        parts["gate"].on_flushed(batch, reply)

    fallbacks = metrics.shared_state_fallbacks
    flusher = OpFlusher(limits, on_reply=on_reply, on_fallback=lambda what: fallbacks.labels(what).inc())
    ledger = parts["ledger"] = SharedKeyLedger(flusher)
    reservations = SharedReservations(flusher)
    gate = parts["gate"] = SharedGate(
        limits=limits,
        flusher=flusher,
        ledger=ledger,
        reservations=reservations,
        key_limits=key_limits,
        metrics=metrics,
        fail_open=on_outage == "open",
    )
    spend = SharedSpend(limits=limits, flusher=flusher, ledger=ledger, reservations=reservations, config=config)
    return Shared(gate, ledger, reservations, spend)
