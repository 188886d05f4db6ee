"""The request pipeline every worker runs: one Kafka record in, one execution, dead letter or
nothing (a duplicate) out.

decode → reply-topic check → type check → expiry → validation → dedupe → execute, with
errors handled the same way for every worker: Kafka errors propagate (the record is
retried, never committed unanswered), poison and bugs are dead-lettered with a `failed`
reply where one can be sent.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Generic

from aiokafka import ConsumerRecord  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]
from opentelemetry import trace
from pydantic import ValidationError

from ferryman.codec import (
    MAX_ATTRIBUTE_LENGTH,
    DecodeError,
    IncomingEvent,
    decode_event,
    header_value,
    reply_topic_hint,
)
from ferryman.contracts.errors import ErrorCode, ErrorInfo
from ferryman.contracts.events import (
    DLQ_REPLAY_OF,
    EXT_REPLY_TO,
    EXT_REPLY_TOKEN,
    EXT_TENANT,
    EXT_TRACEPARENT,
    EXT_TRACESTATE,
)
from ferryman.publisher import KafkaPublisher, is_record_too_large
from ferryman_runtime.dead_letter import DeadLetterReason
from ferryman_runtime.dedupe import RecentRequests
from ferryman_runtime.job import Job, RequestService, RequestSpec, RequestT
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.redaction import redact
from ferryman_runtime.rejections import Rejections
from ferryman_runtime.replies import ReplyStream, new_run_id
from ferryman_runtime.reply_topics import ReplyTopicPolicy, TopicDirectory
from ferryman_runtime.telemetry.consumer import consumer_span
from ferryman_runtime.telemetry.spans import mark_failed
from ferryman_runtime.undecodable import UndecodableRecord

logger = logging.getLogger(__name__)

Record = ConsumerRecord[bytes, bytes]

_ECHOED_EXTENSIONS = (EXT_TRACEPARENT, EXT_TRACESTATE, EXT_TENANT, EXT_REPLY_TOKEN)


class ValidationFailure(Exception):
    """The event decoded but its type, extensions or data are invalid."""


class RequestPipeline(Generic[RequestT]):
    """The record handler of a worker (see `ParallelConsumer`).

    Args:
        spec: the worker's request types and `failed` reply.
        service: executes valid requests.
        publisher: publishes replies and dead letters.
        recent: skips duplicate (`ce_source`, `ce_id`) pairs.
        metrics: counts dead letters and duplicates.
        source: `ce_source` of the events this worker publishes.
        reply_topics: which reply topics requests may name.
        directory: whether a reply topic exists (the worker never creates one).
        default_reply_topic: used when a request has no `replyto`.
        dlq_topic: where poison records go.
        share: this replica's share of the request topic's partitions.
        generation: the consumer group's generation (the first part of every run id).
        clock: the current time (UTC), for `expirytime`.
        group_id: the consumer group (an attribute of the `process` spans).
        tracer: starts the `process <topic>` spans (default: the global provider's).
    """

    def __init__(
        self,
        *,
        spec: RequestSpec[RequestT],
        service: RequestService[RequestT],
        publisher: KafkaPublisher,
        recent: RecentRequests,
        metrics: ConsumerMetrics,
        source: str,
        reply_topics: ReplyTopicPolicy,
        directory: TopicDirectory,
        default_reply_topic: str,
        dlq_topic: str,
        share: Callable[[], float] = lambda: 1.0,
        generation: Callable[[], int] = lambda: 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        group_id: str | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._spec = spec
        self._service = service
        self._publisher = publisher
        self._recent = recent
        self._metrics = metrics
        self._source = source
        self._policy = reply_topics
        self._directory = directory
        self._default_reply_topic = default_reply_topic
        self._dlq_topic = dlq_topic
        self._share = share
        self._generation = generation
        self._clock = clock
        self._rejections = Rejections(publisher=publisher, dlq_topic=dlq_topic, metrics=metrics)
        self._group_id = group_id
        self._tracer = tracer or trace.get_tracer("ferryman_runtime.pipeline")

    async def __call__(self, record: Record, attempt: int) -> None:
        """Handle one record, in a `process <topic>` CONSUMER span continuing the request's
        trace, with the request's id and tenant in the log context.

        Raises:
            aiokafka.errors.KafkaError: a reply or dead letter was not acknowledged;
                the record must be retried, not committed.
        """
        with consumer_span(self._tracer, record, attempt=attempt, group_id=self._group_id):
            await self._handle(record, attempt)

    async def _handle(self, record: Record, attempt: int) -> None:
        try:
            event = decode_event(record.headers, record.value)
        except DecodeError as exc:
            reply_to, request_id = await self._reply_hint(record)
            await self._reject(
                record, DeadLetterReason.DECODE, exc, attempt, reply_to, request_id, event=record
            )
            return
        tenant = event.extension(EXT_TENANT)
        reply_to = event.extension(EXT_REPLY_TO) or self._default_reply_topic
        refusal = await self._refusal(reply_to, tenant)
        if refusal is not None:
            # Nowhere safe to answer: the dead letter is the only record of it.
            await self._reject(
                record, DeadLetterReason.VALIDATION, ValidationFailure(refusal), attempt, None, None
            )
            return
        try:
            request, expiry = self._validate(event)
        except ValidationFailure as exc:
            await self._reject(
                record, DeadLetterReason.VALIDATION, exc, attempt, reply_to, event.id, event=event
            )
            return
        # A replayed dead letter is a new execution, not a duplicate of the one that failed.
        dedupe_id = event.id
        replay_of = header_value(record.headers, DLQ_REPLAY_OF)
        if replay_of is not None:
            dedupe_id = f"{event.id}\x00replay:{replay_of}"
        if not self._recent.try_begin(event.source, dedupe_id):
            self._metrics.duplicates.inc()
            logger.info("skipping duplicate request %s from %s", event.id, event.source)
            return
        completed = False
        try:
            completed = await self._run(record, attempt, event, request, expiry, reply_to)
        finally:
            if completed:
                self._recent.finish(event.source, dedupe_id)
            else:
                self._recent.abandon(event.source, dedupe_id)

    async def dead_letter_exhausted(
        self, record: Record, attempts: int, error: BaseException
    ) -> None:
        """Dead-letter a record whose handling failed `attempts` times (the consumer's
        `on_exhausted`); its requester gets a `failed` reply when one can be sent.

        Raises:
            aiokafka.errors.KafkaError: the dead letter was not acknowledged.
        """
        with consumer_span(self._tracer, record, attempt=attempts, group_id=self._group_id):
            await self._dead_letter_exhausted(record, attempts, error)

    async def _dead_letter_exhausted(
        self, record: Record, attempts: int, error: BaseException
    ) -> None:
        event: IncomingEvent | Record = record
        try:
            event = decode_event(record.headers, record.value)
        except DecodeError:
            reply_to, request_id = await self._reply_hint(record)
        else:  # it was a valid request: answer where it asked (or the default topic)
            reply_to = event.extension(EXT_REPLY_TO) or self._default_reply_topic
            request_id = event.id
            if await self._refusal(reply_to, event.extension(EXT_TENANT)) is not None:
                reply_to = None
        await self._reject(
            record,
            DeadLetterReason.HANDLER,
            error,
            attempts,
            reply_to,
            request_id,
            code=ErrorCode.UNAVAILABLE,
            message=f"results could not be delivered after {attempts} attempts",
            event=event,
        )

    async def dead_letter_undecodable(self, record: UndecodableRecord) -> None:
        """Dead-letter a record Kafka's client could not even parse (the consumer's
        `on_undecodable`); header keys that are not UTF-8 are kept backslash-escaped.

        Raises:
            aiokafka.errors.KafkaError: the dead letter was not acknowledged.
        """
        await self._reject(
            record.as_consumer_record(), DeadLetterReason.DECODE, record.error, 1, None, None
        )

    async def _run(
        self,
        record: Record,
        attempt: int,
        event: IncomingEvent,
        request: RequestT,
        expiry: datetime | None,
        reply_to: str,
    ) -> bool:
        """Execute (or expire) the request; return whether it reached a terminal reply."""
        replies = self._replies(reply_to, event.id, event)
        if expiry is not None and expiry <= self._clock():
            info = ErrorInfo(
                code=ErrorCode.EXPIRED,
                message=f"request expired at {expiry.isoformat()} before work started",
                retryable=False,
            )
            await replies.fail(info)
            mark_failed(trace.get_current_span(), info.code)
            return True
        deadline = None
        if expiry is not None:
            remaining = (expiry - self._clock()).total_seconds()
            deadline = asyncio.get_running_loop().time() + remaining
        tenant = event.extension(EXT_TENANT)
        # A record keyed by its tenant shares a partition with all of that tenant's
        # requests, so this replica owns the tenant's whole budget; otherwise its share.
        keyed = tenant is not None and record.key == tenant.encode()
        job = Job(
            request=request,
            event=event,
            replies=replies,
            deadline=deadline,
            tenant=tenant,
            tenant_share=1.0 if keyed else self._share(),
        )
        try:
            await self._service.execute(job)
        except KafkaError as exc:
            if not is_record_too_large(exc):
                raise  # results not acknowledged: retry the record, do not commit
            # Retrying cannot help: end the request with a small `failed` in the same run.
            logger.warning("a reply to %s is larger than %s accepts", event.id, reply_to)
            info = ErrorInfo(
                code=ErrorCode.TOO_LARGE,
                message=f"a reply event was larger than reply topic {reply_to!r} accepts",
                retryable=False,
            )
            await replies.fail(info)
        except Exception as exc:
            # A bug, not an upstream failure (those end in `failed` inside the service).
            # The message may quote upstream text that escaped an adapter's mapping: redacted,
            # and the traceback (which repeats it verbatim) only at debug level.
            logger.error(
                "handler failed on request %s: %s: %s",
                event.id,
                type(exc).__name__,
                redact(str(exc))[:500],
            )
            logger.debug("handler failure on request %s", event.id, exc_info=True)
            await self._reject(
                record,
                DeadLetterReason.HANDLER,
                exc,
                attempt,
                None if replies.finished else reply_to,
                event.id,
                code=ErrorCode.INTERNAL,
                event=event,
            )
            return False
        if not replies.finished:
            logger.error("service returned without a terminal reply for %s", event.id)
            info = ErrorInfo(code=ErrorCode.INTERNAL, message="internal error", retryable=False)
            await replies.fail(info)
        if replies.failure is not None:
            mark_failed(trace.get_current_span(), replies.failure.code)
        return True

    def _replies(
        self, topic: str, request_id: str, event: IncomingEvent | Record | None
    ) -> ReplyStream:
        extensions: dict[str, str] = {}
        for name in _ECHOED_EXTENSIONS:
            if isinstance(event, IncomingEvent):
                value = event.extension(name)
            elif event is not None:  # undecodable: echo what its headers say (reply token)
                value = header_value(event.headers, f"ce_{name}")
                if value is not None and len(value) > MAX_ATTRIBUTE_LENGTH:
                    value = None
            else:
                value = None
            if value is not None:
                extensions[name] = value
        return ReplyStream(
            self._publisher,
            topic=topic,
            request_id=request_id,
            source=self._source,
            extensions=extensions,
            failed_type=self._spec.failed_type,
            failed_model=self._spec.failed_model,
            run_id=new_run_id(self._generation()),
            tracer=self._tracer,
        )

    async def _refusal(self, topic: str, tenant: str | None) -> str | None:
        refusal = self._policy.refusal(topic, tenant)
        if refusal is None and not await self._directory.exists(topic):
            refusal = f"replyto {topic!r} does not exist (the worker does not create reply topics)"
        return refusal

    async def _reply_hint(self, record: Record) -> tuple[str | None, str | None]:
        """Best-effort reply topic and id of a record that did not decode."""
        request_id = header_value(record.headers, "ce_id")
        if not request_id or len(request_id) > MAX_ATTRIBUTE_LENGTH:
            return None, None
        reply_to = reply_topic_hint(record.headers)
        if reply_to is None:  # too broken to guess that its producer reads the default topic
            return None, None
        tenant = header_value(record.headers, f"ce_{EXT_TENANT}")
        if await self._refusal(reply_to, tenant) is not None:
            return None, None
        return reply_to, request_id

    def _validate(self, event: IncomingEvent) -> tuple[RequestT, datetime | None]:
        model = self._spec.requests.get(event.type)
        if model is None:
            accepted = ", ".join(repr(t) for t in self._spec.requests)
            raise ValidationFailure(f"ce_type must be one of {accepted}, got {event.type!r}")
        try:
            expiry = event.expiry()
        except DecodeError as exc:
            raise ValidationFailure(str(exc)) from exc
        data = event.data
        if not isinstance(data, dict):
            raise ValidationFailure(f"data must be a JSON object (the {self._spec.noun})")
        try:
            return model.model_validate(data), expiry
        except ValidationError as exc:
            raise ValidationFailure(describe_validation_error(exc, self._spec.noun)) from exc

    async def _reject(
        self,
        record: Record,
        reason: DeadLetterReason,
        error: BaseException,
        attempt: int,
        reply_to: str | None,
        request_id: str | None,
        *,
        code: ErrorCode = ErrorCode.INVALID_REQUEST,
        message: str | None = None,
        event: IncomingEvent | Record | None = None,
    ) -> None:
        mark_failed(trace.get_current_span(), f"dead_letter.{reason.value}")
        reply = None
        if reply_to and request_id:
            reply = self._replies(reply_to, request_id, event)
        await self._rejections.reject(
            record, reason, error, attempt, reply, code=code, message=message
        )


def describe_validation_error(exc: ValidationError, noun: str = "request") -> str:
    """Summarize a pydantic error as `invalid <noun>: field.path: problem; …` for producers."""
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "data"
        problems.append(f"{location}: {error['msg']}")
    return f"invalid {noun}: {'; '.join(problems)}"
