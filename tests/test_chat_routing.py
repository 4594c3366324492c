"""POST /v1/chat end to end: routing modes, constraints, hints, directives, response shape."""

from __future__ import annotations

import pytest

from tests.conftest import Hub


async def _registry(hub: Hub) -> str:
    """A known registry: cheap-small, balanced, premium (weights 2 / 6 / 10, rising prices)."""
    await hub.add_provider()
    await hub.add_model("cheap-small", weight=2, input_per_1k=0.0001, output_per_1k=0.0002, max_context_tokens=4000)
    await hub.add_model("balanced", weight=6, input_per_1k=0.001, output_per_1k=0.002, max_context_tokens=32000)
    await hub.add_model("premium", weight=10, input_per_1k=0.01, output_per_1k=0.03, max_context_tokens=128000)
    return await hub.new_key()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("cheap", "cheap-small"),
        ("normal", "balanced"),
        ("high_confidence", "premium"),
        ("planning", "premium"),
        ("adversarial", "premium"),
    ],
)
async def test_each_mode_picks_the_expected_model(hub: Hub, mode: str, expected: str) -> None:
    key = await _registry(hub)
    status, body, resp = await hub.chat(key, policy={"mode": mode, "max_budget_usd": 1})
    assert status == 200, body
    assert body["negotiated_model"] == expected
    assert resp.headers["X-Negotiated-Model"] == expected
    assert resp.headers["X-Provider"] == "fake"
    assert f"in {mode} mode" in body["routing_reason"]
    assert hub.fake.requests[-1]["model"] == expected


async def test_normal_mode_scores_are_the_specs_weighted_sum(hub: Hub) -> None:
    # normal: 0.25 each; cost normalised by max; weight subtracted; no latency/error history yet.
    key = await _registry(hub)
    status, body, _ = await hub.chat(key, policy={"mode": "normal", "max_budget_usd": 1})
    assert status == 200
    # Estimated costs (1 input token, 512 output) normalise to 0.0067 / 0.067 / 1 and weights to 0.2 / 0.6 / 1:
    # cheap-small -0.048, balanced 0.25*0.0667 - 0.25*0.6 = -0.133, premium 0. Lowest wins.
    assert body["negotiated_model"] == "balanced"
    assert "score -0.133" in body["routing_reason"]


async def test_response_envelope_and_actual_cost(hub: Hub) -> None:
    key = await _registry(hub)
    status, body, resp = await hub.chat(key, policy={"mode": "cheap"})
    assert status == 200
    assert set(body) == {"negotiated_model", "estimated_cost_usd", "routing_reason", "response"}
    assert body["response"]["choices"][0]["message"]["content"] == "reply from cheap-small"
    # Actual usage from the fake: 10 prompt + 5 completion tokens at cheap-small's prices.
    assert body["estimated_cost_usd"] == pytest.approx(10 / 1000 * 0.0001 + 5 / 1000 * 0.0002)
    assert resp.headers["X-Request-Id"]


async def test_budget_excludes_expensive_models(hub: Hub) -> None:
    key = await _registry(hub)
    # high_confidence prefers premium, but its ~$0.0154 estimate is over a $0.005 budget.
    status, body, _ = await hub.chat(key, policy={"mode": "high_confidence", "max_budget_usd": 0.005})
    assert status == 200
    assert body["negotiated_model"] == "balanced"
    assert "premium (budget_exceeded)" in body["routing_reason"]


async def test_min_weight_excludes_light_models(hub: Hub) -> None:
    key = await _registry(hub)
    status, body, _ = await hub.chat(key, policy={"mode": "cheap", "min_weight": 5, "max_budget_usd": 1})
    assert status == 200
    assert body["negotiated_model"] == "balanced"


async def test_context_window_excludes_small_models(hub: Hub) -> None:
    key = await _registry(hub)
    status, body, _ = await hub.chat(key, policy={"mode": "cheap", "max_budget_usd": 5}, estimated_input_tokens=5000)
    assert status == 200
    assert body["negotiated_model"] == "balanced"
    assert "cheap-small (context_overflow)" in body["routing_reason"]


async def test_budget_too_low_for_every_model_is_a_clear_422(hub: Hub) -> None:
    key = await _registry(hub)
    status, body, _ = await hub.chat(key, policy={"max_budget_usd": 0.0000001})
    assert status == 422
    assert body["error"]["type"] == "no_eligible_model"
    assert "budget_exceeded" in body["error"]["message"]
    assert body["error"]["exclusions"] == {m: "budget_exceeded" for m in ("balanced", "cheap-small", "premium")}
    assert hub.fake.requests == []


