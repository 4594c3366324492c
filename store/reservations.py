"""Budget reservations: the money requests in flight may still spend, counted against their budgets.

Before a provider call, a request *reserves* its worst-case cost against each budget it draws on (its API
key's monthly budget, a /v1/plan's budget); the call is refused when recorded spend + what others hold +
this amount would pass the limit. After the call the hold shrinks to the actual cost, and when the request's
record moves that cost into the spend (key accounting) the hold is released. So spend + holds never passes a
limit however many requests run at once.

`Reservations` is the interface the request path uses: in memory here (dict updates, O(1), no I/O); a shared
store (Redis, issue 17) can implement the same four calls with one atomic script each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["EPSILON_USD", "BudgetAccount", "LocalReservations", "Reservations", "key_account_id"]

EPSILON_USD = 1e-12  # float noise: 20 x $0.00002 must fit in a $0.0004 budget


def key_account_id(key_id: str) -> str:
    """The reservation account of an API key's monthly budget."""
    return f"key:{key_id}"


@dataclass(frozen=True, slots=True)
class BudgetAccount:
    """One budget a request draws on: `id` names it ("key:<id>", "plan:<request id>"), `limit_usd` is its size
    and `spent_usd` what is already recorded against it (read by the caller when it reserves)."""

    id: str
    limit_usd: float
    spent_usd: float


class Reservations(Protocol):
    def reserve(
        self, holder: str, accounts: tuple[BudgetAccount, ...], worst_usd: float, needed_usd: float
    ) -> BudgetAccount | None:
        """Hold `worst_usd` for `holder` on every account, replacing the holder's previous hold (a failover
        reserves again at the next candidate's price). When the worst case does not fit but `needed_usd` (the
        estimate the request was routed on) does, hold everything that is left instead: the request runs, and
        nothing else runs beside it on that budget. Returns None when held, else the first account where even
        `needed_usd` does not fit (and then holds nothing)."""
        ...

    def settle(self, holder: str, actual_usd: float) -> None:
        """The call ended: keep only its actual cost held until the record moves it into the spend."""
        ...

    def release(self, holder: str) -> None:
        """The cost is in the spend now (or there was none): drop the hold. Unknown holders are ignored."""
        ...

    def reserved(self, account_id: str) -> float:
        """What holders have reserved on this account right now."""
        ...

    @property
    def total_usd(self) -> float:
        """Every hold this process knows of (the gauge)."""
        ...


class LocalReservations:
    """This process's reservations. Enough for one TokenHub; several replicas need a shared implementation."""

    def __init__(self) -> None:
        self._holds: dict[str, tuple[tuple[str, ...], float]] = {}  # holder -> (account ids, amount)
        self._reserved: dict[str, float] = {}  # account id -> sum of its holds
        self.total_usd = 0.0  # every hold, for the gauge

    def reserve(
        self, holder: str, accounts: tuple[BudgetAccount, ...], worst_usd: float, needed_usd: float
    ) -> BudgetAccount | None:
        if holder in self._holds:  # a failover reserving again at the next candidate's price
            self.release(holder)
        amount = max(0.0, worst_usd)
        needed = min(amount, max(0.0, needed_usd))
        for account in accounts:
            left = account.limit_usd - account.spent_usd - self._reserved.get(account.id, 0.0)
            if needed > left + EPSILON_USD:
                return account
            amount = min(amount, max(left, needed))
        self._hold(holder, tuple(account.id for account in accounts), amount)
        return None

    def settle(self, holder: str, actual_usd: float) -> None:
        held = self._holds.get(holder)
        if held is None:
            return
        ids, amount = held
        actual = max(0.0, actual_usd)
        delta = actual - amount  # adjusted in place: one pass instead of a release and a new hold
        self._holds[holder] = (ids, actual)
        reserved = self._reserved
        for account_id in ids:
            reserved[account_id] += delta
        self.total_usd += delta

    def release(self, holder: str) -> None:
        held = self._holds.pop(holder, None)
        if held is None:
            return
        ids, amount = held
        for account_id in ids:
            left = self._reserved[account_id] - amount
            if left > EPSILON_USD:
                self._reserved[account_id] = left
            else:
                del self._reserved[account_id]  # no float residue keeps an idle account around
        self.total_usd = max(0.0, self.total_usd - amount) if self._holds else 0.0

    def reserved(self, account_id: str) -> float:
        return self._reserved.get(account_id, 0.0)

    def held(self, holder: str) -> float:
        """What `holder` holds now (0 when nothing)."""
        entry = self._holds.get(holder)
        return entry[1] if entry is not None else 0.0

    @property
    def holders(self) -> int:
        return len(self._holds)

    def _hold(self, holder: str, ids: tuple[str, ...], amount: float) -> None:
        self._holds[holder] = (ids, amount)
        for account_id in ids:
            self._reserved[account_id] = self._reserved.get(account_id, 0.0) + amount
        self.total_usd += amount
