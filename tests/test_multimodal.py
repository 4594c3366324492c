"""Images, PDFs and audio through /v1/chat/completions (openai SDK), /v1/messages (anthropic SDK) and /v1/chat,
converted to the answering provider's format; model capabilities and routing by them; media in the estimates
and the content caps."""

from __future__ import annotations

import base64
import os
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import openai
import pytest

from admin_ui.config_export import export_config
from admin_ui.models import ModelIn
from pipeline.errors import InvalidRequest
from pipeline.media import audio_part, document_part, image_part, image_size, media_tokens
from pipeline.types import MediaPart
from tests.conftest import Hub
from tests.fakes.anthropic_fake import FakeAnthropic

UPSTREAM_KEY = "sk-test-secret"  # what Hub.add_provider registers


# ---- media files, built by hand (no image library) -------------------------------------------------------


def png(width: int, height: int, *, payload: bytes = b"") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = payload or zlib.compress(b"".join(b"\x00" + b"\x00" * width * 3 for _ in range(height)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def webp(width: int, height: int, chunk: bytes) -> bytes:
    if chunk == b"VP8X":
        body = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif chunk == b"VP8L":
        body = b"\x2f" + ((width - 1) | (height - 1) << 14).to_bytes(4, "little")
    else:
        body = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height)
    data = b"WEBP" + chunk + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", len(data)) + data


def pdf(pages: int) -> bytes:
    kids = " ".join(f"{3 + i} 0 R" for i in range(pages))
    objects = ["1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj", f"2 0 obj << /Type /Pages /Kids [{kids}] >> endobj"]
    objects += [f"{3 + i} 0 obj << /Type /Page /Parent 2 0 R >> endobj" for i in range(pages)]
    return ("%PDF-1.4\n" + "\n".join(objects) + "\n%%EOF\n").encode()


def wav(seconds: int, byte_rate: int = 16_000) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, byte_rate // 2, byte_rate, 2, 16)
    data = b"\x00" * (seconds * byte_rate)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", len(data)) + data)
    )


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def data_uri(raw: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{b64(raw)}"


# ---- setup -----------------------------------------------------------------------------------------------


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=UPSTREAM_KEY) as server:
        yield server


async def _anthropic_provider(hub: Hub, claude: FakeAnthropic, *models: str, **fields: Any) -> None:
    await hub.add_provider("claude", base_url=claude.base_url, type="anthropic")
    for model in models:
        await hub.add_model(model, "claude", input_per_1k=0.003, output_per_1k=0.015, **fields)


def _openai_sdk(hub: Hub, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(hub.client.make_url("/v1")), api_key=key, max_retries=0)


def _anthropic_sdk(hub: Hub, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(hub.client.make_url("")).rstrip("/"), api_key=key, max_retries=0)


def _sent_content(requests: list[dict[str, Any]]) -> Any:
    return requests[-1]["json"]["messages"][-1]["content"]


# ---- both directions through the official SDKs -----------------------------------------------------------


