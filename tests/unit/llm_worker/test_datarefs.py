"""Dataref resolution: each dataref part becomes the object's text or image, fetched in the
request's tenant, before the chat service calls any deployment."""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.llm import ImagePart, TextPart, UserMessage
from llm_worker.chat.service import ChatJob, ChatService, LlmMetrics
from llm_worker.datarefs.delivery import image_delivery, resolve_job
from llm_worker.datarefs.resolver import StorageResolver
from llm_worker.datarefs.settings import DataRefSettings
from llm_worker.providers.mock import MockChatModel
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.config import RoutingConfig
from llm_worker.routing.table import DirectTables, RoutingTable, build_table
from tests.unit.llm_worker.fake_object_storage import FakeObjectStorage
from tests.unit.llm_worker.recording_replies import RecordingReplies


def recording_replies() -> Any:
    """A `RecordingReplies`, standing in for the job's `ChatReplies`."""
    return RecordingReplies()


PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)


def dataref(key: str, as_: str = "auto", backend: str | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"key": key}
    if backend is not None:
        ref["backend"] = backend
    return {"type": "dataref", "dataref": ref, "as": as_}


def chat(*parts: dict[str, Any], model: str = "mock/echo") -> ChatRequest:
    return ChatRequest.model_validate(
        {
            "model": model,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Summarise:"}, *parts]},
            ],
        }
    )


def user_parts(request: ChatRequest) -> list[Any]:
    message = request.messages[-1]
    assert isinstance(message, UserMessage)
    assert isinstance(message.content, list)
    return list(message.content)


async def resolve(
    storage: FakeObjectStorage,
    request: ChatRequest,
    *,
    tenant: str | None = "acme",
    images: str = "url",
    within: float = math.inf,
    **settings: Any,
) -> list[Any]:
    resolver = StorageResolver(storage, DataRefSettings(request_topic="s.requests", **settings))
    resolved = await resolver.resolve(request, tenant=tenant, images=images, within=within)  # type: ignore[arg-type]
    assert resolved.datarefs() == []
    return user_parts(resolved)


async def failure(
    storage: FakeObjectStorage, request: ChatRequest, **options: Any
) -> FerrymanError:
    with pytest.raises(FerrymanError) as caught:
        await resolve(storage, request, **options)
    return caught.value


# --- text ----------------------------------------------------------------------------------


async def test_a_text_object_becomes_a_text_part_under_a_line_naming_it() -> None:
    storage = FakeObjectStorage()
    storage.add("notes/today.txt", "Buy milk. Café at 10.".encode(), "text/plain")

    parts = await resolve(storage, chat(dataref("notes/today.txt")))

    assert parts == [
        TextPart(type="text", text="Summarise:"),
        TextPart(type="text", text="[object notes/today.txt]\nBuy milk. Café at 10."),
    ]
    assert storage.operations() == ["head", "read"]  # no pipeline for text already


async def test_text_is_decoded_in_its_declared_charset() -> None:
    storage = FakeObjectStorage()
    storage.add("old.md", "# Déjà vu".encode("latin-1"), "text/markdown; charset=ISO-8859-1")

    [_, part] = await resolve(storage, chat(dataref("old.md")))

    assert part.text == "[object old.md]\n# Déjà vu"


async def test_text_that_does_not_decode_goes_through_the_text_pipeline() -> None:
    storage = FakeObjectStorage(extracted={"legacy.txt": "Grüße"})
    storage.add("legacy.txt", "Grüße".encode("utf-16-le"), "text/plain")

    [_, part] = await resolve(storage, chat(dataref("legacy.txt")))

    assert part.text == "[object legacy.txt]\nGrüße"
    assert storage.operations() == ["head", "read", "process", "read"]


async def test_a_pdf_is_read_from_the_text_pipelines_extract_text_output() -> None:
    storage = FakeObjectStorage(extracted={"reports/q3.pdf": "Revenue grew 12%."})
    storage.add("reports/q3.pdf", b"%PDF-1.4 ...", "application/pdf")

    [_, part] = await resolve(storage, chat(dataref("reports/q3.pdf", "text")))

    assert part == TextPart(type="text", text="[object reports/q3.pdf]\nRevenue grew 12%.")
    assert storage.calls[-1] == ("read", ".derived/reports/q3.pdf/text.txt", "acme")


async def test_html_goes_through_the_pipeline_rather_than_as_markup() -> None:
    storage = FakeObjectStorage(extracted={"page.html": "Hello"})
    storage.add("page.html", b"<p>Hello</p>", "text/html; charset=utf-8")

    [_, part] = await resolve(storage, chat(dataref("page.html")))

    assert part.text == "[object page.html]\nHello"


