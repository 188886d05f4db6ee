"""The storage backend contract, listings: prefix, delimiter, pages and tokens, and only
objects ever listed; on every backend of `tests.storage.stores.factories()`."""

from __future__ import annotations

import pytest

from ferryman.contracts.errors import ErrorCode
from storage_worker.backends.port import ObjectStore
from tests.storage.contract import (
    MIB,
    BodyBroke,
    all_keys,
    broken_after,
    chunks,
    expect_error,
    put,
    sha256,
)
from tests.storage.contract import store as store  # the fixture every test here takes

LISTED = [
    "a.txt",
    "docs-x/4.txt",
    "docs/1.txt",
    "docs/2.txt",
    "docs/sub/3.txt",
    "docs/sub/deeper/5.txt",
    "e.txt",
]


async def put_all(store: ObjectStore, keys: list[str]) -> None:
    for key in reversed(keys):
        await put(store, key, key.encode())


async def test_list_filters_by_prefix_in_key_order(store: ObjectStore) -> None:
    await put_all(store, LISTED)

    assert await all_keys(store) == LISTED
    assert await all_keys(store, "docs/") == [
        "docs/1.txt",
        "docs/2.txt",
        "docs/sub/3.txt",
        "docs/sub/deeper/5.txt",
    ]
    assert await all_keys(store, "do") == LISTED[1:6]
    assert await all_keys(store, "docs/sub/3") == ["docs/sub/3.txt"]
    assert await all_keys(store, "nothing/") == []
    assert await all_keys(store, "a.txt/") == []


async def test_list_with_a_delimiter_rolls_folders_up(store: ObjectStore) -> None:
    await put_all(store, LISTED)

    top = await store.list("", delimiter="/", limit=100, token=None)
    docs = await store.list("docs/", delimiter="/", limit=100, token=None)
    partial = await store.list("do", delimiter="/", limit=100, token=None)

    assert [found.key for found in top.objects] == ["a.txt", "e.txt"]
    assert top.prefixes == ["docs-x/", "docs/"]
    assert [found.key for found in docs.objects] == ["docs/1.txt", "docs/2.txt"]
    assert docs.prefixes == ["docs/sub/"]
    assert (partial.objects, partial.prefixes) == ([], ["docs-x/", "docs/"])


@pytest.mark.parametrize(("delimiter", "limit"), [(None, 2), (None, 3), ("/", 1), ("/", 3)])
async def test_list_pages_through_with_tokens(
    store: ObjectStore, delimiter: str | None, limit: int
) -> None:
    await put_all(store, LISTED)
    whole = await store.list("", delimiter=delimiter, limit=1000, token=None)
    expected = sorted([found.key for found in whole.objects] + whole.prefixes)

    seen: list[str] = []
    token: str | None = None
    for _ in range(len(LISTED) + 1):
        page = await store.list("", delimiter=delimiter, limit=limit, token=token)
        assert 0 < len(page.objects) + len(page.prefixes) <= limit
        seen += sorted([found.key for found in page.objects] + page.prefixes)
        token = page.next_token
        if token is None:
            break

    assert token is None, "the listing never ended"
    assert seen == expected


async def test_a_token_that_is_not_one_is_refused(store: ObjectStore) -> None:
    await put_all(store, LISTED)

    await expect_error(
        ErrorCode.INVALID_REQUEST,
        store.list("", delimiter=None, limit=2, token="%%% not a token %%%"),
    )


async def test_listings_show_objects_only(store: ObjectStore) -> None:
    await put(store, "kept/one.txt", b"1", metadata={"a": "b"})
    await store.update_metadata(
        "kept/one.txt", metadata={"a": "c"}, tags={"t": "1"}, content_type=None
    )
    with pytest.raises(BodyBroke):
        await store.put(
            "broken/two.txt",
            broken_after(b"x" * MIB),
            content_type=None,
            metadata={},
            tags={},
            sha256=sha256(b""),
        )
    await expect_error(
        ErrorCode.PRECONDITION_FAILED,
        store.put(
            "bad/sum.txt",
            chunks(b"abc"),
            content_type=None,
            metadata={},
            tags={},
            sha256=sha256(b"abd"),
        ),
    )

    assert await all_keys(store) == ["kept/one.txt"]
    top = await store.list("", delimiter="/", limit=100, token=None)
    assert (top.objects, top.prefixes) == ([], ["kept/"])