async def test_openai_sdk_images_answered_by_anthropic(hub: Hub, claude: FakeAnthropic) -> None:
    await _anthropic_provider(hub, claude, "claude-test")
    key = await hub.new_key()
    picture = png(64, 32)
    content: Any = [
        {"type": "text", "text": "what is in these pictures?"},
        # declared JPEG, really a PNG: sent with the type its header shows (the API rejects a mismatch)
        {"type": "image_url", "image_url": {"url": data_uri(picture, "image/jpeg"), "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    async with _openai_sdk(hub, key) as client:
        completion = await client.chat.completions.create(
            model="claude-test", messages=[{"role": "user", "content": content}]
        )
    assert completion.model == "claude-test" and completion.choices[0].message.content == "reply from claude-test"
    assert _sent_content(claude.requests) == [
        {"type": "text", "text": "what is in these pictures?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(picture)}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


async def test_anthropic_sdk_image_and_pdf_answered_by_openai(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("gpt-test", input_per_1k=0.001, output_per_1k=0.002)
    key = await hub.new_key()
    picture, report = gif(10, 10), pdf(2)
    async with _anthropic_sdk(hub, key) as client:
        message = await client.messages.create(
            model="gpt-test",
            max_tokens=50,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/gif", "data": b64(picture)},
                        },
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": b64(report)},
                            "title": "report.pdf",
                        },
                        {"type": "text", "text": "summarize both"},
                    ],
                }
            ],
        )
    assert message.model == "gpt-test" and message.content[0].type == "text"
    assert message.content[0].text == "reply from gpt-test"
    assert _sent_content(hub.fake.requests) == [
        {"type": "image_url", "image_url": {"url": data_uri(picture, "image/gif")}},
        {"type": "file", "file": {"filename": "report.pdf", "file_data": data_uri(report, "application/pdf")}},
        {"type": "text", "text": "summarize both"},
    ]


async def test_anthropic_sdk_document_by_url_reaches_anthropic_as_sent(hub: Hub, claude: FakeAnthropic) -> None:
    await _anthropic_provider(hub, claude, "claude-test", max_context_tokens=200_000)
    key = await hub.new_key()
    document = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}, "title": "A"}
    async with _anthropic_sdk(hub, key) as client:
        stream = await client.messages.create(
            model="claude-test",
            max_tokens=50,
            stream=True,
            messages=[{"role": "user", "content": [document, {"type": "text", "text": "read it"}]}],
            extra_body={"tokenhub": {"max_budget_usd": 1}},  # an unknown PDF is estimated at 4 pages of 3000
        )
        text = "".join([e.delta.text async for e in stream if e.type == "content_block_delta"])
    assert text == "reply from claude-test"
    assert _sent_content(claude.requests) == [document, {"type": "text", "text": "read it"}]


async def test_openai_sdk_audio_goes_to_a_model_that_hears(hub: Hub, claude: FakeAnthropic) -> None:
    await _anthropic_provider(hub, claude, "claude-test", weight=10)  # ranks first for text
    await hub.add_provider()
    await hub.add_model("gpt-audio", weight=1, capabilities=["audio"], input_per_1k=0.01, output_per_1k=0.02)
    key = await hub.new_key()
    sound = wav(1)
    content: Any = [{"type": "input_audio", "input_audio": {"data": b64(sound), "format": "wav"}}]
    async with _openai_sdk(hub, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": content}]
        )
    assert raw.parse().model == "gpt-audio" and claude.requests == []
    assert _sent_content(hub.fake.requests) == [
        {"type": "input_audio", "input_audio": {"data": b64(sound), "format": "wav"}}
    ]


async def test_native_chat_carries_an_image_part(ready_hub: tuple[Hub, str]) -> None:
    hub, key = ready_hub
    picture = jpeg(300, 200)
    part = {"type": "image_url", "image_url": {"url": data_uri(picture, "image/jpeg"), "detail": "low"}}
    body = await hub.chat_ok(key, [{"role": "user", "content": [{"type": "text", "text": "caption"}, part]}])
    assert body["negotiated_model"] == "gpt-test"
    assert _sent_content(hub.fake.requests) == [{"type": "text", "text": "caption"}, part]


# ---- routing by capability -------------------------------------------------------------------------------


