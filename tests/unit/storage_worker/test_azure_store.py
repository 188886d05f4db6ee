"""The Azure Blob backend against Azurite: streamed block puts with bounded memory, nothing
committed by a failed, cancelled or mismatched put, conditional writes, metadata and tag
encoding, copies, metadata updates and SAS URLs fetched over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from azure.core.exceptions import ResourceNotFoundError

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.azure import AzureStore
from storage_worker.backends.azure_metadata import azure_name, own_name
from tests.storage.azure_store import admin_client, azure_container, azure_store, azurite_settings
from tests.storage.stores import drain

MiB = 1024 * 1024


async def generated(size: int, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`size` bytes in `chunk`-sized pieces that differ from each other, produced on demand
    (never whole in memory)."""
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


async def put(store: AzureStore, key: str, data: bytes, **options: Any) -> Any:
    options = {"content_type": None, "metadata": {}, "tags": {}, "sha256": sha(data)} | options
    return await store.put(key, once(data), **options)


async def block_lists(store: AzureStore, key: str) -> tuple[list[Any], list[Any]]:
    """The blob's committed and uncommitted blocks, as Azure keeps them (none: no blob)."""
    async with admin_client() as client:
        blob = client.get_blob_client(store.container, key)
        try:
            committed, uncommitted = await blob.get_block_list("all")
        except ResourceNotFoundError:
            return [], []
    return list(committed), list(uncommitted)


async def raw_properties(store: AzureStore, key: str) -> Any:
    async with admin_client() as client:
        return await client.get_blob_client(store.container, key).get_blob_properties()


async def test_a_20_mib_put_is_staged_in_blocks_with_memory_well_under_its_size() -> None:
    size, block_size, in_flight = 20 * MiB, 2 * MiB, 2
    expected = await generated_sha256(size)
    async with azure_container() as container:
        settings = azurite_settings(
            container, block_size=block_size, max_blocks_in_flight=in_flight
        )
        store = await AzureStore.open("azure", settings)
        try:
            tracemalloc.start()  # Azurite runs in its own process: only ours is counted
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
            committed, uncommitted = await block_lists(store, "big/blob.bin")
            _, body = await store.get("big/blob.bin")
            hasher, received = hashlib.sha256(), 0
            async for chunk in body:
                hasher.update(chunk)
                received += len(chunk)
        finally:
            await store.close()

    bound = in_flight * block_size + 4 * MiB  # the blocks in flight, plus the client's buffers
    assert peak < bound < size, f"the put peaked at {peak / MiB:.1f} MiB for a 20 MiB body"
    assert stored.size == head.size == size
    assert [block.size for block in committed] == [block_size] * 10
    assert uncommitted == []
    assert (received, hasher.hexdigest()) == (size, expected)
    assert head.sha256 == expected
    assert (head.metadata, head.tags) == ({"origin": "test"}, {"kind": "big"})


async def failing_after(size: int) -> AsyncIterator[bytes]:
    async for piece in generated(size):
        yield piece
    raise RuntimeError("the source broke")


async def test_a_body_failing_midway_commits_nothing(tmp_path: Path) -> None:
    async with azure_store(tmp_path, block_size=MiB) as store:
        with pytest.raises(RuntimeError, match="the source broke"):
            await store.put(
                "broken.bin",
                failing_after(5 * MiB),
                content_type=None,
                metadata={},
                tags={},
                sha256="0" * 64,
            )
        committed, staged = await block_lists(store, "broken.bin")
        with pytest.raises(FerrymanError) as missing:
            await store.head("broken.bin")
        listing = await store.list("", delimiter=None, limit=10, token=None)
        data = os.urandom(3 * MiB)
        await put(store, "broken.bin", data)  # the next put of the key
        after = await block_lists(store, "broken.bin")

    assert committed == []
    assert staged, "the blocks were staged before the body broke"
    assert missing.value.code is ErrorCode.NOT_FOUND
    assert listing.objects == []
    assert len(after[0]) == 3
    assert after[1] == [], "the broken put's blocks outlived the next commit"


