"""Retries with jitter and a circuit breaker around one backend, from the shared runtime.

Both read only `FerrymanError.retryable`, as everywhere in Ferryman. Calls whose repeat is
harmless are retried (head, get, list, delete, metadata updates, presigning, copies that are
not create-only); a put is not, because its body is a stream read once: the request itself
fails retryable and is retried whole. Every call goes through the backend's breaker, so a
backend that keeps failing is given a rest instead of every request's attempts.

Every call is also observed: one `storage {operation}` span per operation (its retries
inside), each attempt in the backend's `UpstreamStats` (`ferryman_upstream_calls_total`),
and the object bytes streamed through it (`storage_worker_transferred_bytes_total`, and the
current request's tally for its usage event). Spans carry the backend, the operation and the
object's size, never a key (keys may be user data).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Literal, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from ferryman.contracts import FerrymanError
from ferryman_runtime.resilience import Breaker, RetryPolicy
from ferryman_runtime.telemetry.spans import traced_span
from ferryman_runtime.upstreams.stats import UpstreamStats
from storage_worker.backends.port import Body, Listing, ObjectStore, Presigned, StoredObject
from storage_worker.metrics import StorageMetrics
from storage_worker.traffic import CountedBody, add_read, add_written

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]

_tracer = trace.get_tracer(__name__)


class ResilientStore:
    """An `ObjectStore` that retries and breaks around `store`.

    Args:
        store: the backend.
        breaker: the backend's breaker.
        retry: attempts and backoff of the calls that are retried.
        sleep: waits between attempts (injectable for tests).
        rng: the jitter's source (injectable for tests).
        stats: where every attempt's outcome goes (None: nowhere).
        metrics: where bytes moved and object sizes go (None: nowhere).
        remote: whether the backend is reached over the network (CLIENT spans) or is this
            machine's file system (INTERNAL spans).
        tracer: where the spans go (default: the global tracer provider's).
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        breaker: Breaker,
        retry: RetryPolicy,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        stats: UpstreamStats | None = None,
        metrics: StorageMetrics | None = None,
        remote: bool = True,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.name = store.name
        self.inner = store
        self._breaker = breaker
        self._retry = retry
        self._sleep = sleep
        self._rng = rng
        self._stats = stats or UpstreamStats()
        self._metrics = metrics
        self._kind = SpanKind.CLIENT if remote else SpanKind.INTERNAL
        self._tracer = tracer or _tracer

    @contextmanager
    def _span(self, operation: str) -> Iterator[Span]:
        """The span of one operation; a failure sets `error.type` to its error code
        (`traced_span`; the exception's text is left out: it may quote a key)."""
        attributes = {"storage.backend": self.name, "storage.operation": operation}
        with traced_span(
            self._tracer, f"storage {operation}", kind=self._kind, attributes=attributes
        ) as span:
            yield span

    def _sized(self, span: Span, operation: str, stored: StoredObject) -> None:
        span.set_attribute("storage.object.size", stored.size)
        if self._metrics is not None:
            self._metrics.sized(self.name, operation, stored.size)

    def _read(self, size: int) -> None:
        add_read(size)
        if self._metrics is not None:
            self._metrics.moved(self.name, "read", size)

    def _written(self, size: int) -> None:
        add_written(size)
        if self._metrics is not None:
            self._metrics.moved(self.name, "write", size)

    async def _measured(
        self, call: Callable[[], Awaitable[T]], not_ours: Callable[[BaseException], bool]
    ) -> T:
        """One attempt, in the backend's stats: `failed` when the backend failed (a
        retryable error), `rejected` when it refused the request (a client error) or the
        failure was not its own (`not_ours`)."""
        stats = self._stats
        stats.started()
        started = time.monotonic()
        failed = rejected = False
        try:
            return await call()
        except FerrymanError as exc:
            failed = exc.retryable and not not_ours(exc)
            rejected = not failed
            raise
        except Exception as exc:
            failed = not not_ours(exc)
            rejected = not failed
            raise
        except BaseException:  # cancelled: says nothing about the backend
            rejected = True
            raise
        finally:
            stats.finished(failed=failed, rejected=rejected, latency=time.monotonic() - started)

    async def _once(self, call: Callable[[], Awaitable[T]]) -> T:
        async with self._breaker.guard():
            return await self._measured(call, _never)

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
                    self._written(len(chunk))
                    yield chunk
            except BaseException as exc:
                body_failures.append(exc)
                raise

        def the_bodys(exc: BaseException) -> bool:
            return any(_caused_by(exc, failure) for failure in body_failures)

        body_failure: BaseException | None = None
        with self._span("put") as span:
            async with self._breaker.guard():
                try:
                    stored = await self._measured(
                        lambda: self.inner.put(
                            key,
                            watched(),
                            content_type=content_type,
                            metadata=metadata,
                            tags=tags,
                            sha256=sha256,
                            if_absent=if_absent,
                        ),
                        the_bodys,
                    )
                except BaseException as exc:
                    if not the_bodys(exc):
                        raise
                    body_failure = exc
                else:
                    self._sized(span, "put", stored)
                    return stored
            raise body_failure

    async def get(self, key: str) -> tuple[StoredObject, Body]:
        """See `ObjectStore.get` (opening the stream is retried, not a stream cut midway).

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        with self._span("get") as span:
            stored, body = await self._retried(lambda: self.inner.get(key))
            self._sized(span, "get", stored)
        return stored, CountedBody(body, self._read)

    async def head(self, key: str) -> StoredObject:
        """See `ObjectStore.head`.

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        with self._span("head"):
            return await self._retried(lambda: self.inner.head(key))

    async def list(
        self, prefix: str, *, delimiter: str | None, limit: int, token: str | None
    ) -> Listing:
        """See `ObjectStore.list`.

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        with self._span("list"):
            return await self._retried(
                lambda: self.inner.list(prefix, delimiter=delimiter, limit=limit, token=token)
            )

    async def delete(self, key: str) -> bool:
        """See `ObjectStore.delete`.

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        with self._span("delete"):
            return await self._retried(lambda: self.inner.delete(key))

    async def copy(self, source: str, key: str, *, if_absent: bool = False) -> StoredObject:
        """See `ObjectStore.copy` (a create-only copy is not retried: a first attempt that
        succeeded unseen would make the retry fail `conflict`).

        Raises:
            FerrymanError: as the backend, or `unavailable` while its circuit is open.
        """
        call = lambda: self.inner.copy(source, key, if_absent=if_absent)  # noqa: E731
        with self._span("copy") as span:
            stored = await (self._once(call) if if_absent else self._retried(call))
            self._sized(span, "copy", stored)
        return stored

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
        with self._span("metadata"):
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
        with self._span("presign"):
            return await self._retried(
                lambda: self.inner.presign(key, method, expires_in, content_type=content_type)
            )

    async def close(self) -> None:
        """Close the backend."""
        await self.inner.close()


def _never(_exc: BaseException) -> bool:
    return False


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
