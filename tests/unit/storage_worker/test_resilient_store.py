"""Retries and the breaker around a backend: a real local store behind a fake that fails
on command (what a flaky network does to a cloud backend)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman_runtime.resilience import Breaker, RetryPolicy
from storage_worker.backends.local import LocalStore
from storage_worker.backends.port import Body, Listing, Presigned, StoredObject
from storage_worker.resilient_store import ResilientStore
from tests.storage.contract import chunks, put, read, sha256


class FlakyStore:
    """A `LocalStore` whose next calls fail with the queued errors first; counts calls."""

    def __init__(self, root: Path) -> None:
        self.real = LocalStore("flaky", root)
        self.name = "flaky"
        self.failures: list[FerrymanError] = []
        self.calls: dict[str, int] = {}

    def _enter(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        if self.failures:
            raise self.failures.pop(0)

    async def put(self, key: str, body: Body, **options: Any) -> StoredObject:
        self._enter("put")
        return await self.real.put(key, body, **options)

    async def get(self, key: str) -> tuple[StoredObject, Body]:
        self._enter("get")
        return await self.real.get(key)

    async def head(self, key: str) -> StoredObject:
        self._enter("head")
        return await self.real.head(key)

    async def list(
        self, prefix: str, *, delimiter: str | None, limit: int, token: str | None
    ) -> Listing:
        self._enter("list")
        return await self.real.list(prefix, delimiter=delimiter, limit=limit, token=token)

    async def delete(self, key: str) -> bool:
        self._enter("delete")
        return await self.real.delete(key)

    async def copy(self, source: str, key: str, *, if_absent: bool = False) -> StoredObject:
        self._enter("copy")
        return await self.real.copy(source, key, if_absent=if_absent)

    async def update_metadata(self, key: str, **options: Any) -> StoredObject:
        self._enter("update_metadata")
        return await self.real.update_metadata(key, **options)

    async def presign(
        self, key: str, method: Literal["GET", "PUT"], expires_in: int, **options: Any
    ) -> Presigned:
        self._enter("presign")
        return await self.real.presign(key, method, expires_in, **options)

    async def close(self) -> None:
        await self.real.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def busy(retry_after: float | None = None) -> FerrymanError:
    return FerrymanError(
        ErrorCode.RATE_LIMITED, "slow down", retryable=True, retry_after=retry_after
    )


def denied() -> FerrymanError:
    return FerrymanError(ErrorCode.PERMISSION_DENIED, "no", retryable=False)


@pytest.fixture
async def flaky(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    store = FlakyStore(tmp_path / "root")
    yield store
    await store.close()


def resilient(
    flaky: FlakyStore, waits: list[float], *, fail_max: int = 5, clock: Clock | None = None
) -> ResilientStore:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    breaker = Breaker("flaky", fail_max=fail_max, reset_timeout=30.0, clock=clock or Clock())
    return ResilientStore(
        flaky,  # pyright: ignore[reportArgumentType]  # the port's keyword options, as **
        breaker=breaker,
        retry=RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=8.0),
        sleep=sleep,
        rng=random.Random(7),
    )


async def test_a_retryable_failure_is_retried_with_jitter_and_retry_after_honoured(
    flaky: FlakyStore,
) -> None:
    waits: list[float] = []
    store = resilient(flaky, waits)
    await put(store, "a.txt", b"hello")
    flaky.failures = [busy(), busy(retry_after=4.0)]

    found = await store.head("a.txt")

    assert found.size == 5
    assert flaky.calls["head"] == 3
    assert len(waits) == 2
    assert 0.0 <= waits[0] <= 0.5  # full jitter under the first ceiling
    assert waits[1] >= 4.0  # never sooner than the backend asked


async def test_attempts_are_bounded_and_the_last_error_is_raised(flaky: FlakyStore) -> None:
    waits: list[float] = []
    store = resilient(flaky, waits)
    flaky.failures = [busy(), busy(), busy(), busy()]

    with pytest.raises(FerrymanError) as caught:
        await store.list("", delimiter=None, limit=10, token=None)

    assert caught.value.code is ErrorCode.RATE_LIMITED
    assert flaky.calls["list"] == 3
    assert len(waits) == 2


async def test_a_non_retryable_failure_is_not_retried(flaky: FlakyStore) -> None:
    waits: list[float] = []
    store = resilient(flaky, waits)
    flaky.failures = [denied()]

    with pytest.raises(FerrymanError) as caught:
        await store.head("a.txt")

    assert caught.value.code is ErrorCode.PERMISSION_DENIED
    assert (flaky.calls["head"], waits) == (1, [])


async def test_a_put_is_never_retried_its_body_is_read_once(flaky: FlakyStore) -> None:
    waits: list[float] = []
    store = resilient(flaky, waits)
    flaky.failures = [busy()]

    with pytest.raises(FerrymanError) as caught:
        await store.put(
            "a.txt",
            chunks(b"x"),
            content_type=None,
            metadata={},
            tags={},
            sha256=sha256(b"x"),
        )

    assert caught.value.retryable
    assert (flaky.calls["put"], waits) == (1, [])


async def test_a_create_only_copy_is_not_retried_a_plain_copy_is(flaky: FlakyStore) -> None:
    waits: list[float] = []
    store = resilient(flaky, waits)
    await put(store, "a.txt", b"hello")

    flaky.failures = [busy()]
    with pytest.raises(FerrymanError):
        await store.copy("a.txt", "b.txt", if_absent=True)
    flaky.failures = [busy()]
    copied = await store.copy("a.txt", "c.txt")

    assert flaky.calls["copy"] == 3
    assert copied.key == "c.txt"
    assert await read(store, "c.txt") == b"hello"


async def test_the_breaker_opens_then_fails_fast_then_lets_a_probe_through(
    flaky: FlakyStore,
) -> None:
    waits: list[float] = []
    clock = Clock()
    store = resilient(flaky, waits, fail_max=2, clock=clock)
    await put(store, "a.txt", b"hello")
    flaky.failures = [busy(), busy(), busy()]

    with pytest.raises(FerrymanError):
        await store.head("a.txt")  # two failures open the circuit; the third attempt…
    calls = flaky.calls["head"]
    with pytest.raises(FerrymanError) as caught:
        await store.head("a.txt")

    assert calls == 2  # … never reached the backend
    assert flaky.calls["head"] == 2
    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert "circuit open" in str(caught.value)

    flaky.failures = []
    clock.now = 31.0
    assert (await store.head("a.txt")).size == 5  # the probe succeeds: closed again
    assert (await store.head("a.txt")).size == 5


async def test_a_failing_body_does_not_count_against_the_backends_circuit(
    flaky: FlakyStore,
) -> None:
    waits: list[float] = []
    store = resilient(flaky, waits, fail_max=2)

    async def source_times_out() -> AsyncIterator[bytes]:
        yield b"first bytes"
        raise FerrymanError(ErrorCode.TIMEOUT, "the source went quiet", retryable=True)

    for _ in range(3):
        with pytest.raises(FerrymanError) as caught:
            await store.put(
                "a.txt",
                source_times_out(),
                content_type=None,
                metadata={},
                tags={},
                sha256=sha256(b"x"),
            )
        assert caught.value.code is ErrorCode.TIMEOUT
    await put(store, "b.txt", b"fine")

    assert (await store.head("b.txt")).size == 4  # the circuit stayed closed
    assert flaky.calls["put"] == 4