async def test_a_pipeline_without_text_output_is_a_clear_invalid_request() -> None:
    storage = FakeObjectStorage()  # extracts nothing
    storage.add("archive.zip", b"PK\x03\x04", "application/zip")

    error = await failure(storage, chat(dataref("archive.zip")))

    assert error.code is ErrorCode.INVALID_REQUEST
    assert not error.retryable
    assert "archive.zip" in error.message
    assert "application/zip" in error.message


async def test_long_text_is_cut_at_the_limit_and_says_so() -> None:
    storage = FakeObjectStorage()
    storage.add("big.txt", ("é" * 150 + "z" * 10_000).encode(), "text/plain")

    [_, part] = await resolve(storage, chat(dataref("big.txt")), text_max_chars=200)

    assert part.text == (
        "[object big.txt]\n"
        + "é" * 150
        + "z" * 50
        + "\n[truncated: only the first 200 characters are shown]"
    )
    assert storage.read_limits == [(200 + 1) * 4]  # never the whole object


async def test_a_read_cut_inside_a_character_still_decodes() -> None:
    storage = FakeObjectStorage()
    storage.add("wide.txt", ("€" * 1000).encode(), "text/plain")  # 3 bytes each

    [_, part] = await resolve(storage, chat(dataref("wide.txt")), text_max_chars=100)

    # 404 bytes read: 134 whole characters and two bytes of the next, dropped; then cut.
    assert storage.read_limits == [404]
    assert part.text == (
        "[object wide.txt]\n" + "€" * 100 + "\n[truncated: only the first 100 characters are shown]"
    )


# --- images --------------------------------------------------------------------------------


async def test_an_image_becomes_a_presigned_url_for_providers_that_fetch_urls() -> None:
    storage = FakeObjectStorage(signing={"s3"})
    storage.add("cat.png", PNG, "image/png", backend="s3")

    [_, part] = await resolve(
        storage, chat(dataref("cat.png", backend="s3")), image_url_expires_in=300
    )

    assert part == ImagePart.model_validate(
        {"type": "image_url", "image_url": {"url": "https://signed.example/cat.png?expires=300"}}
    )
    assert "read" not in storage.operations()


async def test_an_image_url_outlives_the_requests_deadline() -> None:
    # A tool loop sends the same image on every turn until the request's deadline.
    storage = FakeObjectStorage(signing={"s3"})
    storage.add("cat.png", PNG, "image/png", backend="s3")
    request = chat(dataref("cat.png", backend="s3"))

    [_, soon] = await resolve(storage, request, image_url_expires_in=300, within=100.0)
    [_, late] = await resolve(storage, request, image_url_expires_in=300, within=1800.0)

    assert soon.image_url.url.endswith("?expires=300")
    assert late.image_url.url.endswith("?expires=1860")


async def test_an_image_is_sent_inline_when_its_backend_signs_no_urls() -> None:
    storage = FakeObjectStorage()  # the local backend signs nothing
    storage.add("cat.png", PNG, "image/png")

    [_, part] = await resolve(storage, chat(dataref("cat.png")), images="url")

    assert part.image_url.url == "data:image/png;base64," + base64.b64encode(PNG).decode()


async def test_an_image_is_sent_inline_for_providers_that_need_the_bytes() -> None:
    storage = FakeObjectStorage(signing={"s3"})
    storage.add("cat.png", PNG, "image/png", backend="s3")

    [_, part] = await resolve(storage, chat(dataref("cat.png", backend="s3")), images="inline")

    assert part.image_url.url == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert "presign" not in storage.operations()


async def test_images_can_be_forced_inline_by_configuration() -> None:
    storage = FakeObjectStorage(signing={"s3"})
    storage.add("cat.png", PNG, "image/png", backend="s3")

    [_, part] = await resolve(
        storage, chat(dataref("cat.png", backend="s3")), images="url", image_delivery="inline"
    )

    assert part.image_url.url.startswith("data:image/png;base64,")
    assert "presign" not in storage.operations()


async def test_an_image_over_the_inline_limit_is_too_large_and_not_read() -> None:
    storage = FakeObjectStorage()
    storage.add("huge.png", PNG + bytes(2048), "image/png")

    error = await failure(storage, chat(dataref("huge.png")), images="inline", image_max_bytes=1024)

    assert error.code is ErrorCode.TOO_LARGE
    assert not error.retryable
    assert "read" not in storage.operations()


async def test_an_image_type_models_do_not_take_is_refused() -> None:
    storage = FakeObjectStorage()
    storage.add("scan.tiff", b"II*\x00", "image/tiff")

    error = await failure(storage, chat(dataref("scan.tiff")))

    assert error.code is ErrorCode.INVALID_REQUEST
    assert "image/tiff" in error.message
    assert "image/png" in error.message


