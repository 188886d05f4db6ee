"""The `/objects` route through a real HTTP server: downloads, uploads, and refusals that
touch nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx2
import pytest
from aiokafka.errors import KafkaTimeoutError  # pyright: ignore[reportMissingTypeStubs]

from ferryman.contracts.storage import ObjectInfo
from storage_worker.backends.local_rules import TMP_DIR
from storage_worker.backends.port import ObjectStore
from storage_worker.events import Cause, ObjectEvents
from storage_worker.local_urls import LocalObjectUrls
from storage_worker.policy import LocalBackend, Policy, TenantRule
from storage_worker.signed_urls import UrlGrant, UrlSigner, signing_for
from storage_worker.stores import Stores
from tests.storage.asgi_server import Finished, base_url, listening_socket, serving
from tests.storage.contract import all_keys, put, read

MIB = 1024 * 1024
NOW = 1_800_000_000.0
LIMIT = 4 * MIB
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class RecordingEvents(ObjectEvents):
    """The object events the route published (or a Kafka failure when `failing`)."""

    def __init__(self) -> None:
        super().__init__(lambda: None, "storage.events", source="/test")
        self.created_events: list[tuple[str, ObjectInfo, Cause, str]] = []
        self.failing = False

    async def created(self, tenant: str, info: ObjectInfo, cause: Cause, request: str) -> None:
        if self.failing:
            raise KafkaTimeoutError()
        self.created_events.append((tenant, info, cause, request))


@dataclass
class Site:
    store: ObjectStore
    signer: UrlSigner
    clock: Clock
    events: RecordingEvents
    client: httpx2.AsyncClient
    app: Finished
    root: Path

    async def presign_put(
        self, key: str, content_type: str | None = "text/plain", *, tenant: str = "acme"
    ) -> str:
        with signing_for(tenant, LIMIT, "req-1"):
            signed = await self.store.presign(key, "PUT", 300, content_type=content_type)
        return signed.url

    async def presign_get(self, key: str) -> str:
        with signing_for("acme", LIMIT, "req-2"):
            return (await self.store.presign(key, "GET", 300)).url

    def signed(
        self,
        key: str,
        *,
        method: Literal["GET", "PUT"] = "GET",
        backend: str = "local",
        tenant: str | None = None,
    ) -> str:
        """A URL signed with the route's key for any grant (what presign would not make)."""
        grant = UrlGrant(method, backend, key, int(NOW) + 60, tenant=tenant)
        return self.signer.url(grant)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    clock = Clock()
    sock = listening_socket()
    signer = UrlSigner(b"s" * 32, base_url(sock), clock=clock)
    policy = Policy(
        backends={"local": LocalBackend(root=tmp_path / "root")},
        tenants={
            "acme": TenantRule(
                spaces={"local": "acme/"},
                max_object_bytes=LIMIT,
                content_types=["text/*", "application/pdf"],
            )
        },
    )
    stores = Stores({}, signer=signer)
    stores.configure(policy)
    events = RecordingEvents()
    app = Finished(LocalObjectUrls(signer, stores.get, policy=lambda: policy, events=events))
    store = await stores.get("local")
    try:
        async with serving(app, sock), httpx2.AsyncClient(timeout=30) as client:
            yield Site(store, signer, clock, events, client, app, tmp_path / "root")
    finally:
        await stores.close()


def pattern(size: int) -> bytes:
    """Text whose every byte tells its position apart from its neighbours'."""
    line = b"".join(b"%07d\n" % n for n in range(size // 8 + 1))
    return line[:size]


async def test_a_download_streams_the_object_with_its_headers(site: Site) -> None:
    data = pattern(3 * MIB + 5)
    stored = await put(site.store, "acme/big.txt", data)

    got = await site.client.get(await site.presign_get("acme/big.txt"))

    assert got.status_code == 200, got.text[:300]
    assert got.content == data
    assert got.headers["content-type"] == "text/plain"
    assert got.headers["content-length"] == str(len(data))
    assert got.headers["etag"] == f'"{stored.etag}"'
    assert got.headers["accept-ranges"] == "bytes"
    # Served as data: never sniffed into a page, never run as one.
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-security-policy"].startswith("sandbox")


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=5-9", 5, 10),
        ("bytes=1048570-1048585", 1048570, 1048586),  # across two chunks of the store
        ("bytes=-4", 2 * MIB - 4, 2 * MIB),
        ("bytes=2097150-", 2 * MIB - 2, 2 * MIB),
        ("bytes=10-99999999", 10, 2 * MIB),
    ],
)
async def test_a_byte_range_is_served(site: Site, header: str, start: int, end: int) -> None:
    data = pattern(2 * MIB)
    await put(site.store, "acme/r.txt", data)

    got = await site.client.get(await site.presign_get("acme/r.txt"), headers={"Range": header})

    assert got.status_code == 206
    assert got.content == data[start:end]
    assert got.headers["content-range"] == f"bytes {start}-{end - 1}/{len(data)}"


