"""Per-tenant pipelines: the chain each tenant's requests run through, rebuilt when its definition changes."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import structlog

from pipeline.errors import PipelineConfigError
from pipeline.registry import DEFAULT_PIPELINE
from pipeline.stage import Next, StageRegistry, StageStep, build_chain, parse_definition

if TYPE_CHECKING:
    from pipeline.services import Services

__all__ = ["TenantPipelines"]

log = structlog.get_logger("tokenhub.pipelines")


class TenantPipelines:
    def __init__(self, registry: StageRegistry, services: Services) -> None:
        self.registry = registry
        self._services = services
        self.default_steps = parse_definition(DEFAULT_PIPELINE, registry)
        self._default = build_chain(self.default_steps, registry, services)
        self._chains: dict[str, tuple[str, Next]] = {}  # tenant id -> (definition as JSON, chain)
        self.refresh()

    def validate(self, definition: Any) -> list[StageStep]:
        """Parse and check a definition; raises PipelineConfigError. Building it also checks the options
        against the running services (a stage factory may reject a combination)."""
        steps = parse_definition(definition, self.registry)
        build_chain(steps, self.registry, self._services)
        return steps

    def refresh(self) -> None:
        """Sync chains with the current snapshot: build changed tenants, keep unchanged ones (and their
        state, such as rate-limit buckets), drop removed ones. Called after every config reload."""
        chains: dict[str, tuple[str, Next]] = {}
        for tenant_id, definition in self._services.snapshot.pipelines.items():
            key = json.dumps(definition, sort_keys=True)
            current = self._chains.get(tenant_id)
            if current is not None and current[0] == key:
                chains[tenant_id] = current
                continue
            try:
                steps = parse_definition(definition, self.registry)
            except PipelineConfigError as exc:
                # Saved definitions are validated, so this means an upgrade changed a stage: serve the
                # (authenticated) default chain rather than failing every request of the tenant.
                log.error("tenant_pipeline_invalid", tenant_id=tenant_id, reason=str(exc))
                continue
            chains[tenant_id] = (key, build_chain(steps, self.registry, self._services))
        self._chains = chains

    def rebuild(self) -> None:
        """Build every chain again, the default one included: stages read some settings when they are built
        (the rate limit's rps and burst), and SIGHUP changed them. Their state (buckets) starts afresh."""
        self._default = build_chain(self.default_steps, self.registry, self._services)
        self._chains = {}
        self.refresh()

    def chain_for(self, tenant_id: str) -> Next:
        entry = self._chains.get(tenant_id)
        return entry[1] if entry is not None else self._default

    def has_stage(self, tenant_id: str, name: str) -> bool:
        definition, _ = self.definition_for(tenant_id)
        return any(step.get("stage") == name for step in definition)

    def definition_for(self, tenant_id: str) -> tuple[list[dict[str, Any]], bool]:
        """(definition, is_custom) for a tenant."""
        stored = self._services.snapshot.pipelines.get(tenant_id)
        if stored is not None:
            return stored, True
        return [step.as_data() for step in self.default_steps], False