async def test_asking_for_a_document_as_an_image_is_refused() -> None:
    storage = FakeObjectStorage()
    storage.add("q3.pdf", b"%PDF-1.4", "application/pdf")

    error = await failure(storage, chat(dataref("q3.pdf", "image")))

    assert error.code is ErrorCode.INVALID_REQUEST
    assert "application/pdf" in error.message


async def test_an_image_asked_as_text_goes_through_the_pipeline() -> None:
    storage = FakeObjectStorage(extracted={"sign.png": "STOP"})
    storage.add("sign.png", PNG, "image/png")

    [_, part] = await resolve(storage, chat(dataref("sign.png", "text")))

    assert part.text == "[object sign.png]\nSTOP"


# --- tenancy, failures, deadlines -------------------------------------------------------------


async def test_objects_are_looked_up_in_the_requests_tenant_only() -> None:
    storage = FakeObjectStorage()
    storage.add("secret.txt", b"globex plans", "text/plain", tenant="globex")

    error = await failure(storage, chat(dataref("secret.txt")), tenant="acme")

    assert error.code is ErrorCode.NOT_FOUND
    assert not error.retryable
    assert storage.calls == [("head", "secret.txt", "acme")]


async def test_storage_failures_keep_their_code_and_retryability() -> None:
    storage = FakeObjectStorage(
        failures={"read": FerrymanError(ErrorCode.UNAVAILABLE, "disk is busy", retryable=True)}
    )
    storage.add("a.txt", b"hi", "text/plain")

    error = await failure(storage, chat(dataref("a.txt")))

    assert (error.code, error.retryable, error.message) == (
        ErrorCode.UNAVAILABLE,
        True,
        "disk is busy",
    )


async def test_one_failing_reference_fails_the_request_with_its_own_error() -> None:
    storage = FakeObjectStorage()
    storage.add("a.txt", b"hi", "text/plain")

    error = await failure(storage, chat(dataref("a.txt"), dataref("gone.txt")))

    assert error.code is ErrorCode.NOT_FOUND
    assert "gone.txt" in error.message


async def test_the_same_reference_twice_is_fetched_once() -> None:
    storage = FakeObjectStorage()
    storage.add("a.txt", b"hi", "text/plain")
    storage.add("b.txt", b"ho", "text/plain")

    parts = await resolve(storage, chat(dataref("a.txt"), dataref("b.txt"), dataref("a.txt")))

    assert [p.text for p in parts[1:]] == [
        "[object a.txt]\nhi",
        "[object b.txt]\nho",
        "[object a.txt]\nhi",
    ]
    assert sorted(storage.operations()) == ["head", "head", "read", "read"]


async def test_too_many_references_are_refused_before_any_fetch() -> None:
    storage = FakeObjectStorage()

    error = await failure(storage, chat(*(dataref(f"{i}.txt") for i in range(3))), max_refs=2)

    assert error.code is ErrorCode.INVALID_REQUEST
    assert "at most 2" in error.message
    assert storage.calls == []


async def test_the_requests_deadline_bounds_resolution() -> None:
    storage = FakeObjectStorage(hang=asyncio.Event())  # never answers
    storage.add("a.txt", b"hi", "text/plain")

    error = await failure(storage, chat(dataref("a.txt")), within=0.05)

    assert error.code is ErrorCode.TIMEOUT
    assert error.retryable
    assert "deadline" in error.message


async def test_a_request_without_datarefs_is_returned_as_it_is() -> None:
    storage = FakeObjectStorage()
    request = chat({"type": "text", "text": "plain"})
    resolver = StorageResolver(storage, DataRefSettings())

    assert await resolver.resolve(request, tenant="acme", images="url", within=0) is request
    assert storage.calls == []


# --- per provider, and in the chat service ----------------------------------------------------

ROUTING = """
deployments:
  gpt: {provider: openai, model: gpt-4o}
  claude: {provider: anthropic, model: claude-sonnet}
  gem: {provider: gemini, model: gemini-2.5-flash}
routes:
  fetchers: {deployments: [gpt, claude]}
  with-gemini-fallback: {deployments: [gpt], fallbacks: [cheap]}
  cheap: {deployments: [gem]}
  degrading: {deployments: [claude], degraded: cheap}
"""


class NamedClient(MockChatModel):
    def __init__(self, provider: str) -> None:
        super().__init__()
        self.provider = provider  # type: ignore[misc]


def routing_table() -> RoutingTable:
    providers = {name: NamedClient(name) for name in ("openai", "anthropic", "gemini")}
    resolver = ModelResolver(providers, {})
    return build_table(RoutingConfig.parse(ROUTING.encode()), resolver, lambda _d: None)


