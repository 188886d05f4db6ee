"""Publishes one execution's reply events (progress, then one terminal event) to its reply topic."""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false

from __future__ import annotations

import asyncio
import secrets
import time
from contextlib import AbstractContextManager, nullcontext

from aiokafka.structs import RecordMetadata  # pyright: ignore[reportMissingTypeStubs]
from opentelemetry import trace
from pydantic import BaseModel

from ferryman.codec import BinaryHeaders
from ferryman.contracts.errors import ErrorInfo
from ferryman.contracts.events import EXT_RUN_ID
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.sent_messages import KnowsConfiguredTopics
from ferryman_runtime.telemetry.spans import producer_span, with_current_trace

_last_millis = 0


def new_run_id(generation: int = 0, clock_ns: int | None = None) -> str:
    """Return a run id: unique, and sorting (as a string) in the order runs started.

    The consumer group's generation first (a redelivery after a crash or a rebalance
    happens in a greater one, whatever the replicas' clocks say), then milliseconds since
    the epoch (strictly increasing within a process: a retry on the same replica), then
    48 random bits.
    """
    global _last_millis
    millis = (time.time_ns() if clock_ns is None else clock_ns) // 1_000_000
    millis = _last_millis = max(millis, _last_millis + 1)
    return f"{max(generation, 0):010d}-{millis:013d}-{secrets.token_hex(6)}"


class ReplyStream:
    """The reply events of one execution of one request, keyed by the request id, in order.

    Progress events are enqueued without waiting for each acknowledgement (the idempotent
    producer keeps their order); the terminal event waits for all of them, so the request's
    offset is committed only after everything landed. Every event carries the run id
    (`ce_runid`); event ids are `<run id>.<sequence>`, so a consumer can recognise a duplicate
    and a rerun without any other state.

    Events carry the trace context of the span current when they are sent: the terminal
    event is published in a PRODUCER span and carries that span's context. That span is
    `send <topic>` when the publisher knows `topic` as one of the worker's configured topics
    (`KnowsConfiguredTopics`), and `send reply` otherwise.

    Whether to trace is decided once, when the stream is created (the pipeline creates it in
    the request's `process` span): with no valid span current then, tracing is off, the
    stream starts no span and its events echo the request's trace context, without looking
    up the current span per event.

    Args:
        publisher: the worker's producer.
        topic: the reply topic.
        request_id: the request's `ce_id` (the Kafka key and `ce_correlationid`).
        source: `ce_source` naming the worker.
        extensions: extensions echoed from the request (trace context, tenant, reply token).
        failed_type: the event type of this domain's `failed` event.
        failed_model: builds the `failed` payload from an `ErrorInfo`.
        run_id: this execution's id (a new one by default).
        tracer: starts the `send` span (default: the global provider's).
    """

    def __init__(
        self,
        publisher: KafkaPublisher,
        *,
        topic: str,
        request_id: str,
        source: str,
        extensions: dict[str, str],
        failed_type: str,
        failed_model: type[BaseModel],
        run_id: str | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._publisher = publisher
        self.topic = topic
        self.request_id = request_id
        self.run_id = run_id or new_run_id()
        self._key = request_id.encode()
        self._source = source
        self._extensions = {**extensions, EXT_RUN_ID: self.run_id}
        self._failed_type = failed_type
        self._failed_model = failed_model
        self._pending: list[asyncio.Future[RecordMetadata]] = []
        # Per event type (and current span id, when traced): a stream's chunks share one.
        self._headers: dict[str | tuple[str, int], BinaryHeaders] = {}
        self._sequence = 0
        self._tracer = tracer or trace.get_tracer("ferryman_runtime.replies")
        # With tracing on, even a span the sampler dropped is valid; with it off, every span
        # the request starts is invalid, so no event needs the lookup.
        self._traced = trace.get_current_span().get_span_context().is_valid
        self._configured = (
            self._traced
            and isinstance(publisher, KnowsConfiguredTopics)
            and publisher.is_configured(topic)
        )
        self.finished = False
        """True once a terminal event was acknowledged."""
        self.failure: ErrorInfo | None = None
        """The error of the terminal event when it is this domain's `failed` event."""

    async def emit(self, event_type: str, payload: BaseModel) -> None:
        """Enqueue a non-terminal event.

        Raises:
            aiokafka.errors.KafkaError: the producer refused the record.
        """
        await self._send(event_type, payload)

    async def finish(self, event_type: str, payload: BaseModel) -> None:
        """Publish the terminal event and wait until every event of this run is acknowledged.

        Raises:
            aiokafka.errors.KafkaError: some event was not acknowledged.
        """
        with self._send_span(event_type):
            await self._send(event_type, payload)
            await self._wait()
        if event_type == self._failed_type:
            error = getattr(payload, "error", None)
            self.failure = error if isinstance(error, ErrorInfo) else None
        self.finished = True

    async def fail(self, error: ErrorInfo) -> None:
        """Publish this domain's `failed` event as the terminal event.

        Raises:
            aiokafka.errors.KafkaError: some event was not acknowledged.
        """
        await self.finish(self._failed_type, self._failed_model(error=error))

    def _send_span(self, event_type: str) -> AbstractContextManager[object]:
        """The terminal event's `send` span (none when tracing is off)."""
        if not self._traced:
            return nullcontext()
        event_id = f"{self.run_id}.{self._sequence}"
        attributes = {"messaging.message.id": event_id, "cloudevents.event_type": event_type}
        return producer_span(self._tracer, self.topic, attributes, configured=self._configured)

    async def _send(self, event_type: str, payload: BaseModel) -> None:
        # What model_dump_json(exclude_none=True) returns, without its str round trip.
        value = payload.__pydantic_serializer__.to_json(payload, exclude_none=True)
        traced = self._traced
        key: str | tuple[str, int] = event_type
        if traced:
            key = (event_type, trace.get_current_span().get_span_context().span_id)
        make_headers = self._headers.get(key)
        if make_headers is None:
            make_headers = self._headers[key] = BinaryHeaders(
                event_type=event_type,
                source=self._source,
                correlation_id=self.request_id,
                extensions=with_current_trace(self._extensions) if traced else self._extensions,
            )
        headers = make_headers(f"{self.run_id}.{self._sequence}")
        self._sequence += 1
        self._pending.append(
            await self._publisher.send(self.topic, value, key=self._key, headers=headers)
        )

    async def _wait(self) -> None:
        pending, self._pending = self._pending, []
        # Most chunks are acknowledged by now; gathering them would schedule a callback each.
        # The rest keep their order, so the first failure raised is the same as over them all.
        unsettled = [
            f for f in pending if not f.done() or f.cancelled() or f.exception() is not None
        ]
        await asyncio.gather(*unsettled)
