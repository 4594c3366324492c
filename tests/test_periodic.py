"""The periodic-task helper every background job runs on, and start-up/shutdown as a list of components."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.lifecycle import Hooks, start_all, stop_all
from pipeline.periodic import Periodic
from tests.conftest import Hub


async def _yield_to_the_loop(times: int = 20) -> None:
    for _ in range(times):
        await asyncio.sleep(0)  # lets ready tasks run; no wall-clock wait


async def test_a_job_runs_at_once_then_again_and_survives_a_failing_round() -> None:
    runs = 0
    third = asyncio.Event()

    async def job() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("one bad round")
        if runs == 3:
            third.set()

    periodic = Periodic("test-job", 0.001, job)
    await periodic.start()
    await periodic.start()  # idempotent: still one task
    await asyncio.wait_for(third.wait(), 10)
    await periodic.stop()
    assert not periodic.running
    stopped_at = runs
    await _yield_to_the_loop()
    assert runs == stopped_at  # cancelled for good


async def test_a_delayed_job_waits_one_interval_and_an_interval_of_zero_is_off() -> None:
    ran = asyncio.Event()

    async def job() -> None:
        ran.set()

    delayed = Periodic("delayed", 3600, job, first_run_now=False)
    await delayed.start()
    await _yield_to_the_loop()
    assert delayed.running and not ran.is_set()
    await delayed.stop()

    off = Periodic("off", 0, job)
    await off.start()
    assert not off.running
    await off.stop()  # stopping what never started is fine

    now = Periodic("now", 3600, job)
    await now.start()
    await asyncio.wait_for(ran.wait(), 10)
    await now.stop()


async def test_components_start_in_order_and_stop_in_reverse() -> None:
    calls: list[str] = []

    def hooks(name: str) -> Hooks:
        async def stop() -> None:
            calls.append(f"stop {name}")

        return Hooks(name, lambda: calls.append(f"start {name}"), stop)

    components = [hooks("a"), hooks("b"), hooks("c")]
    await start_all(components)
    await stop_all(components)
    assert calls == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


async def test_a_failing_start_stops_what_started_and_a_failing_stop_does_not_block_the_rest() -> None:
    calls: list[str] = []

    def boom() -> None:
        raise RuntimeError("cannot start")

    def failing_stop() -> None:
        calls.append("stop b")
        raise RuntimeError("cannot stop")

    started = [
        Hooks("a", lambda: calls.append("start a"), lambda: calls.append("stop a")),
        Hooks("b", lambda: calls.append("start b"), failing_stop),
        Hooks("c", boom, lambda: calls.append("stop c")),
        Hooks("d", lambda: calls.append("start d"), lambda: calls.append("stop d")),
    ]
    with pytest.raises(RuntimeError, match="cannot start"):
        await start_all(started)
    assert calls == ["start a", "start b", "stop b", "stop a"]  # c never started, d never tried


async def test_the_server_runs_every_background_job_and_stops_them_all(make_hub: Any) -> None:
    hub: Hub = await make_hub(health_probe_interval_secs=30)
    services = hub.services
    names = [c.name for c in services.components]
    assert names[0] == "stores"  # closed last
    periodic = [i for i, c in enumerate(services.components) if isinstance(c, Periodic)]
    assert names.index("security-housekeeping") < names.index("record-writer") < min(periodic)
    jobs = {job.name: job for job in services.jobs}
    expected = {
        "prune-tsdb",
        "prune-log",
        "vllm-prober",
        "health-prober",
        "pricing-refresh",
        "bandit-refresh",
        "events-heartbeat",
    }
    assert expected <= set(jobs)
    assert {services.components[i].name for i in periodic} == set(jobs)  # every job on the one helper
    # every job runs, but the pricing refresh: no price table is configured (an air-gapped default)
    assert {name for name, job in jobs.items() if not job.running} == {"pricing-refresh"}
    await hub.client.close()
    assert not any(job.running for job in jobs.values())


async def test_shutdown_flushes_what_requests_recorded_after_the_jobs_stopped(make_hub: Any) -> None:
    hub: Hub = await make_hub()
    await hub.add_provider()
    await hub.add_model("gpt-test")
    key = await hub.new_key()
    for _ in range(3):
        assert (await hub.chat(key))[0] == 200
    writer = hub.services.records
    await hub.client.close()  # no explicit flush: the record writer's stop drains its queue
    assert writer.written >= 3 and writer.depth == 0