async def test_a_range_past_the_end_is_unsatisfiable(site: Site) -> None:
    await put(site.store, "acme/r.txt", b"0123456789")
    url = await site.presign_get("acme/r.txt")

    past = await site.client.get(url, headers={"Range": "bytes=10-"})
    several = await site.client.get(url, headers={"Range": "bytes=0-1,4-5"})

    assert past.status_code == 416
    assert past.headers["content-range"] == "bytes */10"
    assert several.status_code == 200  # several ranges: the whole object
    assert several.content == b"0123456789"


async def test_an_upload_is_stored_and_announced(site: Site) -> None:
    data = pattern(3 * MIB + 7)
    url = await site.presign_put("acme/docs/report.txt")

    sent = await site.client.put(url, content=data, headers={"Content-Type": "text/plain"})

    assert sent.status_code == 200, sent.text[:300]
    body = sent.json()["object"]
    assert (body["key"], body["size"]) == ("docs/report.txt", len(data))
    assert body["checksum"] == {"algorithm": "sha256", "value": hashlib.sha256(data).hexdigest()}
    assert sent.headers["etag"] == f'"{body["etag"]}"'
    assert await read(site.store, "acme/docs/report.txt") == data
    assert (await site.store.head("acme/docs/report.txt")).content_type == "text/plain"
    [(tenant, info, cause, request)] = site.events.created_events
    assert (tenant, info.key, info.size, cause, request) == (
        "acme",
        "docs/report.txt",
        len(data),
        "put",
        "req-1",
    )


async def test_an_upload_checked_against_its_sha256(site: Site) -> None:
    url = await site.presign_put("acme/a.txt")
    right = hashlib.sha256(b"hello\n").hexdigest()

    wrong = await site.client.put(
        url, content=b"hello!\n", headers={"Content-Type": "text/plain", "X-Ferryman-SHA256": right}
    )
    ok = await site.client.put(
        url, content=b"hello\n", headers={"Content-Type": "text/plain", "X-Ferryman-SHA256": right}
    )

    assert wrong.status_code == 412
    assert ok.status_code == 200
    assert await read(site.store, "acme/a.txt") == b"hello\n"


async def test_an_upload_without_a_signed_content_type_is_typed_from_its_bytes(
    site: Site,
) -> None:
    sent = await site.client.put(await site.presign_put("acme/q3", None), content=PDF)

    assert sent.status_code == 200, sent.text
    assert (await site.store.head("acme/q3")).content_type == "application/pdf"


async def test_a_url_signed_outside_a_request_stores_without_an_event(site: Site) -> None:
    signed = await site.store.presign("free/a.txt", "PUT", 60)

    sent = await site.client.put(signed.url, content=b"no tenant\n")

    assert sent.status_code == 200
    assert sent.json() == {
        "key": "free/a.txt",
        "size": 10,
        "sha256": hashlib.sha256(b"no tenant\n").hexdigest(),
    }
    assert site.events.created_events == []


async def test_an_unpublished_event_fails_the_upload_retryably(site: Site) -> None:
    site.events.failing = True

    sent = await site.client.put(
        await site.presign_put("acme/a.txt"), content=b"x\n", headers={"Content-Type": "text/plain"}
    )

    assert sent.status_code == 503
    assert "upload it again" in sent.json()["error"]["message"]


async def put_url(site: Site, url: str, data: bytes, **headers: str) -> httpx2.Response:
    return await site.client.put(
        url, content=data, headers={"Content-Type": "text/plain", **headers}
    )


async def assert_nothing_written(site: Site) -> None:
    assert await all_keys(site.store) == []
    assert site.events.created_events == []
    assert list((site.root / TMP_DIR).iterdir()) == []


def tampered(url: str, old: str, new: str) -> str:
    assert old in url
    return url.replace(old, new)


async def test_a_tampered_upload_url_is_refused(site: Site) -> None:
    url = await site.presign_put("acme/a.txt")

    other_key = await put_url(site, tampered(url, "key=acme%2Fa.txt", "key=acme%2Fb.txt"), b"x")
    bigger = await put_url(site, tampered(url, f"max_bytes={LIMIT}", "max_bytes=99999999"), b"x")

    for refused in (other_key, bigger):
        assert refused.status_code == 403
        assert refused.json()["error"]["message"] == "the URL's signature does not match"
    await assert_nothing_written(site)


