"""What the storage contract suite shares: the `store` fixture (every backend of
`tests.storage.stores.factories()` in turn, fresh and empty) and small helpers."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferryman.contracts.errors import ErrorCode, FerrymanError
from storage_worker.backends.port import ObjectStore, StoredObject
from tests.storage.stores import drain, factories

MIB = 1024 * 1024


@pytest.fixture(params=sorted(factories()), ids=str)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    """A fresh, empty store of each backend in turn."""
    async with factories()[request.param](tmp_path) as opened:
        yield opened


class BodyBroke(Exception):
    """The producer's stream failed midway."""


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def broken_after(first: bytes) -> AsyncIterator[bytes]:
    yield first
    raise BodyBroke("the source went away")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put(
    store: ObjectStore,
    key: str,
    data: bytes,
    *,
    content_type: str | None = "text/plain",
    metadata: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    if_absent: bool = False,
) -> StoredObject:
    return await store.put(
        key,
        chunks(data),
        content_type=content_type,
        metadata=metadata or {},
        tags=tags or {},
        sha256=sha256(data),
        if_absent=if_absent,
    )


async def read(store: ObjectStore, key: str) -> bytes:
    _, body = await store.get(key)
    return await drain(body)


def description(found: StoredObject) -> tuple[object, ...]:
    """What every read of an object must agree on (timestamps' precision varies)."""
    return (
        found.key,
        found.size,
        found.content_type,
        found.sha256,
        found.etag,
        found.metadata,
        found.tags,
    )


async def all_keys(store: ObjectStore, prefix: str = "") -> list[str]:
    listing = await store.list(prefix, delimiter=None, limit=1000, token=None)
    assert listing.next_token is None
    return [found.key for found in listing.objects]


async def expect_error(code: ErrorCode, call: object) -> FerrymanError:
    assert asyncio.iscoroutine(call)
    with pytest.raises(FerrymanError) as caught:
        await call
    assert caught.value.code is code, caught.value
    return caught.value
