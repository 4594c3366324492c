"""vLLM adapter: OpenAI's wire format spread round-robin over one deployment's endpoints (providers.md §5).

A provider's base_url holds one or more comma-separated base URLs. Each call takes the next healthy endpoint
(the shared retry loop walks the pool's Route, so a retry goes to the next endpoint at once); an endpoint
that fails at the transport level or answers 5xx is marked down until its `/health` probe answers 200
again (adapters/vllm_prober.py). When every endpoint is down they are all tried anyway.
"""

from __future__ import annotations

import dataclasses

from adapters.endpoints import Endpoint, EndpointPool, parse_endpoints
from adapters.failures import FailureRules
from adapters.http import HttpClient, RetryPolicy, Route
from adapters.openai import OpenAIAdapter
from adapters.provider import Capabilities
from pipeline.types import ProviderInfo

__all__ = ["PROVIDER_TYPE", "VLLMAdapter"]

# vLLM accepts sampling extras (top_k, min_p, repetition_penalty, ...); only Anthropic-only fields are dropped.
_NOT_VLLM = frozenset({"metadata", "anthropic_version", "thinking"})
# Case-insensitive body phrases vLLM (and the servers in front of it) use for an over-long prompt; a
# "max_tokens ... too large" counts on any 4xx (providers.md §5).
_FAILURES = FailureRules(
    overflow_phrases=(
        "context length",
        "context_length",
        "prompt is too long",
        "input is too long",
        "maximum context",
        "token limit",
        "too many tokens",
    ),
    budget_overflow_statuses=frozenset(range(400, 500)),
)


class VLLMAdapter(OpenAIAdapter):
    type = "vllm"
    # vLLM serves image_url and input_audio parts for multimodal models (and fetches image URLs when its
    # --allowed-media-domains let it); most deployments are text-only, so a model reads media only when set.
    capabilities = Capabilities(
        embeddings=True,
        discovery=True,
        prefill=True,
        inputs=frozenset({"vision", "documents", "audio"}),
        url_inputs=frozenset({"vision"}),
    )
    failures = _FAILURES
    health_path = "/health"
    unsupported_params = _NOT_VLLM
    max_stop_sequences = None
    # vLLM continues the final assistant message only when asked, and then without a new assistant header.
    prefill_fields = (("continue_final_message", True), ("add_generation_prompt", False))

    def __init__(self, provider: ProviderInfo, http: HttpClient, retry: RetryPolicy) -> None:
        base_urls = parse_endpoints(provider.base_url)
        super().__init__(dataclasses.replace(provider, base_url=base_urls[0]), http, retry)
        self.provider = provider  # as configured: Services compares it to decide whether to rebuild
        self.pool = EndpointPool(base_urls, health_path=self.health_path, models_path=self.models_path)

    def __repr__(self) -> str:
        return f"VLLMAdapter(id={self.id!r}, endpoints={[e.base_url for e in self.pool.endpoints]!r})"

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self.pool.endpoints

    def model_list_urls(self) -> tuple[str, ...]:
        return tuple(e.models_url for e in self.pool.endpoints)

    def _target(self, path: str) -> Route:
        return self.pool.route(path)


PROVIDER_TYPE = VLLMAdapter.describe("vLLM deployment: comma-separated endpoints, round-robin, models discovered")
