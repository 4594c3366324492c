"""The stage protocol (onion middlewares), the registry of stage factories and the pipeline builder.

A pipeline definition is data: an ordered list of ``{"stage": NAME, "with": {...options}}``. The builder
validates it against the registry (unknown stages, bad options, ordering rules) and turns it into one
callable chain. Chains hold no per-request state, so a stage may call ``call_next`` several times
(escalate re-runs dispatch; orchestration re-runs policy -> escalate -> dispatch).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.context import RequestContext
from pipeline.errors import PipelineConfigError

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = [
    "Next",
    "Stage",
    "StageOptions",
    "StageRegistry",
    "StageSpec",
    "StageStep",
    "build_chain",
    "chain_after",
    "parse_definition",
    "stages_in",
]

Next = Callable[[RequestContext], Awaitable[None]]


class Stage(Protocol):
    async def __call__(self, ctx: RequestContext, call_next: Next) -> None: ...


class StageOptions(BaseModel):
    """Base of every stage's options: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class StageSpec:
    name: str
    factory: Callable[[Services, Any], Stage]  # (services, validated options) -> stage
    options: type[StageOptions]
    summary: str
    required: bool = False
    after: tuple[str, ...] = ()  # stages that, when present, must come earlier in the chain


class StageRegistry:
    def __init__(self, specs: Iterable[StageSpec] = ()) -> None:
        self._specs: dict[str, StageSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: StageSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"stage {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> StageSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs))
            raise PipelineConfigError(f"unknown stage {name!r} (known stages: {known})") from None

    def describe(self) -> list[dict[str, Any]]:
        """The registered stages and their options, for GET /admin/v1/pipelines/stages."""
        out = []
        for spec in self._specs.values():
            schema = spec.options.model_json_schema()
            out.append(
                {
                    "stage": spec.name,
                    "summary": spec.summary,
                    "required": spec.required,
                    "after": list(spec.after),
                    "options": schema.get("properties", {}),
                }
            )
        return out

    @property
    def names(self) -> list[str]:
        return list(self._specs)


@dataclass(frozen=True)
class StageStep:
    stage: str
    options: StageOptions

    def as_data(self) -> dict[str, Any]:
        opts = self.options.model_dump(exclude_unset=True)
        return {"stage": self.stage, "with": opts} if opts else {"stage": self.stage}


def parse_definition(data: Any, registry: StageRegistry) -> list[StageStep]:
    """Validate a pipeline definition (a list of steps, or ``{"stages": [...]}``) without building it."""
    if isinstance(data, dict) and "stages" in data:
        data = data["stages"]
    if not isinstance(data, list) or not data:
        raise PipelineConfigError('a pipeline is a non-empty list of {"stage": NAME, "with": {...}} steps')
    steps: list[StageStep] = []
    for index, raw in enumerate(data):
        where = f"stages[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("stage"), str):
            raise PipelineConfigError(f"{where}: expected an object with a string 'stage'", index=index)
        extra = set(raw) - {"stage", "with"}
        if extra:
            raise PipelineConfigError(
                f"{where}: unknown keys {sorted(extra)} (allowed: stage, with)", index=index, stage=raw["stage"]
            )
        try:
            spec = registry.get(raw["stage"])
        except PipelineConfigError as exc:
            raise PipelineConfigError(f"{where}: {exc}", index=index, stage=raw["stage"]) from None
        options = raw.get("with")
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise PipelineConfigError(f"{where} ({spec.name}): 'with' must be an object", index=index, stage=spec.name)
        try:
            steps.append(StageStep(spec.name, spec.options.model_validate(options)))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'with'}: {err['msg']}" for err in exc.errors()
            )
            raise PipelineConfigError(f"{where} ({spec.name}): {problems}", index=index, stage=spec.name) from None
    positions: list[int | None] = list(range(len(steps)))  # each step's index in the definition as submitted
    if all(step.stage != "record" for step in steps):
        # record always wraps the chain so every request, rejections included, is recorded exactly once.
        steps.insert(0, StageStep("record", registry.get("record").options()))
        positions.insert(0, None)
    _check_order(steps, positions, registry)
    return steps


def _check_order(steps: Sequence[StageStep], positions: Sequence[int | None], registry: StageRegistry) -> None:
    names = [step.stage for step in steps]

    def refuse(message: str, at: int) -> PipelineConfigError:
        return PipelineConfigError(message, index=positions[at], stage=names[at])

    for at, name in enumerate(names):
        if name in names[:at]:
            raise refuse(f"stage {name!r} appears more than once", at)
    for spec_name in registry.names:
        spec = registry.get(spec_name)
        if spec.required and spec_name not in names:
            raise PipelineConfigError(f"stage {spec_name!r} is required in every pipeline")
    if names[0] != "record":
        message = "'record' must be the first (outermost) stage, so every request is recorded"
        raise refuse(message, names.index("record"))
    if names[-1] != "dispatch":
        at = names.index("dispatch") if "dispatch" in names else len(names) - 1
        raise refuse("'dispatch' must be the last (innermost) stage", at)
    for position, name in enumerate(names):
        for earlier in registry.get(name).after:
            if earlier in names and names.index(earlier) > position:
                raise refuse(f"stage {earlier!r} must come before {name!r}", position)


async def _end_of_chain(ctx: RequestContext) -> None:
    return None


def build_chain(steps: Sequence[StageStep], registry: StageRegistry, services: Services) -> Next:
    """Instantiate each stage and fold them, innermost first, into one callable."""
    handler: Next = _end_of_chain
    tracing = getattr(services, "tracing", None)  # pipeline/tracing.py: wrappers only when tracing is on
    for step in reversed(steps):
        stage = registry.get(step.stage).factory(services, step.options)
        if tracing is not None:
            stage = tracing.stage(step.stage, stage)
        handler = _link(stage, handler)
    return handler


def _link(stage: Stage, call_next: Next) -> Next:
    # A partial, not a wrapper coroutine: one frame fewer per stage on every request.
    return functools.partial(stage, call_next=call_next)


def stages_in(chain: Next) -> Iterator[Stage]:
    """The stage instances of a chain build_chain made, outermost first (the edge finds its rate limiter)."""
    link = chain
    while isinstance(link, functools.partial):
        yield getattr(link.func, "inner", link.func)  # a TracedStage's stage
        link = link.keywords["call_next"]


def chain_after(chain: Next, stage_type: type) -> Next | None:
    """The rest of a chain after its first stage of `stage_type` (what that stage's `call_next` is), or None
    when the chain has no such stage. A durable workflow's activity runs a step through this rest."""
    link = chain
    while isinstance(link, functools.partial):
        if isinstance(link.func, stage_type):
            return link.keywords["call_next"]
        link = link.keywords["call_next"]
    return None
