"""Three `tokenhub serve` replicas on one Redis and one PostgreSQL database, as behind a load balancer: one is
killed with SIGKILL in the middle of the traffic, the others keep serving every request sent to them, log
every answer they gave, and keep the key's budget (the killed replica's holds expire with their lease)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import aiohttp

from tests.conftest import ADMIN_TOKEN
from tests.fakes.openai_fake import FakeOpenAI
from tests.support.backing import fresh_postgres, fresh_redis_prefix
from tests.support.server import Server, quiet_server_env

BUDGET_USD = 1.0


async def test_a_replica_killed_mid_traffic_costs_the_others_nothing(fake: FakeOpenAI, tmp_path: Path) -> None:
    key_file = secrets.token_bytes(32)  # every replica opens the provider keys the others sealed
    with fresh_postgres() as database_url:
        async with fresh_redis_prefix() as prefix:
            env = {
                "TOKENHUB_DATABASE_URL": database_url,
                "TOKENHUB_REDIS_URL": "redis://127.0.0.1:6379/0",
                "TOKENHUB_REDIS_PREFIX": prefix,
                **quiet_server_env(ADMIN_TOKEN, tmp_path),
                "TOKENHUB_RATE_LIMIT_RPS": "10000",
                "TOKENHUB_RATE_LIMIT_BURST": "10000",
            }
            replicas = []
            for name in ("a", "b", "c"):
                (tmp_path / name).mkdir()
                (tmp_path / name / ".secret-key").write_bytes(key_file)
                replicas.append(Server(tmp_path / name, **env))
            for replica in replicas:
                await replica.start()
            victim, *survivors = replicas
            try:
                await _run(fake, victim, survivors)
            finally:
                for replica in survivors:
                    await replica.stop()
                if victim.proc is not None and victim.proc.returncode is None:
                    await victim.kill()


async def _run(fake: FakeOpenAI, victim: Server, survivors: list[Server]) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for path, body in (
            ("/providers", {"id": "fake", "base_url": fake.base_url, "api_key": "sk-test"}),
            ("/models", {"id": "m1", "provider_id": "fake", "input_per_1k": 0.01, "output_per_1k": 0.01}),
        ):
            async with http.post(f"{victim.url}/admin/v1{path}", json=body, headers=admin) as resp:
                assert resp.status == 201, await resp.text()
        async with http.post(
            f"{survivors[0].url}/admin/v1/apikeys", json={"name": "k", "monthly_budget_usd": BUDGET_USD}, headers=admin
        ) as resp:
            assert resp.status == 201, await resp.text()
            key = (await resp.json())["key"]
        answered: dict[str, list[str]] = {replica.url: [] for replica in survivors}

        async def chat(replica: Server) -> int:
            body = {"request": {"messages": [{"role": "user", "content": "hi"}]}}
            async with http.post(f"{replica.url}/v1/chat", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
                if r.status == 200 and replica.url in answered:
                    answered[replica.url].append(r.headers["X-Request-Id"])
                return r.status

        for _ in range(100):  # the key and model reach every replica (LISTEN/NOTIFY): bounded wait
            if all([await chat(replica) == 200 for replica in (victim, *survivors)]):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the replicas never all served the new key")

        async def traffic(replica: Server, requests: int) -> list[int]:
            return [await chat(replica) for _ in range(requests)]

        load = [asyncio.create_task(traffic(replica, 30)) for replica in survivors]
        victim_load = asyncio.create_task(traffic(victim, 1000))
        await asyncio.sleep(0.3)
        await victim.kill()  # mid-traffic: its in-flight requests and unflushed records die with it
        victim_statuses = await asyncio.gather(victim_load, return_exceptions=True)
        assert isinstance(victim_statuses[0], aiohttp.ClientError)  # its clients saw the connection drop
        statuses = [status for result in await asyncio.gather(*load) for status in result]
        assert statuses == [200] * len(statuses)  # the survivors never noticed

        for replica in survivors:  # every answer a survivor gave is in its request log
            async with http.get(f"{replica.url}/healthz") as resp:
                health = await resp.json()
                assert resp.status == 200 and health["shared_state"]["up"] is True
            ids = answered[replica.url]
            for request_id in ids[-5:] + ids[:5]:
                for _ in range(60):  # the writer's batch lands within half a second: bounded wait
                    async with http.get(
                        f"{replica.url}/admin/v1/logs", params={"request_id": request_id}, headers=admin
                    ) as resp:
                        assert resp.status == 200
                        if [row["request_id"] for row in (await resp.json())["logs"]] == [request_id]:
                            break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"{request_id}, answered by {replica.url}, is not in its request log")
        async with http.get(f"{survivors[0].url}/admin/v1/apikeys", headers=admin) as resp:
            (row,) = [k for k in (await resp.json())["keys"] if k["name"] == "k"]
            assert 0 < row["current_spend_usd"] <= BUDGET_USD