@pytest.mark.parametrize(
    ("model", "delivery"),
    [
        ("fetchers", "url"),
        ("with-gemini-fallback", "inline"),  # a fallback may land on Gemini
        ("degrading", "inline"),
        ("cheap", "inline"),
    ],
)
def test_images_go_as_urls_only_when_every_reachable_provider_fetches_them(
    model: str, delivery: str
) -> None:
    assert image_delivery(routing_table(), model) == delivery


def test_direct_requests_choose_by_their_provider() -> None:
    providers = {name: NamedClient(name) for name in ("openai", "gemini")}
    tables = DirectTables(ModelResolver(providers, {}))

    assert image_delivery(tables.get("openai/gpt-4o"), "openai/gpt-4o") == "url"
    assert image_delivery(tables.get("gemini/flash"), "gemini/flash") == "inline"


async def test_a_job_with_datarefs_is_refused_when_resolution_is_off() -> None:
    job = ChatJob(request=chat(dataref("a.txt")), replies=recording_replies())

    with pytest.raises(FerrymanError) as caught:
        await resolve_job(None, job, routing_table(), math.inf)

    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert not caught.value.retryable
    assert "LLM_WORKER_STORAGE__REQUEST_TOPIC" in caught.value.message


async def test_a_resolved_job_keeps_the_request_as_sent() -> None:
    storage = FakeObjectStorage()
    storage.add("a.txt", b"hi", "text/plain")
    request = chat(dataref("a.txt"), model="fetchers")
    resolver = StorageResolver(storage, DataRefSettings())

    job = await resolve_job(
        resolver, ChatJob(request=request, replies=recording_replies(), tenant="acme"),
        routing_table(), math.inf,
    )  # fmt: skip

    assert job.unresolved is request
    assert user_parts(job.request)[1].text == "[object a.txt]\nhi"


def service(storage: FakeObjectStorage | None) -> ChatService:
    resolver = StorageResolver(storage, DataRefSettings()) if storage is not None else None
    return ChatService(
        ModelResolver({"mock": MockChatModel()}, {}),
        LlmMetrics(CollectorRegistry()),
        datarefs=resolver,
    )


async def test_the_model_is_given_the_objects_text() -> None:
    storage = FakeObjectStorage()
    storage.add("a.txt", b"the launch is on Friday", "text/plain", tenant="acme")
    replies = recording_replies()

    await service(storage).execute(
        ChatJob(request=chat(dataref("a.txt")), replies=replies, tenant="acme")
    )

    event_type, data = replies.events[-1]
    assert event_type.endswith("completed")
    assert data["content"] == "You said: Summarise: [object a.txt]\nthe launch is on Friday"


async def test_a_missing_object_fails_the_chat_with_not_found() -> None:
    replies = recording_replies()

    await service(FakeObjectStorage()).execute(
        ChatJob(request=chat(dataref("gone.txt")), replies=replies, tenant="acme")
    )

    assert replies.events == [
        (
            "ferryman.llm.chat.failed",
            {
                "error": {
                    "code": "not_found",
                    "message": "no object 'gone.txt'",
                    "retryable": False,
                    "upstream": "storage",
                }
            },
        )
    ]


async def test_without_a_resolver_the_chat_fails_invalid_request() -> None:
    replies = recording_replies()

    await service(None).execute(ChatJob(request=chat(dataref("a.txt")), replies=replies))

    [(event_type, data)] = replies.events
    assert event_type == "ferryman.llm.chat.failed"
    assert data["error"]["code"] == "invalid_request"


class RecordingLoop:
    """Stands in for the tool loop: records the job it is given."""

    def __init__(self) -> None:
        self.jobs: list[ChatJob] = []

    async def run(self, job: ChatJob, serve: Any) -> Any:
        self.jobs.append(job)
        raise FerrymanError(ErrorCode.UNAVAILABLE, "recorded", retryable=True)


async def test_a_tool_loop_gets_the_resolved_request_and_the_request_as_sent() -> None:
    storage = FakeObjectStorage()
    storage.add("a.txt", b"hi", "text/plain")
    loop = RecordingLoop()
    sent = chat(dataref("a.txt")).model_dump(by_alias=True, exclude_none=True)
    request = ChatRequest.model_validate({**sent, "tools": [{"type": "mcp", "server": "files"}]})
    chat_service = ChatService(
        ModelResolver({"mock": MockChatModel()}, {}),
        LlmMetrics(CollectorRegistry()),
        tool_loop=loop,  # type: ignore[arg-type]
        datarefs=StorageResolver(storage, DataRefSettings()),
    )

    await chat_service.execute(ChatJob(request=request, replies=recording_replies(), tenant="acme"))

    [job] = loop.jobs
    assert job.unresolved is request  # what the loop's journal digest is taken of
    assert user_parts(job.request)[1].text == "[object a.txt]\nhi"
