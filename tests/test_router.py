"""The one Router: the routing table it reads, plan orchestration under the tenant's options, the simulator
(both body forms, no side effects), the rewards listing, and softmax exploration."""

from __future__ import annotations

import ast
import functools
import random
from pathlib import Path
from typing import Any

import pytest

from pipeline.context import Policy
from pipeline.objective import DEFAULT_REWARD
from pipeline.settings import SettingsError, load_settings, unknown_variables
from pipeline.types import ChatRequest, Message
from stages.bandit import Observation
from stages.router import RoutingOptions
from stages.scoring import softmax_rank
from tests.conftest import Hub
from tests.fakes.openai_fake import Reply

ROOT = Path(__file__).resolve().parent.parent


async def _models(hub: Hub) -> str:
    """Three models that differ in weight and price: every mode has its own winner."""
    await hub.add_provider()
    await hub.add_model("frugal", weight=1, input_per_1k=0.0001, output_per_1k=0.0001)
    await hub.add_model("strong", weight=9, input_per_1k=0.004, output_per_1k=0.004)
    await hub.add_model("solid", weight=8, input_per_1k=0.004, output_per_1k=0.004)
    return await hub.new_key()


async def _tenant(hub: Hub, policy_options: dict[str, Any]) -> str:
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme"}, expect=201)
    definition = [
        {"stage": "auth"},
        {"stage": "directives"},
        {"stage": "orchestrate"},
        {"stage": "policy", "with": policy_options},
        {"stage": "escalate"},
        {"stage": "dispatch"},
    ]
    await hub.admin("PUT", "/tenants/acme/pipeline", definition, expect=200)
    return await hub.new_key(tenant_id="acme", scopes=["chat", "plan"])


async def _plan(hub: Hub, key: str, orchestration: dict[str, Any], **extra: Any) -> Any:
    body = {"request": {"messages": [{"role": "user", "content": "Build a shed"}]}, "orchestration": orchestration}
    resp = await hub.client.post("/v1/plan", json={**body, **extra}, headers={"Authorization": f"Bearer {key}"})
    return resp.status, await resp.json()


async def _metrics(hub: Hub) -> str:
    return await (await hub.client.get("/metrics")).text()


# --- the routing table -------------------------------------------------------------------------------------