async def test_an_image_never_lands_on_a_text_only_model(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("text-only", weight=5, capabilities=[], input_per_1k=0.0001, output_per_1k=0.0001)
    await hub.add_model("sees", weight=5, input_per_1k=0.01, output_per_1k=0.02)  # openai default: vision
    key = await hub.new_key()
    image = [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": data_uri(png(8, 8), "image/png")}},
    ]
    for _ in range(3):
        body = await hub.chat_ok(key, [{"role": "user", "content": image}], policy={"mode": "cheap"})
        assert body["negotiated_model"] == "sees"
        assert "text-only (lacks_vision)" in body["routing_reason"]
    text = await hub.chat_ok(key, "just text", policy={"mode": "cheap"})
    assert text["negotiated_model"] == "text-only"  # the cheaper one still serves text
    assert [r["model"] for r in hub.fake.requests] == ["sees", "sees", "sees", "text-only"]


async def test_no_model_that_sees_is_a_422_naming_vision(hub: Hub, claude: FakeAnthropic) -> None:
    await hub.add_provider()
    await hub.add_model("text-only", capabilities=[])
    await hub.add_model("asleep", enabled=False)  # could see, but is disabled: still nobody can
    key = await hub.new_key()
    content: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]
    async with _openai_sdk(hub, key) as client:
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": content}])
    error = caught.value.body
    assert isinstance(error, dict) and "'vision'" in error["message"] and error["code"] == "no_eligible_model"
    assert "capabilities" in error["message"] and hub.fake.requests == []


async def test_audio_and_document_urls_have_no_anthropic_route(hub: Hub, claude: FakeAnthropic) -> None:
    await _anthropic_provider(hub, claude, "claude-test")
    await hub.add_provider()
    await hub.add_model("gpt-test", max_context_tokens=128_000)
    key = await hub.new_key()
    audio: Any = [{"type": "input_audio", "input_audio": {"data": b64(wav(1)), "format": "wav"}}]
    async with _openai_sdk(hub, key) as client:
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await client.chat.completions.create(model="auto", messages=[{"role": "user", "content": audio}])
    assert "'audio'" in caught.value.message
    error = await hub.chat_refused(key, 422, "no_eligible_model", [{"role": "user", "content": audio}])
    assert error["exclusions"] == {"claude-test": "lacks_audio", "gpt-test": "lacks_audio"}
    # A PDF by URL: only Anthropic fetches documents, so the OpenAI model is skipped for it.
    document = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
    status, body, _ = await _messages(hub, key, [document, {"type": "text", "text": "read"}])
    assert status == 200 and body["model"] == "claude-test", body
    await hub.admin("PATCH", "/models/claude-test", {"enabled": False}, expect=200)
    status, body, _ = await _messages(hub, key, [document, {"type": "text", "text": "read"}])
    assert status == 422 and body["error"]["type"] == "invalid_request_error"
    assert "documents (PDF) by URL" in body["error"]["message"] and "base64" in body["error"]["message"]


async def _messages(hub: Hub, key: str, content: list[Any]) -> tuple[int, Any, Any]:
    payload = {"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": content}]}
    resp = await hub.client.post("/v1/messages", json=payload, headers={"x-api-key": key})
    return resp.status, await resp.json(), resp


async def test_escalation_on_overflow_skips_a_bigger_model_that_cannot_see(hub: Hub) -> None:
    from tests.fakes.openai_fake import ContextOverflow

    await hub.add_provider()
    await hub.add_model("small", weight=9, max_context_tokens=8000)
    await hub.add_model("big-blind", weight=1, max_context_tokens=64_000, capabilities=[])
    await hub.add_model("big-sees", weight=1, max_context_tokens=128_000)
    key = await hub.new_key()
    hub.fake.script("small", ContextOverflow(), ContextOverflow())  # the second: after max_tokens was shrunk
    image = [{"type": "image_url", "image_url": {"url": data_uri(png(8, 8), "image/png")}}]
    body = await hub.chat_ok(key, [{"role": "user", "content": image}], model_hint="small")
    assert body["negotiated_model"] == "big-sees"
    assert [r["model"] for r in hub.fake.requests] == ["small", "small", "big-sees"]


# ---- estimates -------------------------------------------------------------------------------------------


