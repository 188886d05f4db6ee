"""The GCS backend against gcp-storage-emulator (see `tests.storage.gcs_store`): resumable
uploads in chunks with bounded memory, failed and cancelled uploads leaving nothing, V4
signed URLs fetched over HTTP, tags and the checksum kept as hidden metadata, the policy's
service-account reference, and errors in the shared taxonomy without the key."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.gcs import GcsStore
from storage_worker.backends.gcs_errors import GcsErrorMapper
from storage_worker.backends.gcs_open import open_gcs
from storage_worker.backends.gcs_settings import GcsSettings
from storage_worker.policy import GcsBackend, PolicyError, parse_policy
from tests.storage.gcs_store import (
    gcs_bucket,
    gcs_endpoint,
    gcs_settings,
    gcs_store,
    service_account,
)
from tests.storage.stores import drain

MiB = 1024 * 1024


class BodyBroke(Exception):
    """The producer's stream failed midway."""


async def generated(size: int, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`size` bytes in differing `chunk`-sized pieces, produced on demand."""
    for number, start in enumerate(range(0, size, chunk)):
        piece = hashlib.sha256(number.to_bytes(8, "big")).digest() * (chunk // 32)
        yield piece[: min(chunk, size - start)]


async def generated_sha256(size: int) -> str:
    hasher = hashlib.sha256()
    async for piece in generated(size):
        hasher.update(piece)
    return hasher.hexdigest()


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def raw_resource(store: GcsStore, key: str) -> dict[str, Any]:
    """The object resource as the emulator keeps it (bypassing the backend)."""
    url = f"{gcs_endpoint()}/storage/v1/b/{store.bucket}/o/{quote(key, safe='')}"
    async with aiohttp.ClientSession() as http, http.get(url) as answer:
        assert answer.status == 200
        return json.loads(await answer.text())


async def keys(store: GcsStore) -> list[str]:
    listing = await store.list("", delimiter=None, limit=1000, token=None)
    return [found.key for found in listing.objects]


async def test_a_large_put_is_a_resumable_upload_in_chunks_with_bounded_memory(
    tmp_path: Path,
) -> None:
    size, chunk_size = 12 * MiB, 1 * MiB
    expected = await generated_sha256(size)
    async with gcs_store(tmp_path, chunk_size=chunk_size) as store:
        tracemalloc.start()
        try:
            stored = await store.put(
                "big/blob.bin",
                generated(size),
                content_type="application/octet-stream",
                metadata={"origin": "test"},
                tags={"kind": "big"},
                sha256=expected,
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        head = await store.head("big/blob.bin")
        _, body = await store.get("big/blob.bin")
        hasher, received, pieces = hashlib.sha256(), 0, 0
        async for piece in body:
            hasher.update(piece)
            received += len(piece)
            pieces += 1
        raw = await raw_resource(store, "big/blob.bin")

    # the chunk being sent, the one being read, and the HTTP client's buffers
    bound = 3 * chunk_size + 2 * MiB
    assert peak < bound < size, f"the put peaked at {peak / MiB:.1f} MiB for a 12 MiB body"
    assert stored.size == head.size == received == size
    assert (hasher.hexdigest(), head.sha256, stored.sha256) == (expected, expected, expected)
    assert pieces > 1
    assert (head.metadata, head.tags) == ({"origin": "test"}, {"kind": "big"})
    assert head.version == stored.version == raw["generation"]
    assert raw["metadata"]["ferryman-sha256"] == expected


@pytest.mark.parametrize("fail_after", [0, 3 * MiB], ids=["before-any-chunk", "mid-upload"])
async def test_a_body_failing_during_a_resumable_upload_stores_nothing(
    tmp_path: Path, fail_after: int
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        async for piece in generated(fail_after + 512 * 1024):
            yield piece
        raise BodyBroke("the source went away")

    async with gcs_store(tmp_path, chunk_size=256 * 1024) as store:
        with pytest.raises(BodyBroke):
            await store.put(
                "broken.bin", failing(), content_type=None, metadata={}, tags={}, sha256="0" * 64
            )
        with pytest.raises(FerrymanError) as missing:
            await store.head("broken.bin")
        assert await keys(store) == []
    assert missing.value.code is ErrorCode.NOT_FOUND


async def test_a_cancelled_resumable_upload_stores_nothing(tmp_path: Path) -> None:
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        async for piece in generated(2 * MiB):
            yield piece
        stalled.set()
        await asyncio.Event().wait()
        yield b"never"

    async with gcs_store(tmp_path, chunk_size=512 * 1024) as store:
        task = asyncio.create_task(
            store.put(
                "stalled.bin", stalling(), content_type=None, metadata={}, tags={}, sha256="0" * 64
            )
        )
        async with asyncio.timeout(30):
            await stalled.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await keys(store) == []


async def test_a_resumable_upload_with_the_wrong_sha256_stores_nothing(tmp_path: Path) -> None:
    async with gcs_store(tmp_path, chunk_size=256 * 1024) as store:
        await store.put(
            "kept.bin",
            once(b"before"),
            content_type=None,
            metadata={},
            tags={},
            sha256=sha(b"before"),
        )
        with pytest.raises(FerrymanError) as refused:
            await store.put(
                "kept.bin",
                generated(MiB),
                content_type=None,
                metadata={},
                tags={},
                sha256="0" * 64,
            )
        assert await drain((await store.get("kept.bin"))[1]) == b"before"
        assert await keys(store) == ["kept.bin"]
    assert refused.value.code is ErrorCode.PRECONDITION_FAILED
    assert "nothing was stored" in refused.value.message


async def test_if_absent_holds_for_a_resumable_upload(tmp_path: Path) -> None:
    size = MiB
    async with gcs_store(tmp_path, chunk_size=256 * 1024) as store:
        first = await store.put(
            "once.bin",
            generated(size),
            content_type=None,
            metadata={},
            tags={},
            sha256=await generated_sha256(size),
            if_absent=True,
        )
        with pytest.raises(FerrymanError) as refused:
            await store.put(
                "once.bin",
                generated(size),
                content_type=None,
                metadata={},
                tags={},
                sha256=await generated_sha256(size),
                if_absent=True,
            )
        assert (await store.head("once.bin")).version == first.version
    assert (refused.value.code, refused.value.retryable) == (ErrorCode.CONFLICT, False)


async def test_tags_and_the_checksum_are_hidden_metadata(tmp_path: Path) -> None:
    metadata = {"Author": "Zoë Ünal", "padded": " spaced "}
    async with gcs_store(tmp_path) as store:
        stored = await store.put(
            "doc.txt",
            once(b"hello"),
            content_type="text/plain",
            metadata=metadata,
            tags={"team": "a b+c"},
            sha256=sha(b"hello"),
        )
        updated = await store.update_metadata(
            "doc.txt", metadata=None, tags={"stage": "final"}, content_type=None
        )
        raw = await raw_resource(store, "doc.txt")
        with pytest.raises(FerrymanError) as reserved:
            await store.put(
                "other.txt",
                once(b"x"),
                content_type=None,
                metadata={"ferryman-tag-team": "sneaky"},
                tags={},
                sha256=sha(b"x"),
            )
    assert stored.metadata == updated.metadata == metadata  # names keep their case
    assert (stored.tags, updated.tags) == ({"team": "a b+c"}, {"stage": "final"})
    assert updated.sha256 == sha(b"hello")
    live = {name: value for name, value in raw["metadata"].items() if value is not None}
    assert live == metadata | {"ferryman-sha256": sha(b"hello"), "ferryman-tag-stage": "final"}
    assert reserved.value.code is ErrorCode.INVALID_REQUEST


async def test_a_metadata_update_racing_a_put_never_stamps_the_old_checksum(
    tmp_path: Path,
) -> None:
    async with gcs_store(tmp_path) as store:
        assert isinstance(store, GcsStore)
        await store.put(
            "doc.txt", once(b"v1"), content_type=None, metadata={}, tags={}, sha256=sha(b"v1")
        )
        read_resource = store._resource  # pyright: ignore[reportPrivateUsage]

        async def then_overwritten(key: str, operation: str) -> dict[str, Any]:
            # The update read v1; a put of v2 lands before its patch goes out.
            resource = await read_resource(key, operation)
            await store.put(
                key, once(b"v2"), content_type=None, metadata={}, tags={}, sha256=sha(b"v2")
            )
            return resource

        store._resource = then_overwritten  # type: ignore[method-assign]
        with pytest.raises(FerrymanError) as raced:
            await store.update_metadata(
                "doc.txt", metadata={"stage": "final"}, tags=None, content_type=None
            )
        store._resource = read_resource  # type: ignore[method-assign]
        after = await store.head("doc.txt")
        raw = await raw_resource(store, "doc.txt")

    assert (raced.value.code, raced.value.retryable) == (ErrorCode.CONFLICT, True)
    assert after.sha256 == sha(b"v2")  # v2 keeps its own checksum
    assert raw["metadata"]["ferryman-sha256"] == sha(b"v2")
    assert after.metadata == {}


async def test_a_v4_signed_get_url_is_fetched_over_http(tmp_path: Path) -> None:
    data = b"signed bytes\n" * 50
    async with gcs_store(tmp_path) as store:
        await store.put(
            "signed/get me.txt",
            once(data),
            content_type="text/plain",
            metadata={},
            tags={},
            sha256=sha(data),
        )
        signed = await store.presign("signed/get me.txt", "GET", 300)
        async with aiohttp.ClientSession() as http, http.get(signed.url) as answer:
            status, content = answer.status, await answer.read()
    query = parse_qs(urlsplit(signed.url).query)
    assert (status, content) == (200, data)
    assert signed.url.startswith(f"{gcs_endpoint()}/{store.bucket}/signed/get%20me.txt?")
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["300"]
    assert query["X-Goog-Credential"][0].startswith(service_account()["client_email"])
    assert len(query["X-Goog-Signature"][0]) == 512  # hex of a 2048-bit RSA signature
    assert signed.headers == {}


async def test_a_signed_put_url_names_its_content_type(tmp_path: Path) -> None:
    async with gcs_store(tmp_path) as store:
        signed = await store.presign("up.json", "PUT", 60, content_type="application/json")
    query = parse_qs(urlsplit(signed.url).query)
    assert signed.headers == {"Content-Type": "application/json"}
    assert query["X-Goog-SignedHeaders"] == ["content-type;host"]


async def test_presign_without_a_service_account_or_past_seven_days_is_refused(
    tmp_path: Path,
) -> None:
    async with gcs_store(tmp_path, service_account=None) as unsigned:
        with pytest.raises(FerrymanError) as no_account:
            await unsigned.presign("k", "GET", 60)
    async with gcs_store(tmp_path) as store:
        with pytest.raises(FerrymanError) as too_long:
            await store.presign("k", "GET", 7 * 24 * 3600 + 1)
    assert no_account.value.code is ErrorCode.INVALID_REQUEST
    assert "service_account_file" in no_account.value.message
    assert too_long.value.code is ErrorCode.INVALID_REQUEST


async def test_a_missing_bucket_and_key_are_not_found(tmp_path: Path) -> None:
    async with gcs_store(tmp_path) as store:
        for call in (store.head("nope"), store.get("nope"), store.copy("nope", "there")):
            with pytest.raises(FerrymanError) as missing:
                await call
            assert (missing.value.code, missing.value.retryable) == (ErrorCode.NOT_FOUND, False)
            assert missing.value.upstream == "gcs"
    store = await GcsStore.open("gcs", gcs_settings("no-such-bucket-here"))
    try:
        with pytest.raises(FerrymanError) as no_bucket:
            await store.list("", delimiter=None, limit=10, token=None)
    finally:
        await store.close()
    assert no_bucket.value.code is ErrorCode.NOT_FOUND


async def test_an_unreachable_endpoint_is_unavailable_and_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    store = await GcsStore.open("gcs", gcs_settings("bucket", endpoint=f"http://127.0.0.1:{port}"))
    try:
        async with asyncio.timeout(10):
            with pytest.raises(FerrymanError) as unreachable:
                await store.head("k")
    finally:
        await store.close()
    assert (unreachable.value.code, unreachable.value.retryable) == (ErrorCode.UNAVAILABLE, True)


def _gcs_error(status: int, reason: str, message: str) -> str:
    body = {"error": {"code": status, "message": message, "errors": [{"reason": reason}]}}
    return f"Reason: {json.dumps(body)}"


@pytest.mark.parametrize(
    ("status", "reason", "expected", "retryable"),
    [
        (404, "notFound", ErrorCode.NOT_FOUND, False),
        (412, "conditionNotMet", ErrorCode.PRECONDITION_FAILED, False),
        (403, "forbidden", ErrorCode.PERMISSION_DENIED, False),
        (401, "required", ErrorCode.AUTH, False),
        (413, "uploadTooLarge", ErrorCode.TOO_LARGE, False),
        (429, "rateLimitExceeded", ErrorCode.RATE_LIMITED, True),
        (503, "backendError", ErrorCode.UNAVAILABLE, True),
        (500, "", ErrorCode.UNAVAILABLE, True),
        (400, "invalid", ErrorCode.INVALID_REQUEST, False),
        (409, "conflict", ErrorCode.CONFLICT, False),
    ],
)
def test_gcs_answers_map_to_the_taxonomy_without_the_key(
    status: int, reason: str, expected: ErrorCode, retryable: bool
) -> None:
    private_key = service_account()["private_key"]
    mapper = GcsErrorMapper("gcs", (private_key,))
    text = _gcs_error(status, reason, f"echoing {private_key}")

    error = mapper.from_status(status, text, {"Retry-After": "3"}, "GCS put of 'a/key'")

    assert (error.code, error.retryable, error.status) == (expected, retryable, status)
    assert error.retry_after == 3.0
    assert "BEGIN PRIVATE KEY" not in error.message
    assert private_key not in str(error)
    assert "a/key" in error.message


async def test_the_policy_opens_a_gcs_backend_from_a_service_account_reference(
    tmp_path: Path,
) -> None:
    account_file = tmp_path / "sa.json"
    account_file.write_text(json.dumps(service_account()))
    policy = parse_policy(
        f"""
backends:
  gcs:
    type: gcs
    bucket: placeholder
    service_account_file: file:{account_file}
    endpoint_url: {gcs_endpoint()}
tenants:
  "*": {{spaces: {{gcs: "{{tenant}}/"}}}}
""".encode()
    )
    config = policy.backends["gcs"]
    assert isinstance(config, GcsBackend)
    async with gcs_bucket() as bucket:
        store = await open_gcs("gcs", config.model_copy(update={"bucket": bucket}), {})
        try:
            await store.put(
                "a.txt", once(b"a"), content_type=None, metadata={}, tags={}, sha256=sha(b"a")
            )
            signed = await store.presign("a.txt", "GET", 60)
            async with aiohttp.ClientSession() as http, http.get(signed.url) as answer:
                assert (answer.status, await answer.read()) == (200, b"a")
        finally:
            await store.close()


async def test_an_unusable_service_account_is_refused_without_its_content() -> None:
    secret = "-----BEGIN PRIVATE KEY-----not really-----END PRIVATE KEY-----"
    config = GcsBackend(type="gcs", bucket="bucket", service_account_file="env:GCS_SA")
    refusals: list[FerrymanError] = []
    for environ in ({}, {"GCS_SA": secret}, {"GCS_SA": json.dumps({"private_key": secret})}):
        with pytest.raises(FerrymanError) as refused:
            await open_gcs("gcs", config, environ)
        refusals.append(refused.value)
    broken = dict(service_account(), private_key=secret)
    with pytest.raises(FerrymanError) as unusable:
        await GcsStore.open("gcs", GcsSettings(bucket="bucket", service_account=broken))
    refusals.append(unusable.value)
    for refusal in refusals:
        assert (refusal.code, refusal.retryable) == (ErrorCode.AUTH, False), refusal
        assert "not really" not in str(refusal)


def test_the_policy_refuses_a_literal_service_account() -> None:
    with pytest.raises(PolicyError, match="service_account_file"):
        parse_policy(
            b"""
backends:
  gcs: {type: gcs, bucket: abc, service_account_file: '{"private_key": "x"}'}
tenants:
  "*": {spaces: {gcs: ""}}
"""
        )
