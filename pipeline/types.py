"""Small shared value types: the normalized request and result, and registry records.

This module imports nothing of ours, so adapters and the store may depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "ALIAS_STICKY_BY",
    "MEDIA_CAPABILITIES",
    "AliasInfo",
    "AliasVariant",
    "ApiKeyInfo",
    "ChatRequest",
    "ChatResult",
    "ErrorClass",
    "MediaPart",
    "Message",
    "ModelInfo",
    "ProviderInfo",
    "RequestRecord",
    "StreamDelta",
    "Usage",
]


class ErrorClass(StrEnum):
    CONTEXT_OVERFLOW = "context_overflow"
    RATE_LIMITED = "rate_limited"
    TRANSIENT = "transient"
    FATAL = "fatal"
    BUDGET_EXCEEDED = "budget_exceeded"  # the provider account's quota or credit is used up (model disabled)


# What a model must be able to read for each kind of media part (a model's `capabilities`).
MEDIA_CAPABILITIES = {"image": "vision", "document": "documents", "audio": "audio"}


@dataclass(frozen=True, slots=True)
class MediaPart:
    """An image, a document or audio in a message, normalized so either wire format can be built from it.

    The source is `data` (base64, checked and measured at the edge) or `url` (passed on as given)."""

    kind: str  # "image" | "document" | "audio" (the keys of MEDIA_CAPABILITIES)
    media_type: str = ""  # image/png, application/pdf, audio/wav, ...; "" for a URL that names none
    data: str = ""  # base64, without a data: prefix
    url: str = ""  # an http(s) URL the provider fetches
    detail: str = ""  # OpenAI's image detail (low, high, auto); "" = not given
    filename: str = ""  # documents: OpenAI's file part carries a name
    title: str = ""  # documents: Anthropic's document title
    size: int = 0  # decoded bytes (0 for a URL): what the content caps count
    width: int = 0  # pixels, read from the image header (0 = unknown)
    height: int = 0
    pages: int = 0  # documents: pages counted in the PDF (0 = unknown)
    seconds: float = 0.0  # audio: duration (0 = unknown)

    @property
    def capability(self) -> str:
        return MEDIA_CAPABILITIES[self.kind]


@dataclass(slots=True)
class Message:
    role: str
    content: str  # the text (of every text part, joined): what estimates, directives and plans read
    tool_calls: Any = None
    tool_call_id: str | None = None
    name: str | None = None
    # The content in order when it holds media: text pieces and MediaParts. Empty = `content` is all of it.
    parts: tuple[str | MediaPart, ...] = ()

    @property
    def media(self) -> tuple[MediaPart, ...]:
        return tuple(p for p in self.parts if isinstance(p, MediaPart))


@dataclass(slots=True)
class ChatRequest:
    """The normalized chat request every edge codec decodes into."""

    messages: list[Message]
    model_hint: str = ""
    estimated_input_tokens: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)
    output_schema: Any = None  # a checked JSON Schema the answer must satisfy
    output_format: Any = None  # stages.output_format.OutputFormat: how to shape the answer
    stream: bool = False
    stream_usage: bool = False  # the client asked for a usage chunk at the end of the stream
    operation: str = "chat"  # "chat" or "embeddings": which kind of model may serve it
    max_item_tokens: int = 0  # embeddings: the longest single input's estimate (a window applies per input)
    continue_final: bool = False  # the last message is an assistant prefill the model continues (stream rescue)


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class ChatResult:
    """A provider's answer: the raw JSON body plus what TokenHub extracted from it."""

    body: dict[str, Any]
    usage: Usage | None
    latency_ms: float
    raw: bytes = b""  # the body exactly as the provider sent it (a JSON object), when available
    format: str = "openai"  # the body's shape: "openai" (chat.completion) or "anthropic" (Messages API)