async def test_the_estimate_counts_image_tokens_per_provider(hub: Hub, claude: FakeAnthropic) -> None:
    await _anthropic_provider(hub, claude, "claude-test")
    await hub.add_provider()
    await hub.add_model("gpt-test", input_per_1k=1.0, output_per_1k=0.0, max_output_tokens=1)
    text = "x" * 400  # 100 tokens
    picture = data_uri(png(1024, 1024), "image/png")

    async def simulate(detail: str, hint: str) -> dict[str, Any]:
        part = {"type": "image_url", "image_url": {"url": picture, "detail": detail}}
        messages = [{"role": "user", "content": [{"type": "text", "text": text}, part]}]
        body = {"request": {"messages": messages, "model_hint": hint}, "policy": {"max_budget_usd": 100}}
        return await hub.admin("POST", "/routing/simulate", body, expect=200)

    high = await simulate("high", "gpt-test")
    # OpenAI: 1024x1024 -> 768x768, 4 tiles: 85 + 4 * 170 = 765; Anthropic: 1024 * 1024 / 750 -> 1399.
    assert high["estimated_input_tokens"] == 100 + 1399  # the dearest count: what it costs wherever it lands
    assert high["decision"]["model_id"] == "gpt-test"
    assert high["decision"]["estimated_cost_usd"] == pytest.approx((100 + 765) / 1000)  # OpenAI's own count
    low = await simulate("low", "gpt-test")
    assert low["decision"]["estimated_cost_usd"] == pytest.approx((100 + 85) / 1000)
    claude_side = await simulate("high", "claude-test")
    assert claude_side["decision"]["estimated_cost_usd"] == pytest.approx(
        (100 + 1399) / 1000 * 0.003 + 512 * 0.015 / 1000
    )


# ---- caps and bad input ----------------------------------------------------------------------------------


@pytest.fixture
async def capped(make_hub: Callable[..., Any]) -> tuple[Hub, str]:
    hub = await make_hub(max_content_chars=5000, max_body_bytes=20_000)
    await hub.add_provider()
    await hub.add_model("gpt-test")
    return hub, await hub.new_key()


async def test_content_caps_count_decoded_bytes(capped: tuple[Hub, str]) -> None:
    hub, key = capped

    def image(size: int) -> list[dict[str, Any]]:
        picture = png(4, 4, payload=os.urandom(size))
        return [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(picture, "image/png")}}]}
        ]

    # 4 800 bytes decoded are 6 400 characters of base64: within the 5 000 cap, which counts decoded bytes
    assert (await hub.chat_ok(key, image(4800 - 57)))["negotiated_model"] == "gpt-test"
    error = await hub.chat_refused(key, 400, "invalid_request", image(6000))
    assert error["field"] == "messages.0.content" and "decoded media bytes" in error["message"]
    status, body, _ = await hub.chat(key, image(16_000))  # over the body cap before anything is decoded
    assert status == 413, body
    assert len(hub.fake.requests) == 1


