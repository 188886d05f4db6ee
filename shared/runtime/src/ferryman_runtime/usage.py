"""Usage records: one `ferryman.usage.recorded` event per finished request, plus the token
and cost counters a dashboard reads.

Recording must never slow or fail a request: `UsageRecorder.record` prices the event,
counts it and puts it on a bounded queue; a background task publishes the queue. When the
queue is full (Kafka down for long) new records are dropped and counted, so the loss shows
in `ferryman_usage_events_total{outcome="dropped"}` rather than in memory growth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter

from ferryman.contracts.usage import USAGE_RECORDED, UsageEvent
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.log_throttle import LogThrottle
from ferryman_runtime.metric_labels import LabelBudget
from ferryman_runtime.pricing import PriceTable, TokenCounts
from ferryman_runtime.side_events import enqueue_event

logger = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED: Final = 10_000
"""Usage events waiting to be published, at most, before new ones are dropped."""

DEFAULT_STOP_TIMEOUT: Final = 5.0
"""Seconds `stop()` waits for the queue to be published and acknowledged."""

DEFAULT_MAX_TENANTS: Final = 50
DEFAULT_MAX_MODELS: Final = 20

PUBLISHED, FAILED, DROPPED = "published", "failed", "dropped"


class UsageMetrics:
    """`ferryman_usage_tokens_total`, `ferryman_usage_cost_usd_total` and
    `ferryman_usage_events_total` (the `service` label is added at scrape time)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "ferryman_usage_tokens_total",
            "Tokens used by finished requests, by tenant, model and token type (`input`,"
            " `output`; `cache_read` and `cache_write` are parts of `input`).",
            ["tenant", "gen_ai_request_model", "gen_ai_token_type"],
            registry=registry,
        )
        self.cost = Counter(
            "ferryman_usage_cost_usd_total",
            "USD the tokens of finished requests cost, by the worker's price table.",
            ["tenant", "gen_ai_request_model"],
            registry=registry,
        )
        self.events = Counter(
            "ferryman_usage_events_total",
            "Usage events by what became of them: published, failed (Kafka refused them) "
            "or dropped (the queue was full, or the worker stopped before sending them).",
            ["outcome"],
            registry=registry,
        )
        for outcome in (PUBLISHED, FAILED, DROPPED):
            self.events.labels(outcome)


