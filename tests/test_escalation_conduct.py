"""Escalation that a provider's operator would call polite, the circuit breaker, and the health prober."""

from __future__ import annotations

from typing import Any

from tests.conftest import Hub
from tests.fakes.clock import FakeClock
from tests.fakes.openai_fake import Fail, FakeOpenAI, Hang


async def _two_models(hub: Hub) -> str:
    """'primary' ranks first in cheap mode, 'backup' second; both on provider 'fake'."""
    await hub.add_provider()
    await hub.add_model("primary", weight=5, input_per_1k=0.0001, output_per_1k=0.0001, max_context_tokens=8000)
    await hub.add_model("backup", weight=5, input_per_1k=0.001, output_per_1k=0.001, max_context_tokens=8000)
    return await hub.new_key()


async def _cheap(hub: Hub, key: str) -> tuple[int, dict[str, Any], Any]:
    return await hub.chat(key, policy={"mode": "cheap"})


async def test_a_request_rejected_on_its_merits_is_returned_not_failed_over(hub: Hub) -> None:
    key = await _two_models(hub)
    body = {"error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error"}}
    hub.fake.script("primary", Fail(400, body=body))
    status, answer, _ = await _cheap(hub, key)
    assert status == 400 and answer["error"]["type"] == "upstream_rejected"
    assert "Invalid value for 'temperature'" in answer["error"]["message"]
    assert hub.fake.calls("backup") == 0


async def test_a_content_policy_refusal_is_returned_with_its_status(hub: Hub) -> None:
    key = await _two_models(hub)
    hub.fake.script("primary", Fail(422, body={"error": {"message": "flagged by the content policy"}}))
    status, answer, _ = await _cheap(hub, key)
    assert status == 422 and "content policy" in answer["error"]["message"]
    assert hub.fake.calls("backup") == 0


async def test_a_provider_configuration_error_fails_over(hub: Hub) -> None:
    key = await _two_models(hub)
    hub.fake.script("primary", Fail(404, body={"error": {"message": "model not found"}}))
    status, answer, resp = await _cheap(hub, key)
    assert status == 200 and answer["negotiated_model"] == "backup"
    assert resp.headers["X-TokenHub-Attempts"] == "primary=fatal, backup=ok"


async def test_a_short_retry_after_is_waited_out_on_the_same_model(hub: Hub) -> None:
    key = await _two_models(hub)
    hub.fake.script("primary", Fail(429, headers={"Retry-After": "0.2"}))
    status, answer, resp = await _cheap(hub, key)
    assert status == 200 and answer["negotiated_model"] == "primary"
    assert hub.fake.calls("primary") == 2 and hub.fake.calls("backup") == 0
    assert "waited 0.2s (Retry-After) to retry primary" in answer["routing_reason"]
    assert resp.headers["X-TokenHub-Attempts"] == "primary=rate_limited, primary=ok"


async def test_the_same_model_is_waited_for_only_once(hub: Hub) -> None:
    key = await _two_models(hub)
    hub.fake.script("primary", Fail(429, headers={"Retry-After": "0.1"}), Fail(429, headers={"Retry-After": "0.1"}))
    status, answer, _ = await _cheap(hub, key)
    assert status == 200 and answer["negotiated_model"] == "backup"
    assert hub.fake.calls("primary") == 2  # never hammered


async def test_a_long_retry_after_fails_over_at_once(hub: Hub) -> None:
    key = await _two_models(hub)
    hub.fake.script("primary", Fail(429, headers={"Retry-After": "20"}))
    status, answer, resp = await _cheap(hub, key)
    assert status == 200 and answer["negotiated_model"] == "backup"
    assert hub.fake.calls("primary") == 1 and "waited" not in answer["routing_reason"]  # no wait, straight on
    assert resp.headers["X-TokenHub-Attempts"] == "primary=rate_limited, backup=ok"


async def test_a_silent_provider_is_not_retried(make_hub: Any) -> None:
    # retries stay on (2): a hang must not use them. The timeout also bounds the backup's answer, so it leaves
    # room for a loaded CI machine (0.3 s once timed the backup out too).
    hub = await make_hub(provider_timeout_secs=1.5)
    key = await _two_models(hub)
    hub.fake.script("primary", Hang(10))
    status, answer, _ = await _cheap(hub, key)
    assert status == 200 and answer["negotiated_model"] == "backup", answer
    assert hub.fake.calls("primary") == 1


async def test_breaker_opens_then_a_recovered_provider_gets_traffic_back(make_hub: Any) -> None:
    hub = await make_hub(breaker_cooldown_secs=0.5, provider_max_retries=0)
    clock = FakeClock()
    hub.services.health._clock = clock  # no public seam: Services builds the tracker with the real clock
    async with FakeOpenAI() as other:
        await hub.add_provider("flaky")
        await hub.add_provider("steady", base_url=other.base_url)
        await hub.add_model("cheap-flaky", "flaky", weight=5, input_per_1k=0.0001, output_per_1k=0.0001)
        await hub.add_model("dear-steady", "steady", weight=5, input_per_1k=0.001, output_per_1k=0.001)
        key = await hub.new_key()
        hub.fake.script("cheap-flaky", *[Fail(503)] * 5)
        for _ in range(5):
            status, answer, _ = await _cheap(hub, key)
            assert status == 200 and answer["negotiated_model"] == "dear-steady"  # failed over each time
        assert hub.services.health.breaker_state("flaky") == "open"
        calls = hub.fake.calls("cheap-flaky")
        status, answer, _ = await _cheap(hub, key)  # open: skipped without a call
        assert answer["negotiated_model"] == "dear-steady" and hub.fake.calls("cheap-flaky") == calls
        assert "cheap-flaky (health_down)" in answer["routing_reason"]
        clock.advance(0.49)
        assert hub.services.health.breaker_state("flaky") == "open"  # not yet
        clock.advance(0.02)  # cooldown over: half-open, the next request is the trial
        assert hub.services.health.breaker_state("flaky") == "half_open"
        status, answer, _ = await _cheap(hub, key)
        assert answer["negotiated_model"] == "cheap-flaky"  # it recovered: traffic is back
        assert hub.services.health.breaker_state("flaky") == "closed"


async def test_prober_marks_a_dead_provider_and_readmits_it(make_hub: Any) -> None:
    hub = await make_hub()
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5)
    prober = hub.services.health_prober
    for _ in range(5):
        await hub.fake.stop()  # nothing listens: every probe fails
        await prober.run_once()
        await hub.fake.start()
    # the fake came back on a new port: re-point the provider, then probe again
    assert hub.services.health.get("fake").state == "down"
    await hub.admin("PATCH", "/providers/fake", {"base_url": hub.fake.base_url}, expect=200)
    await prober.run_once()
    health = hub.services.health.get("fake")
    assert health.state == "healthy" and health.latency_samples >= 1


async def test_admin_health_reports_the_breaker(make_hub: Any) -> None:
    hub = await make_hub(provider_max_retries=0)
    key = await _two_models(hub)
    hub.fake.script("primary", *[Fail(503)] * 5)
    hub.fake.script("backup", *[Fail(503)] * 5)
    for _ in range(3):
        await _cheap(hub, key)
    providers = {p["provider_id"]: p for p in (await hub.admin("GET", "/health"))["providers"]}
    assert providers["fake"]["breaker"] == "open" and providers["fake"]["state"] == "down"