BAD_PARTS = [
    ("not base64", {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@@"}}, "content.0.image_url"),
    (
        "not an image",
        {"type": "image_url", "image_url": {"url": data_uri(b"hello", "image/png")}},
        "content.0.image_url",
    ),
    ("ftp url", {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, "content.0.image_url"),
    (
        "bad detail",
        {"type": "image_url", "image_url": {"url": "https://e.com/a.png", "detail": "max"}},
        "content.0.image_url",
    ),
    ("not a data uri", {"type": "image_url", "image_url": {"url": "data:image/png,abc"}}, "content.0.image_url.url"),
    ("file id", {"type": "file", "file": {"file_id": "file-abc"}}, "content.0.file"),
    ("not a pdf", {"type": "file", "file": {"file_data": data_uri(b"plain", "application/pdf")}}, "content.0.file"),
    ("word file", {"type": "file", "file": {"file_data": data_uri(b"PK", "application/msword")}}, "content.0.file"),
    ("flac", {"type": "input_audio", "input_audio": {"data": b64(b"fLaC"), "format": "flac"}}, "content.0.input_audio"),
    ("video", {"type": "video_url", "video_url": {"url": "https://e.com/v.mp4"}}, "content.0"),
]


@pytest.mark.parametrize(("case", "part", "field"), BAD_PARTS, ids=[c[0] for c in BAD_PARTS])
async def test_bad_media_parts_are_400_naming_the_field(
    ready_hub: tuple[Hub, str], case: str, part: dict[str, Any], field: str
) -> None:
    hub, key = ready_hub
    error = await hub.chat_refused(key, 400, "invalid_request", [{"role": "user", "content": [part]}])
    assert error["field"] == f"request.messages.0.{field}", error
    assert hub.fake.requests == []


async def test_media_outside_user_turns_is_refused(hub: Hub, claude: FakeAnthropic) -> None:
    await _anthropic_provider(hub, claude, "claude-test")
    key = await hub.new_key()
    picture = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    status, body, _ = await hub.chat(
        key, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [picture]}]
    )
    assert status == 400 and body["error"]["field"] == "request.messages.1.content.0"
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [image]}
    status, body, _ = await _messages(hub, key, [result])
    assert status == 400 and "user turns only" in body["error"]["message"]
    other = {"type": "image", "source": {"type": "file", "file_id": "file_1"}}
    status, body, _ = await _messages(hub, key, [other])
    assert status == 400 and "source type 'file' is not supported" in body["error"]["message"]
    assert claude.requests == []


# ---- admin: the capabilities field -----------------------------------------------------------------------


async def test_model_capabilities_in_the_admin_api(hub: Hub, claude: FakeAnthropic) -> None:
    await _anthropic_provider(hub, claude)
    await hub.add_provider()
    created = await hub.admin(
        "POST", "/models", {"id": "m", "provider_id": "fake", "capabilities": ["audio", "vision"]}, expect=201
    )
    assert created["model"]["capabilities"] == ["audio", "vision"]
    await hub.add_model("plain")
    listed = {m["id"]: m for m in (await hub.admin("GET", "/models", expect=200))["items"]}
    assert listed["plain"]["capabilities"] is None and listed["m"]["capabilities"] == ["audio", "vision"]
    engine = {m["id"]: m for m in (await hub.admin("GET", "/engine/models", expect=200))["models"]}
    assert engine["plain"]["reads"] == ["documents", "vision"] and engine["m"]["reads"] == ["audio", "vision"]

    patched = await hub.admin("PATCH", "/models/m", {"capabilities": []}, expect=200)
    assert patched["model"]["capabilities"] == []
    back = await hub.admin("PATCH", "/models/m", {"capabilities_default": True}, expect=200)
    assert back["model"]["capabilities"] is None
    both = await hub.admin("PATCH", "/models/m", {"capabilities": [], "capabilities_default": True}, expect=400)
    assert both["error"]["field"] == "capabilities"

    deaf = {"id": "c", "provider_id": "claude", "capabilities": ["audio"]}
    refused = await hub.admin("POST", "/models", deaf, expect=400)
    assert refused["error"]["field"] == "capabilities" and "cannot carry audio" in refused["error"]["message"]
    await hub.admin("POST", "/models", {"id": "s", "provider_id": "fake", "capabilities": ["smell"]}, expect=400)
    await hub.admin("PATCH", "/models/m", {"capabilities": ["documents"]}, expect=200)
    config = hub.services.config
    exported, _ = await config.call(export_config, config)  # `tokenhub config export`: accepted back as is
    models = {m["id"]: m for m in exported["models"]}
    assert models["m"]["capabilities"] == ["documents"] and "capabilities" not in models["plain"]
    assert ModelIn.model_validate(models["m"]).capabilities == ["documents"]


