"""API-key rotation periods (spec row 66): `rotation_days` on create and PATCH, and the hourly job that
disables keys not rotated within their period, with an audit row and a `key_rotation_expired` event."""

from __future__ import annotations

import time

from tests.conftest import Hub
from tests.fakes.clock import FakeClock
from tests.test_observability_events import subscribe

DAY = 86400.0


async def _key(hub: Hub, **fields: object) -> tuple[str, str]:
    data = await hub.admin("POST", "/apikeys", {"name": "rotating", **fields}, expect=201)
    return data["id"], data["key"]


async def test_rotation_days_accepted_on_create_and_patch(hub: Hub) -> None:
    key_id, _ = await _key(hub, rotation_days=30)
    listed = (await hub.admin("GET", "/apikeys"))["keys"]
    assert [k["rotation_days"] for k in listed if k["id"] == key_id] == [30]
    patched = await hub.admin("PATCH", f"/apikeys/{key_id}", {"rotation_days": 7}, expect=200)
    assert patched["rotation_days"] == 7
    default_id, _ = await _key(hub)
    assert (await hub.admin("PATCH", f"/apikeys/{default_id}", {"name": "x"}))["rotation_days"] == 0


async def test_bad_rotation_days_refused_and_nothing_changes(hub: Hub) -> None:
    key_id, _ = await _key(hub, rotation_days=30)
    for bad in (-1, 1.5, "30", 36_501, True):
        for method, path in (("POST", "/apikeys"), ("PATCH", f"/apikeys/{key_id}")):
            body = {"name": "bad", "rotation_days": bad} if method == "POST" else {"rotation_days": bad}
            error = (await hub.admin(method, path, body, expect=400))["error"]
            assert error["type"] == "invalid_request" and "rotation_days" in error["message"] and error["request_id"]
    keys = (await hub.admin("GET", "/apikeys"))["keys"]
    assert [(k["id"], k["rotation_days"]) for k in keys] == [(key_id, 30)]


async def test_job_disables_keys_past_their_period_with_event_and_audit_row(ready_hub: tuple[Hub, str]) -> None:
    hub, plain_key = ready_hub  # no rotation period: never disabled
    due_id, due_key = await _key(hub, rotation_days=30)
    later_id, later_key = await _key(hub, rotation_days=31)
    await hub.chat_ok(due_key)
    enforcer = hub.services.key_rotation
    clock = FakeClock(time.time() + 30 * DAY - 60)
    enforcer.clock = clock
    assert await enforcer.run_once() == []  # a minute early: nothing

    events = await subscribe(hub)
    clock.advance(61)  # exactly past 30 days
    assert await enforcer.run_once() == [due_id]
    event = await events.until("key_rotation_expired")
    assert event["api_key_id"] == due_id and event["api_key_name"] == "rotating" and "30 days" in event["reason"]
    assert due_key not in str(event)

    await hub.chat_refused(due_key, 401, "unauthorized")  # the next request already
    await hub.chat_ok(later_key)
    await hub.chat_ok(plain_key)
    keys = {k["id"]: k for k in (await hub.admin("GET", "/apikeys"))["keys"]}
    assert keys[due_id]["enabled"] is False and keys[later_id]["enabled"] is True

    rows = (await hub.admin("GET", "/audit?action=api_key_rotation_expired"))["logs"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["actor"], row["target"], row["status"]) == ("tokenhub", due_id, 200)
    assert row["detail"]["rotation_days"] == 30 and due_key not in str(row)

    assert await enforcer.run_once() == []  # already disabled: no second row, no second event
    assert len((await hub.admin("GET", "/audit?action=api_key_rotation_expired"))["logs"]) == 1


async def _set_rotated_at(hub: Hub, key_id: str, when: float) -> None:
    """Rotation stamps the real time; move it to the fake clock's "now"."""
    store = hub.services.config

    def write() -> None:
        with store.db:
            store.db.execute("UPDATE api_keys SET rotated_at = ? WHERE id = ?", (when, key_id))

    await store.call(write)


async def test_rotating_restarts_the_period(ready_hub: tuple[Hub, str]) -> None:
    hub, _ = ready_hub
    key_id, _ = await _key(hub, rotation_days=10)
    enforcer = hub.services.key_rotation
    clock = FakeClock(time.time() + 9 * DAY)
    enforcer.clock = clock
    # rotated on day 9
    rotated = await hub.admin("POST", f"/apikeys/{key_id}/rotate", expect=200)
    new_key = rotated["key"]
    await _set_rotated_at(hub, key_id, clock())
    clock.advance(2 * DAY)  # day 11: 11 days since creation, 2 since the rotation
    assert await enforcer.run_once() == []
    await hub.chat_ok(new_key)
    clock.advance(8 * DAY)  # 10 days since the rotation
    assert await enforcer.run_once() == [key_id]
    # an admin brings it back: rotate, then enable
    await hub.admin("POST", f"/apikeys/{key_id}/rotate", expect=200)
    await _set_rotated_at(hub, key_id, clock())
    await hub.admin("PATCH", f"/apikeys/{key_id}", {"enabled": True}, expect=200)
    assert await enforcer.run_once() == []


async def test_the_job_is_scheduled_hourly(hub: Hub) -> None:
    job = next(job for job in hub.services.jobs if job.name == "key-rotation")
    assert job.interval_secs == 3600 and job.running