async def test_a_failed_overwrite_keeps_the_committed_blocks(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    async with azure_store(tmp_path, block_size=MiB) as store:
        before = await put(store, "doc.bin", data, metadata={"v": "1"})
        blocks_before = (await block_lists(store, "doc.bin"))[0]
        with pytest.raises(RuntimeError):
            await store.put(
                "doc.bin",
                failing_after(4 * MiB),
                content_type=None,
                metadata={},
                tags={},
                sha256="0" * 64,
            )
        head = await store.head("doc.bin")
        blocks_after = (await block_lists(store, "doc.bin"))[0]
        _, body = await store.get("doc.bin")
        content = await drain(body)

    assert [b.id for b in blocks_after] == [b.id for b in blocks_before]
    assert (head.etag, head.metadata) == (before.etag, {"v": "1"})
    assert content == data


async def test_a_cancelled_put_commits_nothing(tmp_path: Path) -> None:
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        async for piece in generated(3 * MiB):
            yield piece
        stalled.set()
        await asyncio.Event().wait()
        yield b"never"

    async with azure_store(tmp_path, block_size=MiB) as store:
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
        committed, _ = await block_lists(store, "stalled.bin")
        with pytest.raises(FerrymanError) as missing:
            await store.head("stalled.bin")

    assert committed == []
    assert missing.value.code is ErrorCode.NOT_FOUND


async def test_a_block_put_overtaken_by_another_put_of_the_key_is_a_retryable_conflict(
    tmp_path: Path,
) -> None:
    first, second = os.urandom(3 * MiB), os.urandom(3 * MiB)
    staged, go_on = asyncio.Event(), asyncio.Event()

    async def slow_first() -> AsyncIterator[bytes]:
        yield first[: 2 * MiB]
        staged.set()  # one block in flight at most: blocks 1 and 2 are staged by now
        await go_on.wait()
        yield first[2 * MiB :]

    async with azure_store(tmp_path, block_size=MiB, max_blocks_in_flight=1) as store:
        overtaken = asyncio.create_task(
            store.put("k", slow_first(), content_type=None, metadata={}, tags={}, sha256=sha(first))
        )
        async with asyncio.timeout(30):
            await staged.wait()
        await put(store, "k", second)  # its commit drops the other put's staged blocks
        go_on.set()
        with pytest.raises(FerrymanError) as lost:
            await overtaken
        _, body = await store.get("k")
        content = await drain(body)
    assert (lost.value.code, lost.value.retryable) == (ErrorCode.CONFLICT, True)
    assert content == second


@pytest.mark.parametrize("size", [1024, 3 * MiB], ids=["single", "blocks"])
async def test_bytes_that_do_not_match_their_sha256_store_nothing(
    tmp_path: Path, size: int
) -> None:
    async with azure_store(tmp_path, block_size=MiB) as store:
        with pytest.raises(FerrymanError) as failed:
            await store.put(
                "k", generated(size), content_type=None, metadata={}, tags={}, sha256="0" * 64
            )
        committed, _ = await block_lists(store, "k")
        listing = await store.list("", delimiter=None, limit=10, token=None)
        with pytest.raises(FerrymanError) as missing:
            await store.head("k")
    assert failed.value.code is ErrorCode.PRECONDITION_FAILED
    assert "nothing was stored" in failed.value.message
    assert committed == []
    assert listing.objects == []
    assert missing.value.code is ErrorCode.NOT_FOUND


@pytest.mark.parametrize("size", [1024, 3 * MiB], ids=["single", "blocks"])
async def test_if_absent_is_a_conditional_write(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    async with azure_store(tmp_path, block_size=MiB) as store:
        first = await put(store, "once", data, if_absent=True)
        with pytest.raises(FerrymanError) as refused:
            await put(store, "once", os.urandom(size), if_absent=True)
        head = await store.head("once")
    assert refused.value.code is ErrorCode.CONFLICT
    assert refused.value.retryable is False
    assert head.etag == first.etag


async def test_metadata_azure_would_refuse_is_encoded_and_read_back(tmp_path: Path) -> None:
    metadata = {
        "Author": "Zoë Ünal",
        "case-id": "A-17",
        "2nd": "second",
        "fm_looks_encoded": "x",
        "padded": " spaced ",
        "empty": "",
    }
    async with azure_store(tmp_path) as store:
        stored = await put(store, "doc.txt", b"hello", metadata=metadata, tags={"team": "a b+c"})
        head = await store.head("doc.txt")
        listed = (await store.list("", delimiter=None, limit=10, token=None)).objects
        raw = await raw_properties(store, "doc.txt")

    assert stored.metadata == head.metadata == listed[0].metadata == metadata
    assert head.tags == listed[0].tags == {"team": "a b+c"}
    assert all(name.replace("_", "a").isalnum() for name in raw.metadata)
    assert not any(name[0].isdigit() for name in raw.metadata)
    assert raw.metadata["Author"] == "=?UTF-8?B?Wm/DqyDDnG5hbA==?="
    assert raw.metadata[azure_name("ferryman-sha256")] == sha(b"hello")
    assert head.sha256 == sha(b"hello")


@pytest.mark.parametrize("name", ["plain", "with-dash", "9lives", "fm_x", "FM_h", "a__-_u"])
def test_metadata_names_round_trip(name: str) -> None:
    assert own_name(azure_name(name)) == name


async def test_metadata_names_that_differ_only_by_case_are_refused(tmp_path: Path) -> None:
    async with azure_store(tmp_path) as store:
        with pytest.raises(FerrymanError) as refused:
            await put(store, "k", b"x", metadata={"Name": "1", "name": "2"})
        existed = await store.delete("k")
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert existed is False


@pytest.mark.parametrize(
    "tags",
    [{f"t{n}": "v" for n in range(11)}, {"team": "Zoë"}, {"team": "x" * 257}],
    ids=["eleven", "not-ascii", "too-long"],
)
async def test_tags_azure_refuses_are_refused_clearly(tmp_path: Path, tags: dict[str, str]) -> None:
    async with azure_store(tmp_path) as store:
        with pytest.raises(FerrymanError) as refused:
            await put(store, "k", b"x", tags=tags)
        existed = await store.delete("k")
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert "Azure" in refused.value.message
    assert existed is False


async def test_copy_keeps_metadata_tags_and_checksum(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    async with azure_store(tmp_path, block_size=MiB) as store:
        await put(
            store, "src", data, content_type="video/mp4", metadata={"m-1": "é"}, tags={"t": "2"}
        )
        copied = await store.copy("src", "dst")
        _, body = await store.get("dst")
        content = await drain(body)
        with pytest.raises(FerrymanError) as refused:
            await store.copy("src", "dst", if_absent=True)
        with pytest.raises(FerrymanError) as missing:
            await store.copy("absent", "elsewhere")
    assert content == data
    assert (copied.sha256, copied.content_type) == (sha(data), "video/mp4")
    assert (copied.metadata, copied.tags) == ({"m-1": "é"}, {"t": "2"})
    assert refused.value.code is ErrorCode.CONFLICT
    assert missing.value.code is ErrorCode.NOT_FOUND


async def test_a_content_type_update_keeps_the_other_headers(tmp_path: Path) -> None:
    async with azure_store(tmp_path) as store:
        await put(store, "doc.md", b"# title", content_type="text/plain", metadata={"a": "1"})
        md5 = (await raw_properties(store, "doc.md")).content_settings.content_md5
        updated = await store.update_metadata(
            "doc.md", metadata=None, tags={"stage": "final"}, content_type="text/markdown"
        )
        raw = await raw_properties(store, "doc.md")
    assert md5
    assert raw.content_settings.content_md5 == md5
    assert (updated.content_type, updated.metadata, updated.tags) == (
        "text/markdown",
        {"a": "1"},
        {"stage": "final"},
    )
    assert updated.sha256 == sha(b"# title")


async def test_sas_urls_get_and_put_over_http(tmp_path: Path) -> None:
    async with azure_store(tmp_path) as store, httpx2.AsyncClient(timeout=10) as http:
        upload = await store.presign("up/doc é.json", "PUT", 300, content_type="application/json")
        without_type = await http.put(upload.url, content=b"{}")
        put_answer = await http.put(upload.url, content=b'{"a": 1}', headers=upload.headers)
        head = await store.head("up/doc é.json")
        download = await store.presign("up/doc é.json", "GET", 300)
        got = await http.get(download.url)
        unsigned = await http.get(download.url.split("?")[0])
        tampered = await http.get(download.url.replace("sp=r", "sp=rw"))
        overwrite = await http.put(
            download.url, content=b"no", headers={"x-ms-blob-type": "BlockBlob"}
        )
    assert upload.headers == {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/json"}
    assert without_type.status_code == 400  # Put Blob needs x-ms-blob-type
    assert put_answer.status_code == 201
    assert head.content_type == "application/json"
    assert (got.status_code, got.content) == (200, b'{"a": 1}')
    assert unsigned.status_code in (403, 404)
    assert tampered.status_code == 403
    assert overwrite.status_code == 403  # a GET URL cannot write


async def test_sas_urls_expire_when_the_clock_says(tmp_path: Path) -> None:
    issued = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with azure_container() as container:
        store = await AzureStore.open("azure", azurite_settings(container), clock=lambda: issued)
        try:
            await put(store, "k", b"old news")
            signed = await store.presign("k", "GET", 60)
            async with httpx2.AsyncClient(timeout=10) as http:
                got = await http.get(signed.url)
        finally:
            await store.close()
    query = parse_qs(urlsplit(signed.url).query)
    assert signed.expires_at == issued + timedelta(seconds=60)
    assert query["se"] == ["2026-01-02T03:05:05Z"]
    assert got.status_code == 403, "a URL that expired in January still reads"


async def test_a_presign_past_seven_days_is_refused(tmp_path: Path) -> None:
    async with azure_store(tmp_path) as store:
        with pytest.raises(FerrymanError) as refused:
            await store.presign("k", "GET", 7 * 24 * 3600 + 1)
    assert refused.value.code is ErrorCode.INVALID_REQUEST
