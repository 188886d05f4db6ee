"""The exact-match response cache (docs/caching.md, "Response cache"): which requests it
applies to, their lookup before routing, the replay of a hit as the same events, the store
of a fresh answer after its `completed`, and invalidation by tenant or key prefix.

The backend sits behind a circuit breaker and a lookup deadline: a slow, failing or
unreachable backend makes misses, never failed requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeVar

from opentelemetry import trace

from ferryman.contracts import (
    CacheInvalidation,
    ChatChunk,
    ChatCompleted,
    ChunkDelta,
    ErrorCode,
    FerrymanError,
    Latency,
    Usage,
)
from ferryman.contracts.llm import ChatRequest, ImagePart
from ferryman_runtime.resilience import Breaker
from llm_worker.caching.backends import MemoryStore, ResponseStore
from llm_worker.caching.entries import CachedResponse
from llm_worker.caching.response_key import TargetDefaults, prefix_key, response_key
from llm_worker.chat.job import ChatJob, RequestState
from llm_worker.metrics import ResponseCacheMetrics
from llm_worker.routing.config import Route
from llm_worker.settings import ResponseCacheSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

UPSTREAM: Final = "response-cache"
"""The breaker's and errors' name for the backend."""

Target = tuple[str, str, str | None]
"""A deployment as the key sees it: `(provider, model, endpoint)` (endpoint: its own base
URL, None for the worker's)."""

STORED_FINISHES: Final = frozenset({"stop", "length", "tool_calls"})
"""Answers with another finish reason (a content filter, an error) are not stored."""


@dataclass(frozen=True)
class CacheDecision:
    """The cache applies to a request: how its answer is keyed and kept."""

    target: str
    """The metrics label: the route's alias, or `direct`."""
    namespace: str | None
    ttl: int
    """Seconds a stored answer is kept."""
    refresh: bool
    """Skip the lookup; store the fresh answer."""


@dataclass
class CacheTicket:
    """The response cache's part of one request: whether it applies, and what served."""

    decision: CacheDecision | None = None
    served: Target | None = None
    """The deployment that answered."""
    chunks: list[ChunkDelta] = field(default_factory=list[ChunkDelta])
    outcome: Literal["hit", "stored"] | None = None


class ResponseCache:
    """The worker's response cache over one backend.

    Args:
        store: the backend.
        settings: the worker's bounds (TTLs, entry size, lookup deadline).
        metrics: where lookups, skips, bytes and errors are counted.
        backend: the backend's name (`memory`, `redis`) for `/health`.
        defaults: the worker's per-target settings that are part of the key.
        breaker: guards the backend (default: 5 failures open it for 30 s).
        clock: wall-clock seconds since the epoch (stored_at, expiry).
    """

    def __init__(
        self,
        store: ResponseStore,
        settings: ResponseCacheSettings,
        metrics: ResponseCacheMetrics,
        *,
        backend: str,
        defaults: TargetDefaults | None = None,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend_store = store
        self.backend = backend
        self._settings = settings
        self._metrics = metrics
        self._defaults = defaults or (lambda _provider, _model: {})
        self._breaker = breaker or Breaker(UPSTREAM, fail_max=5, reset_timeout=30.0)
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        if isinstance(store, MemoryStore):
            memory = store
            metrics.watch_store(lambda: len(memory), lambda: memory.held_bytes)

    def policy(self, job: ChatJob, route: Route, target: str) -> CacheDecision | None:
        """Whether the cache applies to `job` on `route` (None: it does not; a request the
        cache was on for but that may not be cached is counted by reason)."""
        request = job.request
        options = request.response_cache
        config = route.response_cache
        if not (options.use if options is not None else config.enabled):
            return None
        skip = _skip_reason(job, config.cache_sampled)
        if skip is not None:
            self._metrics.skips.labels(reason=skip).inc()
            return None
        wanted = (options.ttl if options else None) or config.ttl or self._settings.default_ttl
        ttl = min(wanted, config.max_ttl or wanted, self._settings.max_ttl)
        return CacheDecision(
            target=target,
            namespace=(options.namespace if options else None) or config.namespace,
            ttl=ttl,
            refresh=options.refresh if options else False,
        )

    async def answer(self, state: RequestState, ticket: CacheTicket) -> ChatCompleted | None:
        """The request's answer from the cache, replayed (None: a miss, or the cache does not
        apply). Fills `ticket` so that a fresh answer can be stored, and has the request's
        calls record their deltas.

        Raises:
            aiokafka.errors.KafkaError: a replayed chunk could not be enqueued.
        """
        job = state.job
        config = state.table.config
        route = config.routes[job.request.model]
        decision = self.policy(job, route, state.alias)
        if decision is None:
            return None
        ticket.decision = decision
        state.record = True
        if decision.refresh:
            return None
        # The route's own deployments only: a healthy route never serves a fallback's answer.
        deployments = [config.deployments[name] for name in route.deployments]
        entry = await self.lookup(
            job, decision, [(d.provider, d.model, d.endpoint) for d in deployments]
        )
        if entry is None:
            return None
        trace.get_current_span().add_event("response_cache.hit")
        completed = await self.replay(job, entry, state.started)
        zero = Usage(input_tokens=0, output_tokens=0)
        job.tally.answered(f"{completed.provider}/{completed.model}", zero)
        ticket.outcome = "hit"
        return completed

    def key(
        self,
        job: ChatJob,
        decision: CacheDecision,
        provider: str,
        model: str,
        endpoint: str | None = None,
    ) -> str:
        """The key of `job`'s answer from `provider/model` (at `endpoint`, the deployment's
        own base URL, when it has one)."""
        assert job.tenant is not None  # policy() admits only requests with a tenant
        return response_key(
            job.request,
            tenant=job.tenant,
            namespace=decision.namespace,
            provider=provider,
            model=model,
            endpoint=endpoint,
            defaults=self._defaults(provider, model),
        )

    async def lookup(
        self, job: ChatJob, decision: CacheDecision, targets: Sequence[Target]
    ) -> CachedResponse | None:
        """The stored answer of the first of `targets` (in route order)
        that has one, in one backend round trip; None on a miss, an error, a timeout or an
        open breaker (counted as `error`)."""
        keys = list(dict.fromkeys(self.key(job, decision, *target) for target in targets))
        lookups = self._metrics.lookups
        try:
            blobs = await self._guarded("get", lambda: self.backend_store.get(keys))
        except FerrymanError:
            lookups.labels(target=decision.target, outcome="error").inc()
            return None
        for key, blob in zip(keys, blobs, strict=True):
            if blob is None:
                continue
            try:
                entry = CachedResponse.from_bytes(blob)
            except ValueError:
                self._metrics.errors.labels(operation="get").inc()
                continue  # another version's layout: as good as absent
            if entry.key != key:
                continue
            lookups.labels(target=decision.target, outcome="hit").inc()
            self._metrics.bytes.labels(direction="served").inc(len(blob))
            return entry
        lookups.labels(target=decision.target, outcome="miss").inc()
        return None

    async def replay(self, job: ChatJob, entry: CachedResponse, started: float) -> ChatCompleted:
        """Publish a hit's chunks (when the request streams) and return its `completed`:
        `cached`, zero usage, the original usage beside it.

        Args:
            job: the request served from the cache.
            entry: its stored answer.
            started: `time.monotonic()` when the request's work began.

        Raises:
            aiokafka.errors.KafkaError: a chunk could not be enqueued.
        """
        first_ms: float | None = None
        chunks = entry.chunks if job.request.stream else []
        for index, delta in enumerate(chunks):
            await job.replies.chunk(ChatChunk(index=index, delta=delta, attempt=1, step=job.step))
            if first_ms is None:
                first_ms = _ms_since(started)
        stored = entry.completed
        return stored.model_copy(
            update={
                "cached": True,
                "usage": Usage(input_tokens=0, output_tokens=0),
                "original_usage": stored.usage,
                "cached_at": entry.stored_at,
                "attempts": [],
                "chunk_count": len(chunks),
                "latency_ms": Latency(first_token=first_ms, total=_ms_since(started)),
            }
        )

    def keep(self, job: ChatJob, ticket: CacheTicket, completed: ChatCompleted) -> None:
        """Store a fresh answer whose `completed` was published, when `ticket` says the cache
        applies (`ticket.outcome` becomes `stored`)."""
        decision, served = ticket.decision, ticket.served
        if decision is None or served is None or ticket.outcome == "hit":
            return
        if self.store(job, decision, served, completed, ticket.chunks):
            ticket.outcome = "stored"

    def store(
        self,
        job: ChatJob,
        decision: CacheDecision,
        target: Target,
        completed: ChatCompleted,
        chunks: list[ChunkDelta],
    ) -> bool:
        """Store a fresh answer served by `target` in the background;
        return whether it is being stored (an unfinished, degraded or too large answer is
        not, and is counted by reason)."""
        if completed.finish_reason not in STORED_FINISHES or completed.degraded:
            self._metrics.skips.labels(reason="unfinished").inc()
            return False
        key = self.key(job, decision, *target)
        now = datetime.fromtimestamp(self._clock(), UTC)
        kept = completed.model_copy(
            update={"attempts": None, "stream_attempt": None, "chunk_count": len(chunks)}
        )
        entry = CachedResponse(
            key=key,
            chunks=chunks,
            completed=kept,
            stored_at=now,
            expires_at=now + timedelta(seconds=decision.ttl),
        )
        blob = entry.to_bytes()
        if len(blob) > self._settings.max_entry_bytes:
            self._metrics.skips.labels(reason="too_large").inc()
            return False
        self._spawn(self._put(key, blob, decision.ttl))
        return True

    def invalidate_soon(self, invalidation: CacheInvalidation, at: datetime, marker: str) -> None:
        """Run `invalidate` in the background (the control topic's handlers are synchronous)."""
        self._spawn(self.invalidate(invalidation, at, marker))

    async def invalidate(self, invalidation: CacheInvalidation, at: datetime, marker: str) -> int:
        """Drop the answers `invalidation` names that were stored before `at`; return how
        many this replica dropped (errors are counted and logged, never raised)."""
        prefix = prefix_key(invalidation.tenant, invalidation.prefix)
        try:
            dropped = await self.backend_store.invalidate(prefix, at, marker)
        except Exception as exc:  # a backend failure must not stop the control reader
            self._metrics.errors.labels(operation="invalidate").inc()
            logger.warning("response cache invalidation failed: %s", type(exc).__name__)
            return 0
        self._metrics.invalidations.labels(scope=invalidation.scope).inc()
        logger.info("response cache: %d answers invalidated (%s)", dropped, invalidation.scope)
        return dropped

    def status(self) -> dict[str, Any]:
        """The cache's part of `/health`."""
        status: dict[str, Any] = {"backend": self.backend, "breaker": self._breaker.state}
        if isinstance(self.backend_store, MemoryStore):
            status["entries"] = len(self.backend_store)
        return status

    async def drain(self) -> None:
        """Wait for the stores and invalidations under way."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Drain, then close the backend."""
        await self.drain()
        await self.backend_store.aclose()

    async def _put(self, key: str, blob: bytes, ttl: int) -> None:
        try:
            await self._guarded("put", lambda: self.backend_store.put(key, blob, ttl))
        except FerrymanError:
            return
        self._metrics.bytes.labels(direction="stored").inc(len(blob))

    async def _guarded(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one backend call under the breaker and the lookup deadline (puts: ten times
        it).

        Raises:
            FerrymanError: `unavailable` (retryable): the call failed, timed out, or the
                breaker is open.
        """
        timeout = self._settings.lookup_timeout * (1 if operation == "get" else 10)
        try:
            async with self._breaker.guard():
                try:
                    async with asyncio.timeout(timeout):
                        return await call()
                except Exception as exc:
                    raise FerrymanError(
                        ErrorCode.UNAVAILABLE,
                        f"response cache {operation} failed ({type(exc).__name__})",
                        retryable=True,
                        upstream=UPSTREAM,
                    ) from exc
        except FerrymanError:
            self._metrics.errors.labels(operation=operation).inc()
            raise

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _skip_reason(job: ChatJob, cache_sampled: bool) -> str | None:
    """Why a request the cache is on for may not be cached (None: it may)."""
    request = job.request
    if request.mcp_toolsets():
        return "tool_loop"
    if not job.tenant:  # an empty tenant is none: it must not share one cache space
        return "no_tenant"
    if not (request.temperature == 0 or request.seed is not None or cache_sampled):
        return "sampled"
    if job.unresolved is not None and _presigned(job.unresolved, request):
        return "presigned"
    return None


def _presigned(sent: ChatRequest, resolved: ChatRequest) -> bool:
    """Whether resolving datarefs put an image URL in the request (presigned: it changes
    from run to run, so the request can never be found again)."""
    before = set(_image_urls(sent))
    return any(not url.startswith("data:") and url not in before for url in _image_urls(resolved))


def _image_urls(request: ChatRequest) -> list[str]:
    return [
        part.image_url.url
        for message in request.messages
        if not isinstance(message.content, str | None)
        for part in message.content
        if isinstance(part, ImagePart)
    ]


def _ms_since(started: float) -> float:
    return round(max(0.0, time.monotonic() - started) * 1000.0, 3)
