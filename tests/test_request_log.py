"""The request log is the ledger spend is rebuilt from: no row may be lost to one bad value."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.openai_fake import Reply

HUGE = 3_000_000_000  # over 2^31: the INTEGER token columns refused it and lost its whole batch


async def test_a_huge_usage_report_loses_no_row_and_no_spend(make_hub: Any) -> None:
    hub = await make_hub()
    await hub.add_provider()
    await hub.add_model("gpt-test", weight=5, input_per_1k=0.001, output_per_1k=0.001)
    key = await hub.new_key()
    key_id = hub.services.identify(key).id
    hub.fake.script("gpt-test", Reply(usage={"prompt_tokens": HUGE, "completion_tokens": 5}))
    for i in range(11):
        assert (await hub.chat(key, headers={"X-Request-Id": f"batch-{i}"}))[0] == 200
    spent = (await hub.admin("GET", "/apikeys"))["keys"][0]["current_spend_usd"]
    records = hub.services.records
    assert spent == pytest.approx(HUGE / 1000 * 0.001 + 10 * 15 / 1000 * 0.001 + 5 / 1000 * 0.001)
    await hub.client.close()  # graceful stop: the queue is written to DuckDB
    assert (records.written, records.dropped) == (11, 0)

    again = await make_hub()
    rows = {row["client_request_id"]: row for row in await again.logs()}
    assert sorted(rows) == sorted(f"batch-{i}" for i in range(11))
    assert rows["batch-0"]["input_tokens"] == HUGE and rows["batch-1"]["input_tokens"] == 10
    (listed,) = (await again.admin("GET", "/apikeys"))["keys"]
    assert listed["id"] == key_id and listed["current_spend_usd"] == pytest.approx(spent)  # rebuilt from the log
