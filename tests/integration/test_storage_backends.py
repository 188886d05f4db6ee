"""The storage backend contract: every backend of `tests.storage.stores.factories()` runs
every test here, on a fresh, empty store of its own (no Kafka involved).

Keys are full keys as the worker hands them to a backend (normalised already). Listings are
tested in `test_storage_listings.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx2
import pytest

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.port import ObjectStore, StoredObject
from tests.storage.contract import (
    MIB,
    BodyBroke,
    all_keys,
    broken_after,
    chunks,
    description,
    expect_error,
    put,
    read,
    sha256,
)
from tests.storage.contract import store as store  # the fixture every test here takes
from tests.storage.stores import drain

METADATA = {"author": "Zoë Ortiz", "case_id": "A-17"}
TAGS = {"team": "legal", "stage": "draft"}


async def test_put_then_get_head_and_list_keep_the_description(store: ObjectStore) -> None:
    data = "Quarterly figures, été 2026\n".encode() * 50
    key = "docs/été report.txt"

    stored = await put(store, key, data, metadata=METADATA, tags=TAGS)

    assert (stored.key, stored.size, stored.sha256) == (key, len(data), sha256(data))
    assert (stored.content_type, stored.metadata, stored.tags) == ("text/plain", METADATA, TAGS)
    assert stored.etag
    head = await store.head(key)
    assert description(head) == description(stored)
    assert head.last_modified is not None
    got, body = await store.get(key)
    assert await drain(body) == data
    assert description(got) == description(stored)
    listing = await store.list("docs/", delimiter=None, limit=10, token=None)
    assert [description(found) for found in listing.objects] == [description(stored)]


async def test_an_empty_object_round_trips(store: ObjectStore) -> None:
    stored = await put(store, "empty.bin", b"", content_type=None)

    assert (stored.size, stored.sha256) == (0, sha256(b""))
    assert await read(store, "empty.bin") == b""
    assert (await store.head("empty.bin")).size == 0


async def test_a_multi_chunk_object_streams_both_ways(store: ObjectStore) -> None:
    data = bytes(range(256)) * (3 * MIB // 256) + b"tail"

    async def produced() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    stored = await store.put(
        "media/big.bin",
        produced(),
        content_type="application/octet-stream",
        metadata={},
        tags={},
        sha256=sha256(data),
    )
    got, body = await store.get("media/big.bin")
    received = [chunk async for chunk in body]

    assert stored.size == got.size == len(data)
    assert len(received) > 1, "a 3 MiB object came back in one piece: not streamed"
    assert b"".join(received) == data
    assert got.sha256 == sha256(data)


async def test_if_absent_refuses_an_existing_key_and_keeps_it(store: ObjectStore) -> None:
    await put(store, "once.txt", b"first", metadata={"n": "1"})

    error = await expect_error(
        ErrorCode.CONFLICT, put(store, "once.txt", b"second", metadata={"n": "2"}, if_absent=True)
    )

    assert not error.retryable
    assert await read(store, "once.txt") == b"first"
    assert (await store.head("once.txt")).metadata == {"n": "1"}


async def test_racing_if_absent_puts_let_exactly_one_win(store: ObjectStore) -> None:
    contenders = [f"writer {n}".encode() for n in range(4)]

    outcomes = await asyncio.gather(
        *(put(store, "race.txt", data, if_absent=True) for data in contenders),
        return_exceptions=True,
    )

    winners = [
        contenders[n] for n, outcome in enumerate(outcomes) if isinstance(outcome, StoredObject)
    ]
    losers = [outcome for outcome in outcomes if isinstance(outcome, FerrymanError)]
    assert len(winners) == 1, outcomes
    assert [loser.code for loser in losers] == [ErrorCode.CONFLICT] * 3
    assert await read(store, "race.txt") == winners[0]


async def test_an_overwrite_is_a_new_version_with_its_own_description(store: ObjectStore) -> None:
    first = await put(store, "report.txt", b"draft", metadata={"state": "draft"}, tags=TAGS)

    second = await put(store, "report.txt", b"final text", metadata={"final": "yes"})

    assert second.etag != first.etag
    if first.version is not None:
        assert second.version is not None
        assert second.version != first.version
    head = await store.head("report.txt")
    assert description(head) == description(second)
    assert (head.metadata, head.tags) == ({"final": "yes"}, {})
    assert await read(store, "report.txt") == b"final text"


async def test_a_missing_key_is_not_found_everywhere(store: ObjectStore) -> None:
    await put(store, "present/here.txt", b"x")

    for call in (
        store.head("absent.txt"),
        store.get("absent.txt"),
        store.get("present/here.txt/below"),
        store.copy("absent.txt", "copy.txt"),
        store.update_metadata("absent.txt", metadata={"a": "b"}, tags=None, content_type=None),
    ):
        error = await expect_error(ErrorCode.NOT_FOUND, call)
        assert not error.retryable
    assert await store.delete("absent.txt") is False
    assert await all_keys(store) == ["present/here.txt"]


async def test_delete_removes_the_object_and_its_folder(store: ObjectStore) -> None:
    await put(store, "a/b/c.txt", b"x")
    await put(store, "a/keep.txt", b"y")

    assert await store.delete("a/b/c.txt") is True
    assert await store.delete("a/b/c.txt") is False

    await expect_error(ErrorCode.NOT_FOUND, store.head("a/b/c.txt"))
    listing = await store.list("a/", delimiter="/", limit=100, token=None)
    assert [found.key for found in listing.objects] == ["a/keep.txt"]
    assert listing.prefixes == [], "a folder with no object left is still listed"


async def test_copy_keeps_bytes_and_description(store: ObjectStore) -> None:
    data = b"%PDF-1.7 pretend\n" * 1000
    source = await put(
        store, "in/source.pdf", data, content_type="application/pdf", metadata=METADATA, tags=TAGS
    )

    copied = await store.copy("in/source.pdf", "out/copy.pdf")

    assert copied.key == "out/copy.pdf"
    assert (copied.size, copied.sha256, copied.content_type) == (
        len(data),
        sha256(data),
        "application/pdf",
    )
    assert (copied.metadata, copied.tags) == (METADATA, TAGS)
    assert description(await store.head("out/copy.pdf")) == description(copied)
    assert await read(store, "out/copy.pdf") == data
    assert description(await store.head("in/source.pdf")) == description(source)


async def test_copy_if_absent_refuses_an_existing_target(store: ObjectStore) -> None:
    await put(store, "src.txt", b"new")
    await put(store, "dst.txt", b"old")

    await expect_error(ErrorCode.CONFLICT, store.copy("src.txt", "dst.txt", if_absent=True))

    assert await read(store, "dst.txt") == b"old"


async def test_update_metadata_replaces_it_and_keeps_the_bytes(store: ObjectStore) -> None:
    data = b"contents stay"
    before = await put(store, "doc.txt", data, metadata={"old": "1", "other": "2"}, tags={"t": "1"})

    updated = await store.update_metadata(
        "doc.txt", metadata={"new": "3"}, tags={"u": "4"}, content_type="text/markdown"
    )
    kept = await store.update_metadata("doc.txt", metadata=None, tags=None, content_type=None)

    assert (updated.metadata, updated.tags, updated.content_type) == (
        {"new": "3"},
        {"u": "4"},
        "text/markdown",
    )
    assert description(kept) == description(updated)
    head = await store.head("doc.txt")
    assert (head.metadata, head.tags, head.content_type) == (
        {"new": "3"},
        {"u": "4"},
        "text/markdown",
    )
    assert (head.size, head.sha256) == (before.size, before.sha256)
    assert await read(store, "doc.txt") == data


async def test_a_body_failing_midway_stores_nothing(store: ObjectStore) -> None:
    with pytest.raises(BodyBroke):
        await store.put(
            "new/partial.bin",
            broken_after(b"y" * (2 * MIB)),
            content_type=None,
            metadata={},
            tags={},
            sha256=sha256(b""),
        )

    await expect_error(ErrorCode.NOT_FOUND, store.head("new/partial.bin"))
    assert await all_keys(store) == []


async def test_a_failed_overwrite_keeps_the_previous_object(store: ObjectStore) -> None:
    before = await put(store, "doc.bin", b"previous", metadata={"v": "1"})

    with pytest.raises(BodyBroke):
        await store.put(
            "doc.bin",
            broken_after(b"z" * MIB),
            content_type=None,
            metadata={},
            tags={},
            sha256=sha256(b""),
        )
    await expect_error(
        ErrorCode.PRECONDITION_FAILED,
        store.put(
            "doc.bin",
            chunks(b"other"),
            content_type=None,
            metadata={},
            tags={},
            sha256=sha256(b"else"),
        ),
    )

    assert description(await store.head("doc.bin")) == description(before)
    assert await read(store, "doc.bin") == b"previous"


async def test_a_cancelled_put_stores_nothing(store: ObjectStore) -> None:
    first_sent = asyncio.Event()
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"s" * MIB
        first_sent.set()
        await never.wait()
        yield b"never sent"

    upload = asyncio.create_task(
        store.put(
            "stalled.bin", stalls(), content_type=None, metadata={}, tags={}, sha256=sha256(b"")
        )
    )
    await asyncio.wait_for(first_sent.wait(), timeout=30)
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload

    await expect_error(ErrorCode.NOT_FOUND, store.head("stalled.bin"))
    assert await all_keys(store) == []


async def test_presigned_urls_reach_the_object(store: ObjectStore) -> None:
    data = b"signed bytes\n" * 100
    await put(store, "signed/get.txt", data)

    download = await store.presign("signed/get.txt", "GET", 300)
    upload = await store.presign("signed/put.txt", "PUT", 300, content_type="text/plain")
    async with httpx2.AsyncClient(timeout=30) as client:
        got = await client.get(download.url, headers=download.headers)
        sent = await client.put(
            upload.url,
            content=b"uploaded directly",
            headers={"Content-Type": "text/plain", **upload.headers},
        )

    assert (download.method, upload.method) == ("GET", "PUT")
    assert got.status_code == 200, got.text[:300]
    assert got.content == data
    assert sent.status_code in (200, 201), sent.text[:300]
    assert await read(store, "signed/put.txt") == b"uploaded directly"
