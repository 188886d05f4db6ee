"""Signed URLs of the local backend end to end: presign requests through the real Kafka,
the bytes over HTTP to and from the worker's own server (`/objects`, next to `/health`),
the object event on the events topic."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from ferryman.publisher import KafkaPublisher
from storage_worker.app import StorageWorker
from storage_worker.settings import StorageWorkerSettings
from tests.integration.storage_harness import StorageHarness
from tests.storage.asgi_server import base_url, listening_socket, serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DATA = b"".join(
    b"line %07d of a report too large to travel through Kafka\n" % n for n in range(60_000)
)


@pytest.fixture
async def served(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> AsyncIterator[tuple[StorageHarness, str]]:
    """A storage_worker run by its own app under uvicorn (the worker started by the app's
    startup, as in production), signing URLs with a key from a reference."""
    sock = listening_socket()
    prefix = f"t-{unique}"
    settings = StorageWorkerSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        request_topic=f"{prefix}.storage.requests",
        default_reply_topic=f"{prefix}.storage.results",
        events_topic=f"{prefix}.storage.events",
        usage_topic=f"{prefix}.usage",
        health_topic=f"{prefix}.health",
        group_id=f"g-{unique}",
        topic_partitions=2,
        instance_id=unique,
        local_root=tmp_path / "storage",
        public_url=base_url(sock),
        url_signing_key=SecretStr("env:TEST_URL_SIGNING_KEY"),
    )
    environ = {"TEST_URL_SIGNING_KEY": secrets.token_urlsafe(48)}
    worker = StorageWorker(settings, registry=CollectorRegistry(), environ=environ)
    publisher = KafkaPublisher(kafka_bootstrap, client_id=f"test-{unique}")
    async with serving(worker.app(), sock, lifespan=True) as url:
        await publisher.start()
        try:
            yield StorageHarness(worker, settings, publisher, kafka_bootstrap), url
        finally:
            await publisher.stop()


async def test_an_object_goes_up_and_down_by_signed_url(
    served: tuple[StorageHarness, str], tmp_path: Path
) -> None:
    harness, url = served
    async with httpx2.AsyncClient(timeout=60) as client:
        # The same server answers /health (the worker joins its group in the background).
        health = await client.get(f"{url}/health")
        assert health.json()["service"] == "storage_worker"

        upload_id = await harness.send(
            "presign",
            {"key": "inbox/report.txt", "method": "PUT", "content_type": "text/plain"},
        )
        upload = await harness.result(upload_id)
        assert upload.type == "ferryman.storage.presign.completed", upload.data
        assert upload.data["url"].startswith(f"{url}/objects?")
        assert upload.data["headers"] == {"Content-Type": "text/plain"}

        forged = upload.data["url"].replace("inbox%2Freport.txt", "inbox%2Fforged.txt")
        refused = await client.put(forged, content=b"forged\n", headers=upload.data["headers"])
        sent = await client.put(upload.data["url"], content=DATA, headers=upload.data["headers"])

        assert refused.status_code == 403
        assert refused.json()["error"]["message"] == "the URL's signature does not match"
        assert sent.status_code == 200, sent.text[:300]
        assert sent.json()["object"]["key"] == "inbox/report.txt"

        download = await harness.call("presign", {"key": "inbox/report.txt", "method": "GET"})
        by_get = await harness.call("get", {"key": "inbox/report.txt", "delivery": "url"})
        got = await client.get(download.data["url"])
        got_again = await client.get(by_get.data["url"])

    assert got.status_code == 200
    assert got.content == DATA
    assert got.headers["content-type"] == "text/plain"
    assert got_again.content == DATA
    assert by_get.data["object"]["checksum"]["value"] == hashlib.sha256(DATA).hexdigest()
    assert (tmp_path / "storage" / "acme" / "inbox" / "report.txt").read_bytes() == DATA
    forged_head = await harness.call("head", {"key": "inbox/forged.txt"})
    assert forged_head.data["error"]["code"] == "not_found"
    [event] = await harness.events(until=1)
    assert event.type == "ferryman.storage.object.created"
    assert (event.data["tenant"], event.data["cause"], event.data["request_id"]) == (
        "acme",
        "put",
        upload_id,
    )
    assert event.data["object"]["key"] == "inbox/report.txt"
    assert event.data["object"]["size"] == len(DATA)
