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
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from aiokafka import ConsumerRecord  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]
from pydantic import BaseModel, ValidationError

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
from ferryman_runtime.dead_letter import DeadLetterReason, publish_dead_letter
from ferryman_runtime.dedupe import RecentRequests
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.replies import ReplyStream
from ferryman_runtime.reply_topics import ReplyTopicPolicy, TopicDirectory
from ferryman_runtime.undecodable import UndecodableRecord

logger = logging.getLogger(__name__)

RequestT = TypeVar("RequestT", bound=BaseModel)
Record = ConsumerRecord[bytes, bytes]

_ECHOED_EXTENSIONS = (EXT_TRACEPARENT, EXT_TRACESTATE, EXT_TENANT, EXT_REPLY_TOKEN)
_DEAD_LETTERED_MEMORY = 10_000


class ValidationFailure(Exception):
    """The event decoded but its type, extensions or data are invalid."""


@dataclass(frozen=True)
class RequestSpec(Generic[RequestT]):
    """What a worker declares to the pipeline.

    Args:
        requests: accepted `ce_type` → the model its `data` must validate against.
        failed_type: the event type of this domain's `failed` reply.
        failed_model: the `failed` payload; built as `failed_model(error=ErrorInfo)`.
        noun: names the requests in error messages (`invalid <noun>: …`).
    """

    requests: Mapping[str, type[RequestT]]
    failed_type: str
    failed_model: type[BaseModel]
    noun: str = "request"


@dataclass(frozen=True)
class Job(Generic[RequestT]):
    """One validated request to execute, and where its replies go."""

    request: RequestT
    event: IncomingEvent
    replies: ReplyStream
    deadline: float | None
    """`loop.time()` by which the work must be done (the request's expiry), if any."""
    tenant: str | None
    tenant_share: float
    """This replica's share of the tenant's budget: 1 when the record is keyed by its tenant
    (all of the tenant's requests share one partition), else the replica's partition share."""

    @property
    def event_type(self) -> str:
        """The request's `ce_type`."""
        return self.event.type


class RequestService(Protocol[RequestT]):  # pyright: ignore[reportInvalidTypeVarUse]
    """A worker's service: executes a job and ends it with a terminal reply."""

    async def execute(self, job: Job[RequestT], /) -> None:
        """Run the job; provider/upstream failures end in `job.replies.fail(...)`.

        Raises:
            aiokafka.errors.KafkaError: replies were not acknowledged (the record is retried).
        """
        ...


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
        # Dead-lettered records → whether their `failed` reply went out too (each once).
        self._dead_lettered: OrderedDict[tuple[str, int, int], bool] = OrderedDict()

    async def __call__(self, record: Record, attempt: int) -> None:
        """Handle one record.

        Raises:
            aiokafka.errors.KafkaError: a reply or dead letter was not acknowledged;
                the record must be retried, not committed.
        """
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
        if expiry is not None and expiry <= datetime.now(UTC):
            info = ErrorInfo(
                code=ErrorCode.EXPIRED,
                message=f"request expired at {expiry.isoformat()} before work started",
                retryable=False,
            )
            await replies.fail(info)
            return True
        deadline = None
        if expiry is not None:
            remaining = (expiry - datetime.now(UTC)).total_seconds()
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
            logger.exception("handler failed on request %s", event.id)
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
        location = (record.topic, record.partition, record.offset)
        if location not in self._dead_lettered:
            # The dead letter first: a `failed` reply is sent once it is safely parked, and
            # only once however often the dead letter had to be retried.
            await publish_dead_letter(
                self._publisher,
                record,
                topic=self._dlq_topic,
                reason=reason,
                error=error,
                attempts=attempt,
            )
            self._metrics.dead_letters.labels(reason=reason.value).inc()
            self._dead_lettered[location] = False
            while len(self._dead_lettered) > _DEAD_LETTERED_MEMORY:
                self._dead_lettered.popitem(last=False)
            logger.warning(
                "dead-lettered %s:%d@%d (%s): %s",
                record.topic,
                record.partition,
                record.offset,
                reason,
                str(error)[:500],
            )
        if reply_to and request_id and not self._dead_lettered.get(location, True):
            if message is None:
                text = str(error)[:2000] if code is ErrorCode.INVALID_REQUEST else "internal error"
            else:
                text = message
            info = ErrorInfo(code=code, message=text, retryable=code is ErrorCode.UNAVAILABLE)
            await self._replies(reply_to, request_id, event).fail(info)
            self._dead_lettered[location] = True


def describe_validation_error(exc: ValidationError, noun: str = "request") -> str:
    """Summarize a pydantic error as `invalid <noun>: field.path: problem; …` for producers."""
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "data"
        problems.append(f"{location}: {error['msg']}")
    return f"invalid {noun}: {'; '.join(problems)}"