async def test_the_routing_table_is_one_immutable_value_swapped_whole(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("first")
    before = hub.services.routing
    assert hub.services.snapshot is before.snapshot and hub.services.adapters is before.adapters
    with pytest.raises(TypeError):
        before.adapters["intruder"] = before.adapters["fake"]  # type: ignore[index]
    await hub.add_model("second")
    after = hub.services.routing
    assert after is not before and set(after.snapshot.models) == {"first", "second"}
    assert set(before.snapshot.models) == {"first"}  # a request holding the old table saw one version
    assert after.adapters["fake"] is before.adapters["fake"]  # an unchanged provider keeps its adapter


async def test_the_logged_routing_reason_is_the_decisions_whole_text(hub: Hub) -> None:
    """The reason is rendered when its record is written, off the request path: still the whole text."""
    await hub.add_provider()
    await hub.add_model("roomy", weight=5)
    await hub.add_model("small", weight=9, max_context_tokens=10)
    key = await hub.new_key()
    body = {"model": "auto", "messages": [{"role": "user", "content": "x" * 200}]}
    resp = await hub.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    (row,) = [row for row in await hub.logs() if row["request_id"] == resp.headers["X-Request-Id"]]
    reason = row["routing_reason"]
    assert reason.startswith("routed-weight-5: roomy ranked first of 1 eligible in normal mode (score "), reason
    assert "; expected reward " in reason and "(quality 0.5, cost 0.25 (relative), latency 0.25 (relative))" in reason
    assert reason.endswith("; excluded small (context_overflow)"), reason


# --- plans route under the tenant's policy options --------------------------------------------------------


async def test_a_tenants_min_weight_chooses_the_voters_of_a_plan(hub: Hub) -> None:
    await _models(hub)
    await hub.add_model("judge", weight=10, input_per_1k=0.001, output_per_1k=0.001)
    key = await _tenant(hub, {"min_weight": 5})
    status, body = await _plan(hub, key, {"mode": "vote", "iterations": 2, "review_model_id": "judge"})
    assert status == 200, body
    voters = sorted(s["model_id"] for s in body["steps"] if s["role"] == "vote")
    # Ranked without the tenant's floor, "frugal" (cheapest) would be a voter and fail in the tenant's policy.
    assert voters == ["solid", "strong"]
    assert "failed" not in body["routing_reason"]
    assert all(r["model"] != "frugal" for r in hub.fake.requests)


async def test_a_tenants_budget_ceiling_caps_the_whole_plan_and_its_mode_pin_routes_every_step(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("planner", weight=9, input_per_1k=0.004, output_per_1k=0.004)  # planning mode's pick
    await hub.add_model("thrifty", weight=2, input_per_1k=0.002, output_per_1k=0.002)  # cheap mode's pick
    key = await _tenant(hub, {"max_budget_usd": 0.0025, "mode": "cheap"})
    usage = {"prompt_tokens": 10, "completion_tokens": 500, "total_tokens": 510}
    for model in ("planner", "thrifty"):
        hub.fake.script(model, *[Reply(usage=usage)] * 3)
    # each step is estimated at ~$0.001 and costs ~$0.001: two fit in the tenant's $0.0025, the third does not
    status, body = await _plan(hub, key, {"mode": "adversarial", "iterations": 1})
    assert status == 200, body
    assert [s["role"] for s in body["steps"]] == ["plan", "critique"]
    assert body["complete"] is False and "budget" in body["stop_reason"]
    assert "of $0.0025" in body["routing_reason"]
    assert {s["model_id"] for s in body["steps"]} == {"thrifty"}  # cheap mode, pinned by the tenant
    await hub.services.records.flush()
    served = [r for r in await hub.logs() if r["endpoint"] == "plan_step" and r["status"] == 200]
    assert len(served) == 2 and {r["mode"] for r in served} == {"cheap"}


async def test_policy_must_come_after_orchestrate(hub: Hub) -> None:
    await hub.admin("POST", "/tenants", {"id": "acme", "name": "Acme"}, expect=201)
    definition = [{"stage": "auth"}, {"stage": "policy"}, {"stage": "orchestrate"}, {"stage": "dispatch"}]
    body = await hub.admin("PUT", "/tenants/acme/pipeline", definition, expect=400)
    assert "'orchestrate' must come before 'policy'" in body["error"]["message"]


# --- the simulator -----------------------------------------------------------------------------------------


async def test_simulate_accepts_the_originals_flat_body(hub: Hub) -> None:
    await _models(hub)
    body = {"mode": "cheap", "max_budget_usd": 0.05, "max_latency_ms": 5000, "min_weight": 0, "token_count": 0}
    answer = await hub.admin("POST", "/routing/simulate", body, expect=200)
    decision = answer["decision"]
    assert decision["model_id"] == "frugal" and decision["provider_id"] == "fake"
    assert decision["estimated_cost_usd"] == pytest.approx((500 + 512) / 1000 * 0.0001)  # token_count 0 -> 500
    assert decision["reason"].startswith("routed-weight-1: frugal ranked first of 3 eligible in cheap mode")
    assert answer["total"] == 3 and answer["eligible"][0]["id"] == "frugal"
    assert answer["eligible"][0] == {
        "id": "frugal",
        "provider_id": "fake",
        "weight": 1,
        "max_context_tokens": 0,
        "input_per_1k": 0.0001,
        "output_per_1k": 0.0001,
        "enabled": True,
        "selected": True,
    }
    assert [e["selected"] for e in answer["eligible"]] == [True, False, False]
    assert answer["estimated_input_tokens"] == 500 and answer["candidates"][0]["model_id"] == "frugal"

    hinted = await hub.admin("POST", "/routing/simulate", {"model_hint": "solid", "token_count": 20}, expect=200)
    assert hinted["decision"]["model_id"] == "solid" and hinted["decision"]["reason"].startswith("routed-hint-exact")
    strong = await hub.admin("POST", "/routing/simulate", {"mode": "high_confidence", "min_weight": 9}, expect=200)
    assert [e["id"] for e in strong["eligible"]] == ["strong"] and strong["total"] == 1
    assert strong["exclusions"] == {"frugal": "weight_below_minimum", "solid": "weight_below_minimum"}


async def test_simulate_with_nothing_eligible_answers_200_with_the_error(hub: Hub) -> None:
    await _models(hub)
    answer = await hub.admin("POST", "/routing/simulate", {"max_budget_usd": 0.00000001}, expect=200)
    assert answer["eligible"] == [] and answer["total"] == 0
    assert "no eligible model" in answer["error"] and set(answer["exclusions"].values()) == {"budget_exceeded"}


@pytest.mark.parametrize(
    ("body", "field"),
    [({"mode": "fastest"}, "mode"), ({"max_budget_usd": 101}, "max_budget_usd"), ({"min_weight": "9"}, "min_weight")],
)
async def test_simulate_rejects_bad_flat_fields(hub: Hub, body: dict[str, Any], field: str) -> None:
    await _models(hub)
    answer = await hub.admin("POST", "/routing/simulate", body, expect=400)
    assert answer["error"]["field"] == field and answer["error"]["message"].startswith(field)


async def test_simulate_touches_no_live_metric_or_health(hub: Hub) -> None:
    await _models(hub)
    skips_before = [line for line in (await _metrics(hub)).splitlines() if line.startswith("tokenhub_provider_skips")]
    messages = [{"role": "user", "content": "hi"}]
    for policy in ({"min_weight": 9}, {"mode": "thompson"}):
        await hub.admin("POST", "/routing/simulate", {"request": {"messages": messages}, "policy": policy}, expect=200)
    text = await _metrics(hub)
    # exclusions were simulated, not counted; no provider was looked up into existence
    assert [line for line in text.splitlines() if line.startswith("tokenhub_provider_skips")] == skips_before
    assert 'tokenhub_provider_health_state{provider="fake"}' not in text
    assert (await hub.admin("GET", "/health"))["providers"] == []


async def test_simulate_leaves_the_live_exploration_sampler_alone(make_hub: Any) -> None:
    hub = await make_hub(exploration_temp=1.0, bandit_seed=3)
    await _models(hub)
    for seed in (1, 5, None):
        await hub.admin("POST", "/routing/simulate", {"mode": "high_confidence", "seed": seed}, expect=200)
    # the server still makes the same choices as a twin of its sampler that never saw the simulations
    twin = random.Random(3)
    order = ["strong", "solid", "frugal"]  # their ranking in high_confidence mode
    key = await hub.new_key()
    served = [(await hub.chat(key, policy={"mode": "high_confidence"}))[1]["negotiated_model"] for _ in range(20)]
    assert served == [order[softmax_rank(3, 1.0, twin.random())] for _ in range(20)]
    assert set(served) != {"strong"}  # exploration did pick others: the comparison means something


# --- rewards ---------------------------------------------------------------------------------------------


async def test_rewards_list_the_originals_entries_newest_first(hub: Hub) -> None:
    key = await _models(hub)
    ids = []
    for model in ("frugal", "solid"):
        _, _, resp = await hub.chat(key, model_hint=model)
        ids.append(resp.headers["X-Request-Id"])
    await hub.services.records.flush()
    answer = await hub.admin("GET", "/rewards", expect=200)
    assert [r["request_id"] for r in answer["rewards"]] == ids[::-1]
    entry = answer["rewards"][0]
    assert set(entry) == {
        "timestamp",
        "request_id",
        "model_id",
        "provider_id",
        "mode",
        "estimated_tokens",
        "token_bucket",
        "latency_ms",
        "cost_usd",
        "success",
        "status",
        "error_class",
        "reward",
        "feedback_score",
    }
    assert entry["model_id"] == "solid" and entry["provider_id"] == "fake" and entry["success"] is True
    assert entry["token_bucket"] == "small" and 0.4 < entry["reward"] <= 1 and entry["error_class"] == ""
    assert {a["model_id"] for a in answer["arms"]} == {"frugal", "solid"}  # the posteriors stay alongside
    page = await hub.admin("GET", "/rewards?limit=1&offset=1", expect=200)
    assert [r["request_id"] for r in page["rewards"]] == [ids[0]]


# --- exploration -------------------------------------------------------------------------------------------


def test_softmax_rank_follows_the_spec_weights() -> None:
    assert softmax_rank(5, 0.0, 0.999) == 0 and softmax_rank(1, 5.0, 0.999) == 0
    weights = [1.0, 2.718281828**-3.333333, 2.718281828**-6.666667]
    assert softmax_rank(3, 0.3, 0.5) == 0
    assert softmax_rank(3, 0.3, (1.0 + weights[1] / 2) / sum(weights)) == 1
    assert softmax_rank(3, 0.3, 0.99999) == 2
    rng = random.Random(1)
    picks = [softmax_rank(3, 0.3, rng.random()) for _ in range(20_000)]
    assert picks.count(0) / len(picks) == pytest.approx(0.964, abs=0.01)  # the spec's "about 96 %"


async def test_exploration_reorders_the_top_but_never_overrides_a_hint(make_hub: Any) -> None:
    hub = await make_hub(exploration_temp=2.0, bandit_seed=11)
    key = await _models(hub)
    served, reasons = [], []
    for _ in range(30):
        _, body, _ = await hub.chat(key, policy={"mode": "high_confidence"})
        served.append(body["negotiated_model"])
        reasons.append(body["routing_reason"])
    assert set(served) == {"strong", "solid", "frugal"}  # the top model is not the only one tried
    explored = [r for m, r in zip(served, reasons, strict=True) if m != "strong"]
    assert explored and all("explored at rank" in r and "temperature 2" in r for r in explored)
    for _ in range(10):
        _, body, _ = await hub.chat(key, model_hint="frugal")
        assert body["negotiated_model"] == "frugal" and "explored" not in body["routing_reason"]


async def test_simulate_explores_reproducibly_with_its_seed(make_hub: Any) -> None:
    hub = await make_hub(exploration_temp=2.0)
    await _models(hub)
    picks = {}
    for seed in range(10):
        first = await hub.admin("POST", "/routing/simulate", {"seed": seed}, expect=200)
        again = await hub.admin("POST", "/routing/simulate", {"seed": seed}, expect=200)
        assert first["decision"] == again["decision"]
        picks[seed] = first["decision"]["model_id"]
    assert len(set(picks.values())) > 1


def test_exploration_temperature_is_a_known_validated_setting() -> None:
    env = {"TOKENHUB_EXPLORATION_TEMP": "0.7"}
    assert unknown_variables(env) == [] and load_settings(env).exploration_temp == 0.7
    assert load_settings({}).exploration_temp == 0.3  # the spec's default
    with pytest.raises(SettingsError, match="TOKENHUB_EXPLORATION_TEMP=-1"):
        load_settings({"TOKENHUB_EXPLORATION_TEMP": "-1"})


# --- layering ----------------------------------------------------------------------------------------------

PACKAGES = ("pipeline", "stages", "adapters", "store", "admin_ui")


@functools.cache
def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, TYPE_CHECKING imports included (a cycle all the same)."""
    files = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in files)
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph[start])
    while todo:
        module = todo.pop()
        if module == goal:
            return True
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return False


@pytest.mark.parametrize(
    "module",
    [
        "pipeline.services",
        "pipeline.housekeeping",
        "pipeline.lifecycle",
        "pipeline.periodic",
        "stages.router",
        "stages.routing_table",
        "stages.policy",
        "stages.orchestrate",
    ],
)
def test_no_import_cycle_runs_through_the_router_or_the_services(module: str) -> None:
    assert not _reaches(_import_graph(), module, module)


async def test_the_reason_shows_the_expectation_as_it_was_when_the_request_was_routed(
    ready_hub: tuple[Hub, str],
) -> None:
    """The reason is rendered later (by the request-log writer): feedback that arrives in between does not
    change the quality prior it shows."""
    hub, _ = ready_hub
    bandit = hub.services.bandit
    bandit.observe(Observation("rated", "gpt-test", "small", True, 0.0001, 50.0, 0.0001, 50.0, 0.5))
    assert bandit.rate("rated", 0.8)
    decision = hub.services.router.decide(ChatRequest(messages=[Message("user", "hi")]), Policy())
    assert bandit.rate("rated", 0.2) and bandit.quality_prior("gpt-test", "small", DEFAULT_REWARD) == pytest.approx(0.2)
    assert "quality 0.80" in decision.reason


async def test_the_limits_of_requests_without_a_policy_follow_the_configuration(ready_hub: tuple[Hub, str]) -> None:
    """A request that sets no policy gets its pipeline's limits, resolved once per configuration: a change of the
    routing defaults, of the settings (SIGHUP) or of the tenant's options shows at once."""
    hub, _ = ready_hub
    router = hub.services.router
    request = ChatRequest(messages=[Message("user", "hi")])
    assert router.decide(request, Policy()).mode == "normal"
    await hub.admin("PUT", "/routing-config", {"default_mode": "cheap"}, expect=200)
    assert router.decide(request, Policy()).mode == "cheap"
    assert router.decide(request, Policy(mode="planning")).mode == "planning"  # the request's own wins
    assert router.decide(request, Policy(), RoutingOptions(mode="high_confidence")).mode == "high_confidence"
    await hub.admin("PUT", "/routing-config", {"default_mode": ""}, expect=200)
    before = router.settings
    router.settings = before.model_copy(update={"default_mode": "planning"})
    try:
        assert router.decide(request, Policy()).mode == "planning"
    finally:
        router.settings = before
    assert router.decide(request, Policy()).mode == "normal"
