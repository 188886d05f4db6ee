"""Datarefs end to end: a chat message names stored objects; the LLM worker (its own process)
asks a real storage_worker (in this process) for them through the real Kafka, in the chat's
tenant, and the provider's fake server receives their text, or the image as a URL (OpenAI)
or inline data (Gemini)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from ferryman.client import ChatFailedError, FerrymanClient
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.openai_server import FakeOpenAI
from tests.integration.storage_harness import StorageHarness, running_storage_worker
from tests.storage.documents import image_bytes, pdf_with_text
from tests.storage.s3_store import MOTO_ACCESS_KEY, MOTO_SECRET_KEY, moto_endpoint, s3_bucket

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def dataref(key: str, as_: str = "auto") -> dict[str, Any]:
    return {"type": "dataref", "dataref": {"key": key}, "as": as_}


def chat(model: str, *parts: dict[str, Any]) -> dict[str, Any]:
    content = [{"type": "text", "text": "Summarise:"}, *parts]
    return {"model": model, "stream": False, "messages": [{"role": "user", "content": content}]}


async def start_llm_worker(
    worker_factory: Any, harness: StorageHarness, unique: str, **env: str
) -> None:
    worker = worker_factory(
        LLM_WORKER_STORAGE__REQUEST_TOPIC=harness.settings.request_topic,
        LLM_WORKER_STORAGE__REPLY_TOPIC=f"t-{unique}.llm-storage.results",
        LLM_WORKER_STORAGE__TIMEOUT="20",
        **env,
    )
    worker.start()
    await worker.wait_ready()


async def failure(client: FerrymanClient, request: dict[str, Any], tenant: str) -> Any:
    with pytest.raises(ChatFailedError) as caught:
        await client.chat(request, tenant=tenant, timeout=60)
    return caught.value.error


@pytest.fixture
async def storage(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> AsyncIterator[StorageHarness]:
    async with running_storage_worker(kafka_bootstrap, unique, tmp_path) as harness:
        yield harness


async def test_text_objects_reach_the_provider_and_tenancy_holds(
    storage: StorageHarness,
    worker_factory: Any,
    client: FerrymanClient,
    fake_openai: FakeOpenAI,
    unique: str,
) -> None:
    await storage.put("notes/today.txt", b"The launch is on Friday.")
    await storage.put("docs/guide.md", b"# Guide\n\nPress **start**, then wait.")
    await storage.put("plans.txt", b"globex's secret plans", tenant="globex")
    await start_llm_worker(
        worker_factory, storage, unique, OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="sk-test",
    )  # fmt: skip

    completed = await client.chat(
        chat("openai/gpt-test", dataref("notes/today.txt"), dataref("docs/guide.md", "text")),
        tenant="acme",
        timeout=60,
    )
    missing = await failure(client, chat("openai/gpt-test", dataref("nope.txt")), "acme")
    foreign = await failure(client, chat("openai/gpt-test", dataref("plans.txt")), "acme")
    escaping = await failure(
        client, chat("openai/gpt-test", dataref("../globex/plans.txt")), "acme"
    )

    assert completed.content.startswith("Echo:")
    [sent] = fake_openai.chat_requests()  # the failed chats never reached the provider
    assert sent.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Summarise:"},
                {"type": "text", "text": "[object notes/today.txt]\nThe launch is on Friday."},
                {
                    "type": "text",
                    "text": "[object docs/guide.md]\n# Guide\n\nPress **start**, then wait.",
                },
            ],
        }
    ]
    assert (missing.code, missing.retryable) == ("not_found", False)
    assert "nope.txt" in missing.message
    assert (foreign.code, foreign.retryable) == ("not_found", False)  # acme has no such object
    assert "globex" not in foreign.message
    assert (escaping.code, escaping.retryable) == ("invalid_request", False)


async def test_images_go_to_openai_as_presigned_urls_and_large_text_by_url(
    kafka_bootstrap: str,
    worker_factory: Any,
    client: FerrymanClient,
    fake_openai: FakeOpenAI,
    unique: str,
    tmp_path: Path,
) -> None:
    png = image_bytes(8, 8)
    long_text = ("All work and no play. " * 100).encode()  # over the storage inline limit
    async with s3_bucket() as bucket:
        policy = {
            "backends": {
                "s3": {
                    "type": "s3",
                    "bucket": bucket,
                    "endpoint_url": moto_endpoint(),
                    "access_key_id": "env:TEST_S3_KEY",
                    "secret_access_key": "env:TEST_S3_SECRET",
                }
            },
            "tenants": {"acme": {"spaces": {"s3": "tenants/acme/"}}},
        }
        environ = {"TEST_S3_KEY": MOTO_ACCESS_KEY, "TEST_S3_SECRET": MOTO_SECRET_KEY}
        async with running_storage_worker(
            kafka_bootstrap, unique, tmp_path, policy=policy, environ=environ, inline_limit=1024
        ) as storage:
            await storage.put("cat.png", png)
            upload = await storage.call("presign", {"key": "long.txt", "method": "PUT"})
            async with httpx2.AsyncClient() as http:
                put = await http.put(
                    upload.data["url"], content=long_text, headers=upload.data.get("headers")
                )
                assert put.status_code == 200
                await start_llm_worker(
                    worker_factory, storage, unique, OPENAI_BASE_URL=fake_openai.base_url,
                    OPENAI_API_KEY="sk-test",
                )  # fmt: skip

                await client.chat(
                    chat("openai/gpt-test", dataref("cat.png"), dataref("long.txt")),
                    tenant="acme",
                    timeout=60,
                )

                [sent] = fake_openai.chat_requests()
                [_, image, text] = sent.body["messages"][0]["content"]
                assert image["type"] == "image_url"
                url = image["image_url"]["url"]
                assert url.startswith(moto_endpoint())
                assert "tenants/acme/cat.png" in url
                assert (await http.get(url)).content == png  # the provider can fetch it
    assert text == {"type": "text", "text": "[object long.txt]\n" + long_text.decode()}


async def test_images_go_to_gemini_inline(
    storage: StorageHarness, worker_factory: Any, client: FerrymanClient, unique: str
) -> None:
    png = image_bytes(8, 8)
    await storage.put("cat.png", png)
    fake = FakeGemini()
    await fake.start()
    try:
        await start_llm_worker(
            worker_factory, storage, unique, GEMINI_API_KEY="g-test",
            LLM_WORKER_GEMINI__BASE_URL=fake.base_url,
        )  # fmt: skip

        await client.chat(chat("gemini/gemini-text", dataref("cat.png")), tenant="acme", timeout=60)

        [sent] = fake.generate_requests()
    finally:
        await fake.stop()
    [content] = sent.body["contents"]
    [text, image] = content["parts"]
    assert text == {"text": "Summarise:"}
    inline = image["inlineData"]  # the SDK's wire form: URL-safe base64
    assert base64.urlsafe_b64decode(inline["data"]) == png
    assert inline.get("mimeType", inline.get("mime_type")) == "image/png"


async def test_a_pdf_reaches_the_provider_as_its_extracted_text(
    storage: StorageHarness,
    worker_factory: Any,
    client: FerrymanClient,
    fake_openai: FakeOpenAI,
    unique: str,
) -> None:
    await storage.put("reports/q3.pdf", pdf_with_text(["Revenue grew 12% in Q3."]))
    await start_llm_worker(
        worker_factory, storage, unique, OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="sk-test",
    )  # fmt: skip

    await client.chat(chat("openai/gpt-test", dataref("reports/q3.pdf")), tenant="acme", timeout=90)

    [sent] = fake_openai.chat_requests()
    [_, part] = sent.body["messages"][0]["content"]
    assert part["type"] == "text"
    assert part["text"].startswith("[object reports/q3.pdf]\n")
    assert "Revenue grew 12% in Q3." in part["text"]
