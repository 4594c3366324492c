"""Input pieces every edge codec shares: message and policy models, conversion, and validation errors."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.context import Policy
from pipeline.errors import InvalidRequest
from pipeline.media import audio_part, document_part, image_part, parse_data_uri
from pipeline.modes import Mode
from pipeline.types import MediaPart, Message

__all__ = [
    "ContentPart",
    "MessageIn",
    "PolicyIn",
    "Strict",
    "content_of",
    "plain_messages",
    "plain_object",
    "policy_from",
    "to_messages",
]


class Strict(BaseModel):
    # Wrong types are errors ("5" is not a number); unknown fields are ignored, as the original does.
    model_config = ConfigDict(strict=True, extra="ignore")


class ImageUrlIn(Strict):
    url: Annotated[str, Field(min_length=1)]
    detail: str = ""


class InputAudioIn(Strict):
    data: Annotated[str, Field(min_length=1)]
    format: str


class FileIn(Strict):
    file_data: str | None = None  # a data URI (base64 PDF)
    file_id: str | None = None  # a file uploaded to OpenAI: nothing TokenHub can send elsewhere
    filename: str = ""


class ContentPart(Strict):
    type: str
    text: str | None = None
    image_url: ImageUrlIn | None = None
    input_audio: InputAudioIn | None = None
    file: FileIn | None = None


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


def policy_from(p: PolicyIn | None) -> Policy:
    """The routing policy a body names (absent: every constraint left to the later layers)."""
    return Policy(p.mode or "", p.max_budget_usd, p.max_latency_ms, p.min_weight) if p else Policy()


def to_messages(items: list[MessageIn], *, max_messages: int, field: str) -> list[Message]:
    if not items:
        raise InvalidRequest("messages must be a non-empty list", field=field)
    if len(items) > max_messages:
        raise InvalidRequest(f"too many messages: {len(items)} > {max_messages}", field=field)
    messages = []
    for i, m in enumerate(items):
        text, parts = content_of(m.content, f"{field}.{i}.content", media_allowed=m.role == "user")
        messages.append(Message(m.role, text, m.tool_calls, m.tool_call_id or None, m.name or None, parts))
    return messages


def plain_object(raw: bytes, other_fields: frozenset[str]) -> dict[str, Any] | None:
    """The body for a codec's plain path (decoding the usual body without the pydantic models): a JSON object
    that names none of `other_fields`, the fields that path leaves to the models; None for any other body."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return body if type(body) is dict and other_fields.isdisjoint(body) else None


_OTHER_MESSAGE_FIELDS = frozenset(MessageIn.model_fields) - {"role", "content"}


def plain_messages(items: Any, max_messages: int) -> list[Message] | None:
    """A plain body's messages (a non-empty list of text messages of a role and a content, at most
    `max_messages`), decoded without the models; None for any other value, which the codec then hands to
    the models (they accept it, or say what is wrong). Builds what `to_messages` builds from MessageIn."""
    if type(items) is not list or not 0 < len(items) <= max_messages:
        return None
    messages = []
    for item in items:
        if type(item) is not dict or not _OTHER_MESSAGE_FIELDS.isdisjoint(item):
            return None
        role, content = item.get("role"), item.get("content")
        if type(role) is not str or not 0 < len(role) <= 64 or type(content) is not str:
            return None
        messages.append(Message(role, content))
    return messages


def content_of(
    content: str | list[ContentPart] | None, field: str, *, media_allowed: bool
) -> tuple[str, tuple[str | MediaPart, ...]]:
    """(the text, the parts in order when any is media). Text parts are concatenated; image_url, input_audio
    and file parts become MediaParts (user turns only, as OpenAI accepts them); any other part is refused
    rather than dropped: answering a question with its picture silently removed would be worse than an error."""
    if isinstance(content, str):
        return content, ()
    if not content:
        return "", ()
    parts: list[str | MediaPart] = []
    for index, part in enumerate(content):
        where = f"{field}.{index}"
        if part.type == "text":
            parts.append(part.text or "")
        elif part.type in _MEDIA_PARTS and media_allowed:
            parts.append(_media(part, where))
        elif part.type in _MEDIA_PARTS:
            raise InvalidRequest(f"{part.type} parts are accepted in user messages only", field=where)
        else:
            raise InvalidRequest(f"content parts of type {part.type!r} are not supported", field=where)
    text = "".join(p for p in parts if isinstance(p, str))
    return text, tuple(parts) if any(isinstance(p, MediaPart) for p in parts) else ()


_MEDIA_PARTS = frozenset({"image_url", "input_audio", "file"})


def _media(part: ContentPart, field: str) -> MediaPart:
    if part.type == "image_url":
        if part.image_url is None:
            raise InvalidRequest("an image_url part needs image_url.url", field=f"{field}.image_url")
        url, detail = part.image_url.url, part.image_url.detail
        if url.startswith("data:"):
            media_type, data = parse_data_uri(url, f"{field}.image_url.url")
            return image_part(f"{field}.image_url", data=data, media_type=media_type, detail=detail)
        return image_part(f"{field}.image_url", url=url, detail=detail)
    if part.type == "input_audio":
        if part.input_audio is None:
            raise InvalidRequest("an input_audio part needs input_audio.data and format", field=f"{field}.input_audio")
        return audio_part(f"{field}.input_audio", data=part.input_audio.data, audio_format=part.input_audio.format)
    file = part.file
    if file is None or not file.file_data:
        raise InvalidRequest(
            "a file part needs file.file_data (a base64 data URI); uploaded file_ids cannot be forwarded",
            field=f"{field}.file",
        )
    media_type, data = parse_data_uri(file.file_data, f"{field}.file.file_data")
    return document_part(f"{field}.file", data=data, media_type=media_type, filename=file.filename)