async def test_an_expired_url_is_refused(site: Site) -> None:
    await put(site.store, "acme/a.txt", b"kept\n")
    upload = await site.presign_put("acme/a.txt")
    download = await site.presign_get("acme/a.txt")

    site.clock.now = NOW + 301
    put_refused = await put_url(site, upload, b"replaced\n")
    get_refused = await site.client.get(download)

    assert (put_refused.status_code, get_refused.status_code) == (403, 403)
    assert put_refused.json()["error"] == {
        "code": "permission_denied",
        "message": "the URL expired",
    }
    assert await read(site.store, "acme/a.txt") == b"kept\n"


async def test_a_url_is_refused_for_another_method(site: Site) -> None:
    await put(site.store, "acme/a.txt", b"kept\n")
    download = await site.presign_get("acme/a.txt")
    upload = await site.presign_put("acme/b.txt")

    put_on_get = await put_url(site, download, b"replaced\n")
    get_on_put = await site.client.get(upload)
    delete = await site.client.delete(download)

    assert [r.status_code for r in (put_on_get, get_on_put, delete)] == [403, 403, 403]
    assert put_on_get.json()["error"]["message"] == "this URL is for GET, not PUT"
    assert await all_keys(site.store) == ["acme/a.txt"]
    assert await read(site.store, "acme/a.txt") == b"kept\n"


async def test_an_upload_of_another_content_type_is_refused(site: Site) -> None:
    url = await site.presign_put("acme/a.txt", "text/plain")

    html = await put_url(site, url, b"<p>hi</p>", **{"Content-Type": "text/html"})

    assert html.status_code == 403
    assert html.json()["error"]["message"] == "this URL takes Content-Type text/plain"
    await assert_nothing_written(site)


@pytest.mark.parametrize(
    ("key", "content_type", "data", "status", "reason"),
    [
        ("acme/big.txt", "text/plain", b"a" * (LIMIT + 1), 413, "size limit"),
        ("acme/pic", None, PNG, 403, "image/png is not allowed"),
        ("acme/fake.txt", "text/plain", PDF, 400, "the content is application/pdf"),
    ],
)
async def test_an_upload_past_the_tenants_limits_is_refused(
    site: Site, key: str, content_type: str | None, data: bytes, status: int, reason: str
) -> None:
    url = await site.presign_put(key, content_type)
    headers = {"Content-Type": content_type} if content_type else {}

    refused = await site.client.put(url, content=data, headers=headers)

    assert refused.status_code == status
    assert reason in refused.json()["error"]["message"]
    await assert_nothing_written(site)


async def test_an_upload_without_a_length_is_refused(site: Site) -> None:
    async def streamed() -> AsyncIterator[bytes]:
        yield b"chunked "
        yield b"body\n"

    refused = await site.client.put(
        await site.presign_put("acme/a.txt"),
        content=streamed(),
        headers={"Content-Type": "text/plain"},
    )

    assert refused.status_code == 411
    await assert_nothing_written(site)


async def test_an_upload_cut_short_stores_nothing(site: Site) -> None:
    url = urlsplit(await site.presign_put("acme/cut.txt"))
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = (
        f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        "Content-Type: text/plain\r\nContent-Length: 3000000\r\n\r\n"
    )
    writer.write(head.encode() + b"a" * 2_000_000)
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    assert await asyncio.wait_for(site.app.done.get(), timeout=30) == "PUT"
    await assert_nothing_written(site)
    del reader


async def test_an_unknown_backend_or_object_is_not_found(site: Site) -> None:
    missing_backend = await site.client.get(site.signed("acme/a.txt", backend="nowhere"))
    missing_object = await site.client.get(await site.presign_get("acme/none.txt"))

    assert missing_backend.status_code == 404
    assert missing_backend.json()["error"]["code"] == "not_found"
    assert missing_object.status_code == 404


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("globex/a.txt", "outside the tenant's space"),
        ("acme/../globex/a.txt", "has a . or .. segment"),
        ("acme/%2e%2e/a.txt", "percent-encoded"),
        ("acme/e\u0301.txt", "not normalised"),
    ],
)
async def test_a_signed_key_is_checked_again(site: Site, key: str, reason: str) -> None:
    url = site.signed(key, method="PUT", tenant="acme")

    refused = await put_url(site, url, b"x\n")

    assert refused.status_code == 403
    assert reason in refused.json()["error"]["message"]
    await assert_nothing_written(site)
    assert list(site.root.parent.iterdir()) == [site.root]


async def test_a_repeated_parameter_is_refused(site: Site) -> None:
    url = await site.presign_get("acme/a.txt")

    refused = await site.client.get(url + "&key=acme%2Fb.txt")

    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "a parameter of the URL is repeated"
