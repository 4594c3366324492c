"""The pipeline builder: definitions as data, validated against a registry and folded into one onion chain."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import Field

from pipeline.context import RequestContext
from pipeline.errors import Forbidden, PipelineConfigError, TokenHubError
from pipeline.registry import DEFAULT_PIPELINE, default_registry
from pipeline.stage import Next, StageOptions, StageRegistry, StageSpec, StageStep, build_chain, parse_definition
from pipeline.types import ChatRequest, Message
from stages.policy import PolicyOptions
from stages.rate_limit import RateLimitOptions

# --- toy stages ----------------------------------------------------------------------------------


class NoOptions(StageOptions):
    pass


class TraceOptions(StageOptions):
    label: str = ""


class RepeatOptions(StageOptions):
    times: int = Field(3, ge=1, le=10, description="how many times the inner chain runs")


class GateOptions(StageOptions):
    deny: bool = False


def make_registry(trace: list[str]) -> StageRegistry:
    """A registry of toy stages that append what they see to ``trace``."""

    class Record:
        def __init__(self, services: Any, options: NoOptions) -> None:
            pass

        async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
            trace.append("record>")
            try:
                await call_next(ctx)
            except TokenHubError as exc:
                ctx.error = exc
                trace.append(f"record caught {type(exc).__name__}")
            trace.append("<record")

    def tracer(name: str) -> Any:
        class Trace:
            def __init__(self, services: Any, options: TraceOptions) -> None:
                self._label = options.label or name

            async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
                trace.append(f"{self._label}>")
                try:
                    await call_next(ctx)
                finally:
                    trace.append(f"<{self._label}")

        return Trace

    class Repeat:
        def __init__(self, services: Any, options: RepeatOptions) -> None:
            self._times = options.times

        async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
            for _ in range(self._times):
                await call_next(ctx)

    class Gate:
        def __init__(self, services: Any, options: GateOptions) -> None:
            self._deny = options.deny

        async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
            if self._deny:
                trace.append("gate denied")
                raise Forbidden("gate closed")
            await call_next(ctx)

    class Dispatch:
        def __init__(self, services: Any, options: NoOptions) -> None:
            pass

        async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
            trace.append(f"dispatch[{ctx.request_id}]")
            ctx.attempts.append(None)  # type: ignore[arg-type]  # a per-request counter of dispatch runs
            await call_next(ctx)

    return StageRegistry(
        [
            StageSpec("record", Record, NoOptions, "outermost", required=True),
            StageSpec("outer", tracer("outer"), TraceOptions, "traces before/after"),
            StageSpec("inner", tracer("inner"), TraceOptions, "traces before/after"),
            StageSpec("repeat", Repeat, RepeatOptions, "runs the inner chain several times", after=("record",)),
            StageSpec("gate", Gate, GateOptions, "may stop the chain", after=("outer",)),
            StageSpec("dispatch", Dispatch, NoOptions, "innermost", required=True),
        ]
    )


def make_ctx(request_id: str = "r1") -> RequestContext:
    return RequestContext(
        request_id=request_id,
        scope="chat",
        client_ip="127.0.0.1",
        request=ChatRequest(messages=[Message("user", "hi")]),
    )


def names(steps: list[StageStep]) -> list[str]:
    return [step.stage for step in steps]


@pytest.fixture
def trace() -> list[str]:
    return []


@pytest.fixture
def registry(trace: list[str]) -> StageRegistry:
    return make_registry(trace)


# --- building and running chains -----------------------------------------------------------------


async def test_onion_order_outer_sees_before_and_after_of_inner(trace: list[str], registry: StageRegistry) -> None:
    steps = parse_definition([{"stage": "outer"}, {"stage": "inner"}, {"stage": "dispatch"}], registry)
    chain = build_chain(steps, registry, None)  # type: ignore[arg-type]
    await chain(make_ctx())
    assert trace == ["record>", "outer>", "inner>", "dispatch[r1]", "<inner", "<outer", "<record"]


async def test_stage_options_reach_the_factory(trace: list[str], registry: StageRegistry) -> None:
    definition = [
        {"stage": "outer", "with": {"label": "A"}},
        {"stage": "inner", "with": {"label": "B"}},
        {"stage": "dispatch"},
    ]
    chain = build_chain(parse_definition(definition, registry), registry, None)  # type: ignore[arg-type]
    await chain(make_ctx())
    assert trace == ["record>", "A>", "B>", "dispatch[r1]", "<B", "<A", "<record"]


async def test_factory_receives_the_services_object() -> None:
    seen: list[Any] = []

    def factory(services: Any, options: NoOptions) -> Any:
        seen.append((services, options))

        async def stage(ctx: RequestContext, call_next: Next) -> None:
            await call_next(ctx)

        return stage

    registry = StageRegistry(
        [
            StageSpec("record", factory, NoOptions, "r", required=True),
            StageSpec("dispatch", factory, NoOptions, "d", required=True),
        ]
    )
    services = object()
    build_chain(parse_definition([{"stage": "dispatch"}], registry), registry, services)  # type: ignore[arg-type]
    assert [s for s, _ in seen] == [services, services]
    assert all(isinstance(o, NoOptions) for _, o in seen)


async def test_stage_can_call_next_several_times(trace: list[str], registry: StageRegistry) -> None:
    definition = [{"stage": "repeat"}, {"stage": "inner"}, {"stage": "dispatch"}]
    chain = build_chain(parse_definition(definition, registry), registry, None)  # type: ignore[arg-type]
    ctx = make_ctx()
    await chain(ctx)
    assert len(ctx.attempts) == 3
    assert trace == ["record>"] + ["inner>", "dispatch[r1]", "<inner"] * 3 + ["<record"]


async def test_chain_is_reusable_and_holds_no_per_request_state(trace: list[str], registry: StageRegistry) -> None:
    definition = [{"stage": "repeat", "with": {"times": 2}}, {"stage": "dispatch"}]
    chain = build_chain(parse_definition(definition, registry), registry, None)  # type: ignore[arg-type]
    contexts = [make_ctx(f"r{i}") for i in range(5)]
    await asyncio.gather(*(chain(ctx) for ctx in contexts))
    await chain(contexts[0])
    assert [len(ctx.attempts) for ctx in contexts] == [4, 2, 2, 2, 2]
    assert sorted(t for t in trace if t.startswith("dispatch")) == sorted(
        ["dispatch[r0]"] * 4 + [f"dispatch[r{i}]" for i in range(1, 5) for _ in range(2)]
    )


async def test_stage_can_stop_the_chain_by_raising(trace: list[str], registry: StageRegistry) -> None:
    definition = [
        {"stage": "outer"},
        {"stage": "gate", "with": {"deny": True}},
        {"stage": "inner"},
        {"stage": "dispatch"},
    ]
    chain = build_chain(parse_definition(definition, registry), registry, None)  # type: ignore[arg-type]
    ctx = make_ctx()
    await chain(ctx)
    assert isinstance(ctx.error, Forbidden)
    assert ctx.attempts == []
    assert trace == ["record>", "outer>", "gate denied", "<outer", "record caught Forbidden", "<record"]


async def test_open_gate_lets_the_request_through(trace: list[str], registry: StageRegistry) -> None:
    definition = [{"stage": "outer"}, {"stage": "gate"}, {"stage": "dispatch"}]
    chain = build_chain(parse_definition(definition, registry), registry, None)  # type: ignore[arg-type]
    ctx = make_ctx()
    await chain(ctx)
    assert ctx.error is None
    assert len(ctx.attempts) == 1


async def test_exception_propagates_out_of_the_chain_when_no_stage_catches_it(registry: StageRegistry) -> None:
    class Boom(Exception):
        pass

    async def failing(ctx: RequestContext) -> None:
        raise Boom

    # Build the inner part by hand: outer wraps a raising callable; nothing converts the error.
    outer = registry.get("outer").factory(None, TraceOptions())  # type: ignore[arg-type]
    with pytest.raises(Boom):
        await outer(make_ctx(), failing)


# --- parse_definition errors ---------------------------------------------------------------------


def test_unknown_stage_lists_known_stages(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError) as info:
        parse_definition([{"stage": "teleport"}, {"stage": "dispatch"}], registry)
    message = str(info.value)
    assert "teleport" in message
    assert "known stages: dispatch, gate, inner, outer, record, repeat" in message
    assert (info.value.index, info.value.stage) == (0, "teleport")


def test_bad_option_type_names_stage_index_and_option(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError) as info:
        parse_definition([{"stage": "outer"}, {"stage": "repeat", "with": {"times": "many"}}], registry)
    message = str(info.value)
    assert message.startswith("stages[1] (repeat): ")
    assert "times" in message
    assert (info.value.index, info.value.stage) == (1, "repeat")


def test_option_out_of_range_rejected(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match=r"stages\[0\] \(repeat\): times"):
        parse_definition([{"stage": "repeat", "with": {"times": 0}}, {"stage": "dispatch"}], registry)


def test_unknown_option_key_names_stage_index_and_option(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError) as info:
        parse_definition([{"stage": "inner"}, {"stage": "outer", "with": {"colour": "red"}}], registry)
    message = str(info.value)
    assert message.startswith("stages[1] (outer): ")
    assert "colour" in message


def test_with_must_be_an_object(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match=r"stages\[0\] \(outer\): 'with' must be an object"):
        parse_definition([{"stage": "outer", "with": ["label"]}, {"stage": "dispatch"}], registry)


@pytest.mark.parametrize(
    "definition",
    [None, "dispatch", 42, {}, {"stage": "dispatch"}, [], {"stages": []}, {"stages": "dispatch"}],
    ids=["none", "string", "int", "empty-dict", "single-step-dict", "empty-list", "empty-wrapper", "string-wrapper"],
)
def test_non_list_or_empty_definition_rejected(definition: Any, registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match="non-empty list"):
        parse_definition(definition, registry)


@pytest.mark.parametrize("step", ["dispatch", {"with": {}}, {"stage": 3}, ["dispatch"]])
def test_step_must_be_an_object_with_a_string_stage(step: Any, registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match=r"stages\[0\]: expected an object with a string 'stage'"):
        parse_definition([step, {"stage": "dispatch"}], registry)


def test_stages_wrapper_accepted(registry: StageRegistry) -> None:
    steps = parse_definition({"stages": [{"stage": "outer"}, {"stage": "dispatch"}]}, registry)
    assert names(steps) == ["record", "outer", "dispatch"]


def test_duplicate_stage_rejected(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match="stage 'outer' appears more than once") as info:
        parse_definition([{"stage": "outer"}, {"stage": "outer"}, {"stage": "dispatch"}], registry)
    assert (info.value.index, info.value.stage) == (1, "outer")  # the second one, as submitted


def test_missing_required_stage_rejected(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match="stage 'dispatch' is required in every pipeline") as info:
        parse_definition([{"stage": "outer"}, {"stage": "inner"}], registry)
    assert info.value.index is None  # the pipeline as a whole


def test_dispatch_must_be_last(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match="'dispatch' must be the last") as info:
        parse_definition([{"stage": "outer"}, {"stage": "dispatch"}, {"stage": "inner"}], registry)
    assert (info.value.index, info.value.stage) == (1, "dispatch")  # record's insertion does not shift it


def test_record_must_be_first_when_given(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match="'record' must be the first") as info:
        parse_definition([{"stage": "outer"}, {"stage": "record"}, {"stage": "dispatch"}], registry)
    assert (info.value.index, info.value.stage) == (1, "record")


def test_after_ordering_violation_rejected(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match="stage 'outer' must come before 'gate'"):
        parse_definition([{"stage": "gate"}, {"stage": "outer"}, {"stage": "dispatch"}], registry)


def test_after_constraint_only_applies_when_the_earlier_stage_is_present(registry: StageRegistry) -> None:
    steps = parse_definition([{"stage": "gate"}, {"stage": "dispatch"}], registry)
    assert names(steps) == ["record", "gate", "dispatch"]


def test_unknown_keys_beside_stage_and_with_rejected(registry: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError) as info:
        parse_definition([{"stage": "outer", "options": {}, "name": "x"}, {"stage": "dispatch"}], registry)
    message = str(info.value)
    assert message.startswith("stages[0]: unknown keys ['name', 'options']")
    assert "allowed: stage, with" in message


def test_record_inserted_at_the_front_when_omitted(registry: StageRegistry) -> None:
    steps = parse_definition([{"stage": "outer"}, {"stage": "dispatch"}], registry)
    assert names(steps) == ["record", "outer", "dispatch"]
    assert isinstance(steps[0].options, NoOptions)


def test_record_not_duplicated_when_given_first(registry: StageRegistry) -> None:
    steps = parse_definition([{"stage": "record"}, {"stage": "dispatch"}], registry)
    assert names(steps) == ["record", "dispatch"]


def test_null_with_means_defaults(registry: StageRegistry) -> None:
    steps = parse_definition([{"stage": "repeat", "with": None}, {"stage": "dispatch"}], registry)
    assert steps[1].options == RepeatOptions()
    assert steps[1].options.times == 3  # type: ignore[attr-defined]


# --- StageStep.as_data and describe() ------------------------------------------------------------


def test_as_data_round_trip(registry: StageRegistry) -> None:
    definition = [
        {"stage": "repeat", "with": {"times": 2}},
        {"stage": "outer", "with": {"label": "edge"}},
        {"stage": "gate"},
        {"stage": "dispatch"},
    ]
    steps = parse_definition(definition, registry)
    data = [step.as_data() for step in steps]
    assert data == [{"stage": "record"}, *definition]
    again = parse_definition(json.loads(json.dumps(data)), registry)
    assert again == steps


def test_as_data_omits_unset_defaults_but_keeps_explicit_ones() -> None:
    assert StageStep("repeat", RepeatOptions()).as_data() == {"stage": "repeat"}
    assert StageStep("repeat", RepeatOptions(times=3)).as_data() == {"stage": "repeat", "with": {"times": 3}}


def test_describe_lists_options_with_json_schema(registry: StageRegistry) -> None:
    described = {entry["stage"]: entry for entry in registry.describe()}
    assert list(described) == ["record", "outer", "inner", "repeat", "gate", "dispatch"]
    repeat = described["repeat"]
    assert repeat["summary"] == "runs the inner chain several times"
    assert repeat["required"] is False
    assert repeat["after"] == ["record"]
    times = repeat["options"]["times"]
    assert times["type"] == "integer"
    assert times["minimum"] == 1
    assert times["maximum"] == 10
    assert times["default"] == 3
    assert times["description"] == "how many times the inner chain runs"
    assert described["record"]["required"] is True
    assert described["record"]["options"] == {}
    assert described["gate"]["options"]["deny"]["type"] == "boolean"


def test_registry_rejects_duplicate_registration(registry: StageRegistry) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(StageSpec("outer", lambda s, o: None, NoOptions, "again"))  # type: ignore[arg-type,return-value]


# --- the real default registry -------------------------------------------------------------------


@pytest.fixture
def real() -> StageRegistry:
    return default_registry()


def test_default_pipeline_parses(real: StageRegistry) -> None:
    steps = parse_definition(DEFAULT_PIPELINE, real)
    assert names(steps) == [step["stage"] for step in DEFAULT_PIPELINE]
    assert names(steps) == [
        "record",
        "rate_limit",
        "auth",
        "directives",
        "orchestrate",
        "policy",
        "shape",
        "escalate",
        "dispatch",
    ]


def test_tenant_style_definition_parses_with_record_prepended(real: StageRegistry) -> None:
    definition = [
        {"stage": "rate_limit", "with": {"rps": 5}},
        {"stage": "auth"},
        {"stage": "policy", "with": {"mode": "cheap"}},
        {"stage": "escalate"},
        {"stage": "dispatch"},
    ]
    steps = parse_definition(definition, real)
    assert names(steps) == ["record", "rate_limit", "auth", "policy", "escalate", "dispatch"]
    rate = steps[1].options
    assert isinstance(rate, RateLimitOptions)
    assert rate.rps == 5
    assert rate.burst is None
    policy = steps[3].options
    assert isinstance(policy, PolicyOptions)
    assert policy.mode == "cheap"
    assert [step.as_data() for step in steps] == [{"stage": "record"}, *definition]


def test_unknown_policy_mode_rejected(real: StageRegistry) -> None:
    definition = [{"stage": "auth"}, {"stage": "policy", "with": {"mode": "turbo"}}, {"stage": "dispatch"}]
    with pytest.raises(PipelineConfigError) as info:
        parse_definition(definition, real)
    message = str(info.value)
    assert message.startswith("stages[1] (policy): mode")
    assert "cheap" in message  # the allowed values are listed


@pytest.mark.parametrize("options", [{"rps": 0}, {"rps": -1}, {"burst": 0}, {"rps": "fast"}])
def test_rate_limit_bad_options_rejected(real: StageRegistry, options: dict[str, Any]) -> None:
    definition = [
        {"stage": "rate_limit", "with": options},
        {"stage": "auth"},
        {"stage": "policy"},
        {"stage": "dispatch"},
    ]
    with pytest.raises(PipelineConfigError, match=rf"stages\[0\] \(rate_limit\): {next(iter(options))}"):
        parse_definition(definition, real)


def test_directives_after_policy_rejected(real: StageRegistry) -> None:
    definition = [{"stage": "auth"}, {"stage": "policy"}, {"stage": "directives"}, {"stage": "dispatch"}]
    with pytest.raises(PipelineConfigError, match="stage 'directives' must come before 'policy'"):
        parse_definition(definition, real)


def test_pipeline_without_auth_rejected(real: StageRegistry) -> None:
    with pytest.raises(PipelineConfigError, match="stage 'auth' is required"):
        parse_definition([{"stage": "policy"}, {"stage": "dispatch"}], real)


def test_escalate_before_policy_rejected(real: StageRegistry) -> None:
    definition = [{"stage": "auth"}, {"stage": "escalate"}, {"stage": "policy"}, {"stage": "dispatch"}]
    with pytest.raises(PipelineConfigError, match="stage 'policy' must come before 'escalate'"):
        parse_definition(definition, real)


def test_real_registry_describe_covers_every_stage(real: StageRegistry) -> None:
    described = {entry["stage"]: entry for entry in real.describe()}
    assert set(described) == {
        "record",
        "rate_limit",
        "auth",
        "directives",
        "orchestrate",
        "policy",
        "shape",
        "escalate",
        "dispatch",
    }
    assert {name for name, entry in described.items() if entry["required"]} == {"record", "auth", "policy", "dispatch"}
    assert described["rate_limit"]["options"]["rps"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert described["escalate"]["options"]["max_attempts"]["default"] == 4