@dataclass(slots=True)
class StreamDelta:
    """One normalized piece of a streamed answer, in OpenAI's chunk vocabulary whatever the upstream.

    `tool_calls` entries are OpenAI delta entries: {"index", "id"?, "type"?, "function": {"name"?, "arguments"?}}.
    """

    content: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None  # stop | length | tool_calls | content_filter
    usage: Usage | None = None

    @property
    def has_token(self) -> bool:
        """True when the client would see output (a role-only or usage-only chunk is not a token)."""
        return bool(self.content or self.reasoning or self.tool_calls or self.finish_reason)


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    id: str
    type: str
    base_url: str
    enabled: bool = True
    api_key: str = field(default="", repr=False)  # never printed
    key_in_vault: bool = False  # its key is sealed in the vault: unusable (api_key "") while the vault is locked
    autoload_models: bool = False  # its model list is registered and kept in step (stages/model_autoload.py)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    provider_id: str
    weight: int = 1
    max_context_tokens: int = 0
    max_output_tokens: int = 0  # the most a reply can hold (0 = unknown): bounds the cost estimate
    input_per_1k: float = 0.0
    output_per_1k: float = 0.0
    enabled: bool = True
    kind: str = "chat"  # "chat" or "embedding"; a request is only routed to models of its operation's kind
    # What it can read besides text (vision, documents, audio); None = its provider type's default.
    capabilities: frozenset[str] | None = None
    # The name the provider knows it by ("" = the id): several TokenHub models (gpt-4o@azure, gpt-4o@openai)
    # may be sent as one upstream name to different providers.
    upstream_model: str = ""
    fallbacks: tuple[str, ...] = ()  # model ids escalate tries next, in order, when this one fails first
    # Where the prices came from: "manual" (an admin) or "litellm" (the pricing refresh). Read-only here:
    # the store sets it (an admin's price change makes it manual again).
    pricing_source: str = "manual"
    # Whether the model continues an assistant prefill (stream rescue): None = its provider type's default
    # (adapters.provider.Capabilities.prefill).
    supports_prefill: bool | None = None
    # Tool names this model knows differently from clients: (model-facing name, client-facing name) pairs,
    # applied both ways around each call (adapters/tool_names.py). A tuple: the record stays hashable.
    tool_name_map: tuple[tuple[str, str], ...] = ()
    gemma4_output: bool = False  # parse Gemma-4's thinking channel and inline tool calls (adapters/gemma4.py)
    autoloaded: bool = False  # registered by its provider's autoload_models, which may remove it again

    @property
    def sent_as(self) -> str:
        """The model name put in the provider request."""
        return self.upstream_model or self.id

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens / 1000 * self.input_per_1k + output_tokens / 1000 * self.output_per_1k


ALIAS_STICKY_BY = ("", "request", "api_key", "round_robin")  # how an alias picks its variant (stages/aliases.py)


@dataclass(frozen=True, slots=True)
class AliasVariant:
    model_id: str
    weight: int


@dataclass(frozen=True, slots=True)
class AliasInfo:
    """A name clients may use as their model that TokenHub maps to one of weighted variants (routing.md)."""

    name: str
    variants: tuple[AliasVariant, ...]
    enabled: bool = True
    sticky_by: str = ""  # "" or "request" (the request id), "api_key", "round_robin"
    fallbacks: tuple[str, ...] = ()  # tried, in order, when the chosen variant fails; else the variant's own


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What the request path knows about an API key (never the key itself)."""

    id: str
    name: str
    tenant_id: str
    scopes: frozenset[str]  # empty = every scope
    enabled: bool
    expires_at: float | None  # unix seconds
    monthly_budget_usd: float = 0.0  # 0 = no budget
    rate_limit_rpm: int = 0  # requests per minute, 0 = no per-key limit
    rate_limit_tpm: int = 0  # tokens per minute, 0 = no per-key limit


@dataclass(slots=True)  # not frozen: frozen dataclasses pay for object.__setattr__ on every field
class RequestRecord:
    """One row of the request log: what happened to one request, success or not. No secrets."""

    timestamp: float  # unix seconds
    request_id: str
    tenant_id: str
    api_key_id: str
    endpoint: str
    mode: str
    model_id: str
    provider_id: str
    status: int  # the HTTP status the client got
    error_class: str
    error_message: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    escalations: int
    routing_reason: str
    ttft_ms: float = 0.0  # streams: time to the first token sent to the client; 0 for non-streaming
    parent_request_id: str = ""  # a /v1/plan step names the plan request it belongs to
    attempts: str = ""  # every model tried and how it went: "gpt-a=transient, gpt-b=ok" (the bandit learns from it)
    reward: float = math.nan  # routing reward in [0, 1] (stages/bandit.py); NaN = none (no model was tried)
    feedback_score: float = math.nan  # the client's score from POST /v1/feedback; NaN = none
    feedback_comment: str | None = None  # the comment sent with that score
    client_request_id: str = ""  # the client's own X-Request-Id (correlation only; request_id is ours)
    # What counterfactual evaluation and the bandit's rebuild need (docs/routing.md, Objective, Evaluation):
    propensity: float = math.nan  # P(the routing policy picked the first model tried); NaN = not its choice
    candidates: str = ""  # the eligible models, comma-separated
    cost_ref_usd: float = math.nan  # the relative terms' references: the candidates' largest expected cost ...
    latency_ref_ms: float = math.nan  # ... and latency
    quality_prior: float = math.nan  # the quality an unrated answer was valued at
    quality_weight: float = math.nan  # the objective's quality weight (feedback moves the reward by it)
    alias_from: str = ""  # the alias the client named, when routing replaced it by one of its variants
    # Not a column: renders routing_reason when it is first asked for (`resolve_reason`). The request-log
    # writer does, in batches off the event loop: rendering it per request on the loop cost ~10 us there.
    reason_pending: Callable[[], str] | None = field(default=None, metadata={"column": False})

    def resolve_reason(self) -> str:
        """routing_reason, rendered first if it was left for later."""
        pending = self.reason_pending
        if pending is not None:
            self.routing_reason, self.reason_pending = pending(), None
        return self.routing_reason