async def test_context_too_long_for_every_model(hub: Hub) -> None:
    key = await _registry(hub)
    status, body, _ = await hub.chat(key, estimated_input_tokens=500_000, policy={"max_budget_usd": 100})
    assert status == 422
    assert "context_overflow" in body["error"]["message"]


async def test_no_models_registered_says_how_to_fix(hub: Hub) -> None:
    key = await hub.new_key()
    status, body, _ = await hub.chat(key)
    assert status == 503
    assert "add a provider and a model" in body["error"]["message"]


async def test_model_hint_is_tried_first_and_provider_prefix_is_normalised(hub: Hub) -> None:
    key = await _registry(hub)
    status, body, _ = await hub.chat(key, policy={"mode": "cheap", "max_budget_usd": 1}, model_hint="fake/premium")
    assert status == 200
    assert body["negotiated_model"] == "premium"
    assert body["routing_reason"].startswith("routed-hint-exact")


async def test_ineligible_hint_is_ignored_and_explained(hub: Hub) -> None:
    key = await _registry(hub)
    status, body, _ = await hub.chat(key, policy={"mode": "cheap"}, model_hint="no-such-model")
    assert status == 200
    assert body["negotiated_model"] == "cheap-small"
    assert "model_hint 'no-such-model' ignored (not registered)" in body["routing_reason"]


async def test_directives_override_policy_and_are_stripped(hub: Hub) -> None:
    key = await _registry(hub)
    content = "@@tokenhub mode=high_confidence budget=1 colour=blue\nSummarise this"
    status, body, _ = await hub.chat(key, content, policy={"mode": "cheap"})
    assert status == 200
    assert body["negotiated_model"] == "premium"
    assert (
        "@@tokenhub mode=high_confidence max_budget_usd=1.0 (ignored: unknown key 'colour')" in body["routing_reason"]
    )
    forwarded = hub.fake.requests[-1]["json"]["messages"]
    assert forwarded == [{"role": "user", "content": "Summarise this"}]


async def test_block_directive_is_stripped_from_every_message(hub: Hub) -> None:
    key = await _registry(hub)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "@@tokenhub\nmode=cheap\nmin_weight=5\n@@end\nQuestion"},
    ]
    status, body, _ = await hub.chat(key, messages, policy={"max_budget_usd": 1})
    assert status == 200
    assert body["negotiated_model"] == "balanced"  # cheap, but min_weight 5 rules out cheap-small
    forwarded = hub.fake.requests[-1]["json"]["messages"]
    assert forwarded == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question"}]


async def test_invalid_directive_value_is_ignored_but_stripped(hub: Hub) -> None:
    key = await _registry(hub)
    status, body, _ = await hub.chat(key, "Please help @@tokenhub mode=turbo", policy={"mode": "cheap"})
    assert status == 200
    assert body["negotiated_model"] == "cheap-small"
    assert hub.fake.requests[-1]["json"]["messages"][0]["content"] == "Please help"


async def test_invalid_directive_output_schema_is_400(hub: Hub) -> None:
    key = await _registry(hub)
    status, body, _ = await hub.chat(key, "@@tokenhub output_schema={nope\nhi")
    assert status == 400
    assert body["error"]["field"] == "directive.output_schema"
    assert hub.fake.requests == []


async def test_parameters_and_tool_fields_are_forwarded(hub: Hub) -> None:
    key = await _registry(hub)
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function"}]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "calc"},
    ]
    params = {"temperature": 0.2, "max_tokens": 64, "model": "ignored", "stream": True}
    status, _, _ = await hub.chat(key, messages, parameters=params)
    assert status == 200
    sent = hub.fake.requests[-1]["json"]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 64
    assert sent["model"] == "balanced" and "stream" not in sent
    assert sent["messages"][0] == {"role": "user", "content": "ab"}
    assert sent["messages"][1]["tool_calls"] == [{"id": "call_1", "type": "function"}]
    assert sent["messages"][2] == {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "calc"}


async def test_our_request_id_is_returned_and_forwarded_upstream_and_the_clients_echoed(hub: Hub) -> None:
    key = await _registry(hub)
    status, _, resp = await hub.chat(key, headers={"X-Request-Id": "req-abc-123"})
    assert status == 200
    ours = resp.headers["X-Request-Id"]
    assert ours.startswith("th-") and resp.headers["X-Client-Request-Id"] == "req-abc-123"
    assert hub.fake.requests[-1]["headers"]["X-Request-ID"] == ours


async def test_provider_key_is_sent_upstream_but_never_listed(hub: Hub) -> None:
    key = await _registry(hub)
    await hub.chat(key)
    assert hub.fake.requests[-1]["headers"]["Authorization"] == "Bearer sk-test-secret"
    providers = await hub.admin("GET", "/providers")
    assert "sk-test-secret" not in str(providers)
    assert providers["items"][0]["has_api_key"] is True
