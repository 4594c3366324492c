"""Rotation-period enforcement (spec row 66): an hourly job disables every API key with a ``rotation_days``
period that has not been rotated within it (measured from its last rotation; creation counts as one).

Each key it disables gets a warning log line, an audit row (actor ``tokenhub``, the key id as target) and a
``key_rotation_expired`` event; the request path sees the change on the next request (the routing table is
swapped), and the key's per-minute limits are forgotten. Rotating the key (POST /apikeys/{id}/rotate) and
enabling it again (PATCH {"enabled": true}) brings it back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from pipeline.events import EventBus
from stages.key_limits import KeyLimits
from store import api_keys, audit
from store.config_store import ConfigStore

__all__ = ["INTERVAL_SECS", "KeyRotationEnforcer"]

log = structlog.get_logger("tokenhub.key_rotation")
INTERVAL_SECS = 3600.0
EVENT = "key_rotation_expired"
ACTION = "api_key_rotation_expired"


class KeyRotationEnforcer:
    def __init__(
        self,
        *,
        config: ConfigStore,
        events: EventBus,
        key_limits: KeyLimits,
        reload_config: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._events = events
        self._key_limits = key_limits
        self._reload_config = reload_config
        self.clock = clock  # tests replace it

    async def run_once(self) -> list[str]:
        """One round: returns the ids of the keys it disabled."""
        now = self.clock()
        disabled = await self._config.call(self._disable, now)
        if not disabled:
            return []
        await self._reload_config()
        for key in disabled:
            self._key_limits.forget(key["id"])
            reason = f"not rotated for {key['rotation_days']} days (rotation period)"
            log.warning("api_key_rotation_expired", api_key_id=key["id"], api_key_name=key["name"])
            self._events.publish(EVENT, api_key_id=key["id"], api_key_name=key["name"], reason=reason)
        return [key["id"] for key in disabled]

    def _disable(self, now: float) -> list[dict[str, Any]]:
        """On the store thread: disable the due keys, then append their audit rows."""
        db = self._config.db
        disabled = api_keys.disable_rotation_expired(db, now)
        for key in disabled:
            detail = {"name": key["name"], "rotation_days": key["rotation_days"], "rotated_at": key["rotated_at"]}
            entry = audit.AuditEntry(
                timestamp=now,
                actor="tokenhub",
                client_ip="",
                method="JOB",
                route="rotation-enforcement",
                action=ACTION,
                target=key["id"],
                detail=json.dumps(detail, separators=(",", ":")),
                status=200,
                request_id="",
            )
            audit.append(db, entry)
        return disabled