# ---- headers and token maths (pipeline/media.py) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (png(640, 480), ("image/png", 640, 480)),
        (gif(17, 300), ("image/gif", 17, 300)),
        (jpeg(1920, 1080), ("image/jpeg", 1920, 1080)),
        (webp(4000, 3000, b"VP8X"), ("image/webp", 4000, 3000)),
        (webp(1234, 567, b"VP8L"), ("image/webp", 1234, 567)),
        (webp(800, 600, b"VP8 "), ("image/webp", 800, 600)),
        (b"%PDF-1.4", None),
        (b"\xff\xd8\x00\x00", None),  # a JPEG start without segments
    ],
)
def test_image_size_from_the_header(raw: bytes, expected: tuple[str, int, int] | None) -> None:
    assert image_size(raw) == expected


@pytest.mark.parametrize(
    ("width", "height", "detail", "openai_tokens", "anthropic_tokens"),
    [
        (1024, 1024, "high", 765, 1399),  # OpenAI's own example: 768 x 768, 4 tiles
        (2048, 4096, "auto", 1105, 1600),  # OpenAI: 1024x2048 -> 768x1536, 6 tiles; Anthropic: 784x1568, capped
        (200, 200, "", 255, 54),  # one tile; Anthropic's 200 px example: about 54
        (4000, 3000, "low", 85, 1600),  # low detail is flat; Anthropic caps at about 1600
        (0, 0, "", 1445, 1600),  # a URL: the most high detail and Anthropic can cost
    ],
)
def test_image_tokens_as_each_provider_documents(
    width: int, height: int, detail: str, openai_tokens: int, anthropic_tokens: int
) -> None:
    part = MediaPart("image", width=width, height=height, detail=detail)
    assert (media_tokens(part, "openai"), media_tokens(part, "anthropic")) == (openai_tokens, anthropic_tokens)


def test_pdf_pages_and_wav_seconds_are_counted() -> None:
    document = document_part("f", data=b64(pdf(3)), media_type="application/pdf")
    assert (document.pages, document.size, media_tokens(document, "openai")) == (3, len(pdf(3)), 9000)
    by_url = document_part("f", url="https://example.com/a.pdf")
    assert media_tokens(by_url, "anthropic") == 4 * 3000
    sound = audio_part("f", data=b64(wav(3)), audio_format="wav")
    assert (sound.seconds, media_tokens(sound, "openai")) == (3.0, 30)
    assert audio_part("f", data=b64(b"\x00" * 32_000), audio_format="mp3").seconds == 2.0  # 128 kbit/s assumed


async def test_a_directive_beside_an_image_is_applied_and_stripped(hub: Hub) -> None:
    await hub.add_provider()
    await hub.add_model("cheap-sees", weight=1, input_per_1k=0.0001, output_per_1k=0.0001)
    await hub.add_model("strong-sees", weight=9, input_per_1k=0.01, output_per_1k=0.01)
    key = await hub.new_key()
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    content = [{"type": "text", "text": "@@tokenhub mode=cheap\nwhat is it?"}, image]
    body = await hub.chat_ok(key, [{"role": "user", "content": content}])
    assert body["negotiated_model"] == "cheap-sees" and "@@tokenhub mode=cheap" in body["routing_reason"]
    assert _sent_content(hub.fake.requests) == [{"type": "text", "text": "what is it?"}, image]


def test_a_jpeg_whose_header_is_past_the_first_bytes_is_still_measured() -> None:
    metadata = b"\xff\xe1" + struct.pack(">H", 65_000) + b"\x00" * 64_998  # a big EXIF segment, four times
    raw = b"\xff\xd8" + metadata * 4 + jpeg(640, 480)[2:]
    part = image_part("f", data=b64(raw), media_type="image/jpeg")
    assert (part.width, part.height, part.size) == (640, 480, len(raw))


@pytest.mark.parametrize("data", ["QUJD=ERG", "QUJ", "QUJD\n", "QUJDé===", ""])
def test_bad_base64_is_refused(data: str) -> None:
    with pytest.raises(InvalidRequest, match="not valid base64"):
        image_part("f", data=data, media_type="image/png")
