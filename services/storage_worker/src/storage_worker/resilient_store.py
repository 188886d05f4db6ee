"""Retries with jitter and a circuit breaker around one backend, from the shared runtime.

Both read only `FerrymanError.retryable`, as everywhere in Ferryman. Calls whose repeat is
harmless are retried (head, get, list, delete, metadata updates, presigning, copies that are
not create-only); a put is not, because its body is a stream read once: the request itself
fails retryable and is retried whole. Every call goes through the backend's breaker, so a
backend that keeps failing is given a rest instead of every request's attempts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from ferryman.contracts import FerrymanError
from ferryman_runtime.resilience import Breaker, RetryPolicy
from storage_worker.backends.port import Body, Listing, ObjectStore, Presigned, StoredObject

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


class ResilientStore:
    """An `ObjectStore` that retries and breaks around `store`.

    Args:
        store: the backend.
        breaker: the backend's breaker.
        retry: attempts and backoff of the calls that are retried.
        sleep: waits between attempts (injectable for tests).
        rng: the jitter's source (injectable for tests).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        breaker: Breaker,
        retry: RetryPolicy,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.name = store.name
        self.inner = store
        self._breaker = breaker
        self._retry = retry
        self._sleep = sleep
        self._rng = rng

    async def _once(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._breaker.guard():
            return await call()

    async def _retried(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 1
        while True:
            try:
                return await self._once(call)
            except FerrymanError as exc:
                if not exc.retryable or attempt >= self._retry.max_attempts:
                    raise
                await self._sleep(self._retry.delay(attempt, exc.retry_after, self._rng))
                attempt += 1

    async def put(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None,
        metadata: dict[str, str],
        tags: dict[str, str],
        sha256: str,
        if_absent: bool = False,
    ) -> StoredObject:
        """See `ObjectStore.put` (not retried: the body is read once). A failure of the body
        itself (a source URL timing out, another backend failing mid-copy) is not the
        backend's and does not count against its circuit.

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open;
                whatever the body raised.
        """
        body_failures: list[BaseException] = []

        async def watched() -> Body:
            try:
                async for chunk in body:
                    yield chunk
            except BaseException as exc:
                body_failures.append(exc)
                raise

        body_failure: BaseException | None = None
        async with self._breaker.guard():
            try:
                return await self.inner.put(
                    key,
                    watched(),
                    content_type=content_type,
                    metadata=metadata,
                    tags=tags,
                    sha256=sha256,
                    if_absent=if_absent,
                )
            except BaseException as exc:
                if not any(_caused_by(exc, failure) for failure in body_failures):
                    raise
                body_failure = exc
        raise body_failure

    async def get(self, key: str) -> tuple[StoredObject, Body]:
        """See `ObjectStore.get` (opening the stream is retried, not a stream cut midway).

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        return await self._retried(lambda: self.inner.get(key))

    async def head(self, key: str) -> StoredObject:
        """See `ObjectStore.head`.

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        return await self._retried(lambda: self.inner.head(key))

    async def list(
        self, prefix: str, *, delimiter: str | None, limit: int, token: str | None
    ) -> Listing:
        """See `ObjectStore.list`.

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        return await self._retried(
            lambda: self.inner.list(prefix, delimiter=delimiter, limit=limit, token=token)
        )

    async def delete(self, key: str) -> bool:
        """See `ObjectStore.delete`.

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        return await self._retried(lambda: self.inner.delete(key))

    async def copy(self, source: str, key: str, *, if_absent: bool = False) -> StoredObject:
        """See `ObjectStore.copy` (a create-only copy is not retried: a first attempt that
        succeeded unseen would make the retry fail `conflict`).

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        call = lambda: self.inner.copy(source, key, if_absent=if_absent)  # noqa: E731
        return await (self._once(call) if if_absent else self._retried(call))

    async def update_metadata(
        self,
        key: str,
        *,
        metadata: dict[str, str] | None,
        tags: dict[str, str] | None,
        content_type: str | None,
    ) -> StoredObject:
        """See `ObjectStore.update_metadata`.

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        return await self._retried(
            lambda: self.inner.update_metadata(
                key, metadata=metadata, tags=tags, content_type=content_type
            )
        )

    async def presign(
        self,
        key: str,
        method: Literal["GET", "PUT"],
        expires_in: int,
        *,
        content_type: str | None = None,
    ) -> Presigned:
        """See `ObjectStore.presign`.

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        return await self._retried(
            lambda: self.inner.presign(key, method, expires_in, content_type=content_type)
        )

    async def close(self) -> None:
        """Close the backend."""
        await self.inner.close()


def _caused_by(exc: BaseException, failure: BaseException) -> bool:
    """Whether `exc` is `failure`, or was raised while handling it."""
    seen: BaseException | None = exc
    for _ in range(8):  # a short chain: a backend wraps a body's error once or twice
        if seen is None:
            return False
        if seen is failure:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