class UsageRecorder:
    """Prices, counts and publishes usage events in the background.

    Args:
        publisher: the worker's publisher (read when an event is sent, so it may be
            created after the recorder).
        topic: the usage topic.
        source: the worker's `ce_source`.
        service: the worker's name, for logs.
        registry: where the usage counters go.
        prices: fills `cost_usd` and `price_table_version` of events with a model;
            None leaves them as given.
        tenants: maps tenants to label values (default: the first 50 pass).
        models: maps models to label values (default: the first 20 pass).
        max_queued: events waiting to be published at most; more are dropped.
        stop_timeout: seconds `stop()` waits for the queue to be acknowledged.
    """

    def __init__(
        self,
        publisher: Callable[[], KafkaPublisher],
        *,
        topic: str,
        source: str,
        service: str,
        registry: CollectorRegistry,
        prices: PriceTable | None = None,
        tenants: LabelBudget | None = None,
        models: LabelBudget | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        self._publisher = publisher
        self._topic = topic
        self._source = source
        self._service = service
        self._prices = prices
        self._tenants = tenants or LabelBudget(max_dynamic=DEFAULT_MAX_TENANTS)
        self._models = models or LabelBudget(max_dynamic=DEFAULT_MAX_MODELS)
        self._stop_timeout = stop_timeout
        self.metrics = UsageMetrics(registry)
        self._queue: asyncio.Queue[UsageEvent] = asyncio.Queue(max_queued)
        self._acks: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._throttle = LogThrottle(60.0)

    def record(self, event: UsageEvent) -> None:
        """Price and count `event`, and queue it for publishing. Never raises, never waits:
        a record the queue has no room for is dropped and counted."""
        try:
            event = self._priced(event)
            self._count(event)
        except Exception as exc:  # recording must never fail the request
            self._warn("usage not counted", exc)
        if self._stopped:
            self._outcome(DROPPED)
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._outcome(DROPPED)
            self._warn("usage queue full, event dropped", None)

    async def start(self) -> None:
        """Start publishing queued events (call once the worker's publisher is started)."""
        if self._task is None:
            self._stopped = False
            self._task = asyncio.create_task(self._run(), name=f"{self._service}-usage")

    async def stop(self) -> None:
        """Publish what is queued and wait for its acknowledgements, for at most the stop
        timeout; count what is left as dropped. Call it before the publisher stops."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), self._stop_timeout)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = self._queue.qsize() + len(self._acks)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._acks.clear()
        if left:
            self._outcome(DROPPED, left)
            logger.warning("%s stopped with %d usage events unpublished", self._service, left)

    @property
    def pending(self) -> int:
        """Events queued or sent and not yet acknowledged."""
        return self._queue.qsize() + len(self._acks)

    def _priced(self, event: UsageEvent) -> UsageEvent:
        if self._prices is None or event.model is None or event.cost_usd is not None:
            return event
        counts = TokenCounts(
            input=event.input_tokens,
            output=event.output_tokens,
            cache_read=event.cache_read_tokens,
            cache_write=event.cache_write_tokens,
            cache_write_long=event.cache_write_long_tokens,
            storage_token_hours=event.cache_storage_token_hours,
        )
        cost = self._prices.cost_of(event.model, counts)
        return event.model_copy(
            update={"cost_usd": cost, "price_table_version": self._prices.version}
        )

    def _count(self, event: UsageEvent) -> None:
        if event.model is None and not (event.input_tokens or event.output_tokens):
            return
        tenant = self._tenants(event.tenant)
        model = self._models(event.model)
        for token_type, tokens in (
            ("input", event.input_tokens),
            ("output", event.output_tokens),
            ("cache_read", event.cache_read_tokens),
            ("cache_write", event.cache_write_tokens),
        ):
            if tokens:
                self.metrics.tokens.labels(tenant, model, token_type).inc(tokens)
        if event.cost_usd:
            self.metrics.cost.labels(tenant, model).inc(event.cost_usd)

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._send(event)
            finally:
                self._queue.task_done()

    async def _send(self, event: UsageEvent) -> None:
        try:
            ack = await enqueue_event(
                self._publisher(),
                self._topic,
                USAGE_RECORDED,
                event,
                key=event.tenant or event.request_id,
                source=self._source,
                time=event.finished_at,
            )
        except asyncio.CancelledError:
            self._outcome(DROPPED)  # stop() gave up while the producer's buffer was full
            raise
        except Exception as exc:  # one lost record must not stop the loop
            self._outcome(FAILED)
            self._warn("usage event not published", exc)
            return
        self._acks.add(ack)
        ack.add_done_callback(self._acked)

    def _acked(self, ack: asyncio.Future[Any]) -> None:
        if ack not in self._acks:
            return  # counted as dropped by stop()
        self._acks.discard(ack)
        if ack.cancelled() or ack.exception() is not None:
            self._outcome(FAILED)
            self._warn("usage event not acknowledged", None if ack.cancelled() else ack.exception())
        else:
            self._outcome(PUBLISHED)

    async def _drained(self) -> None:
        await self._queue.join()
        while self._acks:
            await asyncio.wait(list(self._acks))

    def _outcome(self, outcome: str, count: int = 1) -> None:
        self.metrics.events.labels(outcome).inc(count)

    def _warn(self, what: str, exc: BaseException | None) -> None:
        suppressed = self._throttle.allow(what)
        if suppressed is None:
            return
        reason = f": {type(exc).__name__}" if exc is not None else ""
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        logger.warning("%s %s%s%s", self._service, what, reason, more)
