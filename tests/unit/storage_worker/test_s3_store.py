"""The S3 backend against moto's S3 server: streamed multipart puts with bounded memory,
aborted uploads, checksums, S3's conditional writes, metadata encoding, multipart copies,
presigned URLs fetched over HTTP, and errors in the shared taxonomy."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from botocore.exceptions import ClientError

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.s3 import S3Store
from storage_worker.backends.s3_errors import S3ErrorMapper
from tests.storage.s3_store import (
    MOTO_SECRET_KEY,
    admin_client,
    moto_endpoint,
    moto_process,
    moto_settings,
    s3_bucket,
    s3_store,
)
from tests.storage.stores import drain

MiB = 1024 * 1024


async def generated(size: int, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`size` bytes in `chunk`-sized pieces that differ from each other, produced on demand
    (never whole in memory)."""
    for number, start in enumerate(range(0, size, chunk)):
        piece = hashlib.sha256(number.to_bytes(8, "big")).digest() * (chunk // 32)
        yield piece[: min(chunk, size - start)]


async def generated_sha256(size: int, chunk: int = 64 * 1024) -> str:
    hasher = hashlib.sha256()
    async for piece in generated(size, chunk):
        hasher.update(piece)
    return hasher.hexdigest()


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def uploads(store: S3Store) -> list[dict[str, Any]]:
    async with admin_client() as client:
        answer = await client.list_multipart_uploads(Bucket=store.bucket)
    return answer.get("Uploads", [])


async def put(store: S3Store, key: str, data: bytes, **options: Any) -> Any:
    options = {"content_type": None, "metadata": {}, "tags": {}, "sha256": sha(data)} | options
    return await store.put(key, once(data), **options)


async def test_a_20_mib_put_streams_in_parts_with_memory_well_under_its_size(
    tmp_path: Path,
) -> None:
    size, part_size, in_flight = 20 * MiB, 5 * MiB, 2
    expected = await generated_sha256(size)
    with moto_process() as endpoint:  # moto in-process would count the stored bytes too
        async with s3_bucket(endpoint) as bucket:
            settings = moto_settings(
                bucket, endpoint=endpoint, part_size=part_size, max_parts_in_flight=in_flight
            )
            store = await S3Store.open("s3", settings)
            try:
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
                described, body = await store.get("big/blob.bin")
                hasher, received = hashlib.sha256(), 0
                async for chunk in body:
                    hasher.update(chunk)
                    received += len(chunk)
            finally:
                await store.close()

    # the parts in flight, plus the HTTP client's own buffers
    bound = in_flight * part_size + 4 * MiB
    assert peak < bound < size, f"the put peaked at {peak / MiB:.1f} MiB for a 20 MiB body"
    assert stored.size == size
    assert head.etag is not None
    assert head.etag.endswith("-4")  # four parts of 5 MiB: a multipart upload
    assert (received, hasher.hexdigest()) == (size, expected)
    assert head.sha256 == described.sha256 == expected
    assert head.metadata == {"origin": "test"}
    assert head.tags == {"kind": "big"}


async def test_a_body_failing_midway_aborts_the_multipart_upload(tmp_path: Path) -> None:
    async def failing() -> AsyncIterator[bytes]:
        async for piece in generated(20 * MiB):
            yield piece
        raise RuntimeError("the source broke")

    async with s3_store(tmp_path) as store:
        with pytest.raises(RuntimeError, match="the source broke"):
            await store.put(
                "broken.bin",
                failing(),
                content_type=None,
                metadata={},
                tags={},
                sha256="0" * 64,
            )
        assert await uploads(store) == []
        with pytest.raises(FerrymanError) as missing:
            await store.head("broken.bin")
    assert missing.value.code is ErrorCode.NOT_FOUND


async def test_a_cancelled_put_aborts_the_multipart_upload(tmp_path: Path) -> None:
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        async for piece in generated(12 * MiB):
            yield piece
        stalled.set()
        await asyncio.Event().wait()
        yield b"never"

    async with s3_store(tmp_path) as store:
        task = asyncio.create_task(
            store.put(
                "stalled.bin", stalling(), content_type=None, metadata={}, tags={}, sha256="0" * 64
            )
        )
        async with asyncio.timeout(30):
            await stalled.wait()
        assert len(await uploads(store)) == 1  # the upload had begun
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await uploads(store) == []


@pytest.mark.parametrize("size", [1024, 12 * MiB], ids=["single", "multipart"])
async def test_bytes_that_do_not_match_their_sha256_store_nothing(
    tmp_path: Path, size: int
) -> None:
    async with s3_store(tmp_path) as store:
        with pytest.raises(FerrymanError) as failed:
            await store.put(
                "k", generated(size), content_type=None, metadata={}, tags={}, sha256="0" * 64
            )
        assert await uploads(store) == []
        assert not await store.delete("k")
    assert failed.value.code is ErrorCode.PRECONDITION_FAILED
    assert "nothing was stored" in failed.value.message


@pytest.mark.parametrize("size", [1024, 12 * MiB], ids=["single", "multipart"])
async def test_if_absent_is_a_conditional_write(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    async with s3_store(tmp_path) as store:
        first = await put(store, "once", data, if_absent=True)
        with pytest.raises(FerrymanError) as refused:
            await put(store, "once", b"other", if_absent=True)
        assert (await store.head("once")).etag == first.etag
        assert await uploads(store) == []
    assert refused.value.code is ErrorCode.CONFLICT
    assert refused.value.retryable is False


async def test_metadata_outside_ascii_and_tags_survive_a_round_trip(tmp_path: Path) -> None:
    metadata = {"Author": "Zoë Ünal", "padded": " spaced ", "looks": "=?UTF-8?B?eA==?="}
    async with s3_store(tmp_path) as store:
        stored = await put(store, "doc.txt", b"hello", metadata=metadata, tags={"team": "a b+c"})
        head = await store.head("doc.txt")
        async with admin_client() as client:
            raw = await client.head_object(
                Bucket=store.bucket, Key="doc.txt", ChecksumMode="ENABLED"
            )
    expected = {"author": "Zoë Ünal", "padded": " spaced ", "looks": "=?UTF-8?B?eA==?="}
    assert stored.metadata == head.metadata == expected
    assert head.tags == {"team": "a b+c"}
    assert raw["Metadata"]["ferryman-sha256"] == sha(b"hello")
    assert raw["ChecksumSHA256"]  # S3's own checksum is stored too


async def test_metadata_names_that_differ_only_by_case_are_refused(tmp_path: Path) -> None:
    async with s3_store(tmp_path) as store:
        with pytest.raises(FerrymanError) as refused:
            await put(store, "k", b"x", metadata={"A": "1", "a": "2"})
    assert refused.value.code is ErrorCode.INVALID_REQUEST


async def test_objects_past_the_copy_threshold_are_copied_in_ranged_parts(
    tmp_path: Path,
) -> None:
    data = os.urandom(12 * MiB)
    async with s3_store(tmp_path, copy_threshold=6 * MiB, copy_part_size=5 * MiB) as store:
        await put(
            store, "src", data, content_type="video/mp4", metadata={"m": "1"}, tags={"t": "2"}
        )
        copied = await store.copy("src", "dst")
        head = await store.head("dst")
        _, body = await store.get("dst")
        content = await drain(body)
        updated = await store.update_metadata(
            "dst", metadata={"m": "changed"}, tags=None, content_type=None
        )
        with pytest.raises(FerrymanError) as refused:
            await store.copy("src", "dst", if_absent=True)
        assert await uploads(store) == []
    assert content == data
    assert head.etag is not None
    assert head.etag.endswith("-3")  # 5 + 5 + 2 MiB
    assert copied.sha256 == head.sha256 == sha(data)
    assert (head.content_type, head.metadata, head.tags) == ("video/mp4", {"m": "1"}, {"t": "2"})
    assert (updated.metadata, updated.tags, updated.sha256) == (
        {"m": "changed"},
        {"t": "2"},
        sha(data),
    )
    assert refused.value.code is ErrorCode.CONFLICT


async def test_presigned_urls_get_and_put_over_http(tmp_path: Path) -> None:
    async with s3_store(tmp_path) as store:
        upload = await store.presign("up/doc.json", "PUT", 300, content_type="application/json")
        async with httpx2.AsyncClient(timeout=10) as http:
            put_answer = await http.put(upload.url, content=b'{"a": 1}', headers=upload.headers)
            head = await store.head("up/doc.json")
            download = await store.presign("up/doc.json", "GET", 300)
            got = await http.get(download.url)
    assert put_answer.status_code == 200
    assert upload.headers == {"Content-Type": "application/json"}
    assert head.content_type == "application/json"
    assert (got.status_code, got.content) == (200, b'{"a": 1}')
    assert download.method == "GET"


async def test_a_presign_past_seven_days_is_refused(tmp_path: Path) -> None:
    async with s3_store(tmp_path) as store:
        with pytest.raises(FerrymanError) as refused:
            await store.presign("k", "GET", 7 * 24 * 3600 + 1)
    assert refused.value.code is ErrorCode.INVALID_REQUEST


async def test_a_missing_key_is_not_found(tmp_path: Path) -> None:
    async with s3_store(tmp_path) as store:
        for call in (store.head("nope"), store.get("nope"), store.copy("nope", "there")):
            with pytest.raises(FerrymanError) as missing:
                await call
            assert missing.value.code is ErrorCode.NOT_FOUND
            assert missing.value.retryable is False
            assert missing.value.upstream == "s3"


async def test_wrong_credentials_are_refused_without_the_secret(tmp_path: Path) -> None:
    async with (
        s3_store(tmp_path, access_key_id="AKIAWRONG", secret_access_key="wrong-secret") as store,
        httpx2.AsyncClient() as http,
    ):
        # moto checks credentials only when told to (process-wide: restored right after)
        answer = await http.post(f"{moto_endpoint()}/moto-api/reset-auth", content=b"0")
        assert answer.status_code == 200
        try:
            with pytest.raises(FerrymanError) as on_get:
                await store.get("k")
            with pytest.raises(FerrymanError) as on_head:
                await store.head("k")
        finally:
            await http.post(f"{moto_endpoint()}/moto-api/reset-auth", content=b"inf")
    assert on_get.value.code is ErrorCode.AUTH, on_get.value  # S3 said InvalidAccessKeyId
    # a HEAD answer has no body: a bare 403 cannot tell bad credentials from a denial
    assert on_head.value.code is ErrorCode.PERMISSION_DENIED, on_head.value
    for refused in (on_get.value, on_head.value):
        assert refused.retryable is False
        assert "wrong-secret" not in str(refused)
        assert MOTO_SECRET_KEY not in str(refused)


async def test_an_unreachable_endpoint_is_unavailable_and_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    settings = moto_settings(
        "bucket", endpoint=f"http://127.0.0.1:{port}", connect_timeout=1.0, read_timeout=1.0
    )
    store = await S3Store.open("s3", settings)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(FerrymanError) as unreachable:
                await store.head("k")
    finally:
        await store.close()
    assert unreachable.value.code is ErrorCode.UNAVAILABLE
    assert unreachable.value.retryable is True


@pytest.mark.parametrize(
    ("code", "status", "expected", "retryable"),
    [
        ("SlowDown", 503, ErrorCode.RATE_LIMITED, True),
        ("ServiceUnavailable", 503, ErrorCode.UNAVAILABLE, True),
        ("InternalError", 500, ErrorCode.UNAVAILABLE, True),
        ("RequestTimeout", 400, ErrorCode.TIMEOUT, True),
        ("EntityTooLarge", 400, ErrorCode.TOO_LARGE, False),
        ("AccessDenied", 403, ErrorCode.PERMISSION_DENIED, False),
        ("SignatureDoesNotMatch", 403, ErrorCode.AUTH, False),
        ("NoSuchKey", 404, ErrorCode.NOT_FOUND, False),
        ("PreconditionFailed", 412, ErrorCode.PRECONDITION_FAILED, False),
        ("InvalidTag", 400, ErrorCode.INVALID_REQUEST, False),
        ("SomethingNew", 429, ErrorCode.RATE_LIMITED, True),
    ],
)
def test_s3_error_codes_map_to_the_taxonomy(
    code: str, status: int, expected: ErrorCode, retryable: bool
) -> None:
    response: Any = {
        "Error": {"Code": code, "Message": "echoing wrong-secret back"},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {"retry-after": "3"}},
    }
    mapper = S3ErrorMapper("s3", ("AKIAEXAMPLE", "wrong-secret"))

    error = mapper.translate(ClientError(response, "PutObject"), "put", "a/key")

    assert (error.code, error.retryable, error.status) == (expected, retryable, status)
    assert error.retry_after == 3.0
    assert "wrong-secret" not in error.message
    assert "a/key" in error.message
