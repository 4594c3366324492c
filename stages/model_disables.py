"""Models disabled in memory because their provider account ran out of money (row 25).

A provider that answers "insufficient quota" / "budget exceeded" / "credit balance too low" will refuse every
call to that model until someone pays, so routing stops offering it: dispatch disables the model here, the
Router excludes it (`quota_exhausted`), and the request fails over. Nothing is persisted: the stored model
stays enabled, a restart forgets the disable, an admin PATCH of the model re-enables it at once, and it
re-enables itself after `disable_secs` (0 = only by the admin or a restart) so a topped-up account comes back
without anyone noticing the outage first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["EXCLUSION", "DisabledModel", "ModelDisables"]

EXCLUSION = "quota_exhausted"  # the Router's reason name for a disabled model


@dataclass(frozen=True, slots=True)
class DisabledModel:
    model_id: str
    provider_id: str
    reason: str  # the provider's error message (already scrubbed of secrets)
    since: float  # wall-clock seconds
    until: float  # wall-clock seconds; 0 = until re-enabled by an admin or a restart


# Told when a model is disabled, and when it is re-enabled (with why).
OnDisabled = Callable[[DisabledModel], None]
OnEnabled = Callable[[DisabledModel, str], None]


class ModelDisables:
    """The disabled models, by id. O(1) per lookup; expiry is checked lazily on read."""

    def __init__(
        self,
        *,
        disable_secs: float,
        clock: Callable[[], float] = time.time,
        on_disabled: OnDisabled | None = None,
        on_enabled: OnEnabled | None = None,
    ) -> None:
        self.disable_secs = disable_secs
        self._clock = clock
        self._disabled: dict[str, DisabledModel] = {}
        self._on_disabled = on_disabled
        self._on_enabled = on_enabled
        # Told of each disable and admin re-enable (model id, the entry or None) when replicas share them
        # (stages/shared_health.py); expiry is not told: every replica expires an entry at the same `until`.
        self.on_shared: Callable[[str, DisabledModel | None], None] | None = None

    def disable(self, model_id: str, provider_id: str, reason: str) -> None:
        """Disable `model_id` (again: the period restarts, no second event)."""
        now = self._clock()
        until = now + self.disable_secs if self.disable_secs > 0 else 0.0
        known = model_id in self._disabled
        entry = DisabledModel(model_id, provider_id, reason, now, until)
        self._disabled[model_id] = entry
        if self.on_shared is not None:
            self.on_shared(model_id, entry)
        if not known and self._on_disabled is not None:
            self._on_disabled(entry)

    def apply_shared(self, model_id: str, entry: DisabledModel | None) -> None:
        """Another replica disabled `model_id` (entry) or an admin there re-enabled it (None)."""
        if entry is None:
            current = self._disabled.get(model_id)
            if current is not None:
                self._enable(current, "re-enabled on another replica")
            return
        if entry.until and self._clock() >= entry.until:
            return
        known = model_id in self._disabled
        self._disabled[model_id] = entry
        if not known and self._on_disabled is not None:
            self._on_disabled(entry)

    def reason(self, model_id: str) -> str | None:
        """EXCLUSION while `model_id` is disabled, else None."""
        if not self._disabled:
            return None
        entry = self._disabled.get(model_id)
        if entry is None:
            return None
        if entry.until and self._clock() >= entry.until:
            self._enable(entry, "the disable period ended")
            return None
        return EXCLUSION

    def enable(self, model_id: str, why: str) -> bool:
        """Re-enable `model_id`; False when it was not disabled."""
        entry = self._disabled.get(model_id)
        if self.on_shared is not None:
            self.on_shared(model_id, None)  # even when not disabled here: another replica may have it disabled
        if entry is None:
            return False
        self._enable(entry, why)
        return True

    def active(self) -> list[DisabledModel]:
        """The models disabled right now, by id (expired ones are re-enabled on the way)."""
        return [self._disabled[m] for m in sorted(self._disabled) if self.reason(m) is not None]

    def count(self) -> int:
        """How many are disabled right now (read only: for the gauge, which may be read off the event loop)."""
        now = self._clock()
        return sum(1 for entry in self._disabled.values() if not entry.until or now < entry.until)

    def _enable(self, entry: DisabledModel, why: str) -> None:
        del self._disabled[entry.model_id]
        if self._on_enabled is not None:
            self._on_enabled(entry, why)
