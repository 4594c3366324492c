"""Input pieces every edge codec shares: message and policy models, conversion, and validation errors."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.errors import InvalidRequest
from pipeline.modes import Mode
from pipeline.types import Message

__all__ = ["ContentPart", "MessageIn", "PolicyIn", "Strict", "text_of", "to_messages"]


class Strict(BaseModel):
    # Wrong types are errors ("5" is not a number); unknown fields are ignored, as the original does.
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(Strict):
    type: str
    text: str | None = None


class MessageIn(Strict):
    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: Any = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> str | list[ContentPart] | None:
        # Checked by hand so the error names the field, not pydantic's union branches.
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            return [ContentPart.model_validate(part) for part in value]
        raise ValueError("must be a string, a list of content parts, or null")


class PolicyIn(Strict):
    mode: Mode | None = None
    max_budget_usd: Annotated[float, Field(ge=0, le=100)] = 0.0
    max_latency_ms: Annotated[int, Field(ge=0, le=300_000)] = 0
    min_weight: Annotated[int, Field(ge=0, le=10)] = 0


def to_messages(items: list[MessageIn], *, max_messages: int, field: str) -> list[Message]:
    if not items:
        raise InvalidRequest("messages must be a non-empty list", field=field)
    if len(items) > max_messages:
        raise InvalidRequest(f"too many messages: {len(items)} > {max_messages}", field=field)
    return [
        Message(
            m.role, text_of(m.content, f"{field}.{i}.content"), m.tool_calls, m.tool_call_id or None, m.name or None
        )
        for i, m in enumerate(items)
    ]


def text_of(content: str | list[ContentPart] | None, field: str) -> str:
    """Array content: text parts concatenated. Any other part (an image, audio) is refused rather than
    dropped: answering a question with its picture silently removed would be worse than an error."""
    if isinstance(content, str):
        return content
    if not content:
        return ""
    for index, part in enumerate(content):
        if part.type != "text":
            raise InvalidRequest(f"content parts of type {part.type!r} are not supported", field=f"{field}.{index}")
    return "".join(part.text or "" for part in content)
