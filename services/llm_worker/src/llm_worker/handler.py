"""Turns one Kafka record into one executed request, a dead letter, or nothing (a duplicate)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from ferryman.codec import (
    DecodeError,
    IncomingEvent,
    decode_event,
    header_value,
    reply_topic_hint,
)
from ferryman.contracts import LLM_CHAT_REQUESTED, ChatRequest, ErrorCode, ErrorInfo
from ferryman.contracts.events import EXT_REPLY_TO, EXT_TENANT, EXT_TRACEPARENT, EXT_TRACESTATE
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.dead_letter import DeadLetterReason, publish_dead_letter
from ferryman_runtime.dedupe import RecentRequests
from ferryman_runtime.metrics import ConsumerMetrics
from llm_worker.replies import ReplyStream
from llm_worker.service import ChatJob, ChatService

logger = logging.getLogger(__name__)

_ECHOED_EXTENSIONS = (EXT_TRACEPARENT, EXT_TRACESTATE, EXT_TENANT)
_DEAD_LETTERED_MEMORY = 10_000
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


class ValidationFailure(Exception):
    """The event decoded but its type, extensions or data are invalid."""


class ChatRequestHandler:
    """The record handler of the LLM worker (see `ParallelConsumer`).

    Args:
        service: executes valid requests.
        publisher: publishes replies and dead letters.
        recent: skips duplicate (`ce_source`, `ce_id`) pairs.
        metrics: counts dead letters and duplicates.
        source: `ce_source` of the events this worker publishes.
        default_reply_topic: used when a request has no `replyto`.
        dlq_topic: where poison records go.
        share: this replica's share of the request topic's partitions (for tenant quotas
            of requests not keyed by their tenant).
    """

    def __init__(
        self,
        *,
        service: ChatService,
        publisher: KafkaPublisher,
        recent: RecentRequests,
        metrics: ConsumerMetrics,
        source: str,
        default_reply_topic: str,
        dlq_topic: str,
        share: Callable[[], float] = lambda: 1.0,
    ) -> None:
        self._service = service
        self._share = share
        self._publisher = publisher
        self._recent = recent
        self._metrics = metrics
        self._source = source
        self._default_reply_topic = default_reply_topic
        self._dlq_topic = dlq_topic
        self._dead_lettered: OrderedDict[tuple[str, int, int], None] = OrderedDict()

    async def __call__(self, record: ConsumerRecord[bytes, bytes], attempt: int) -> None:
        """Handle one record.

        Raises:
            aiokafka.errors.KafkaError: a reply or dead letter was not acknowledged;
                the record must be retried, not committed.
        """
        try:
            event = decode_event(record.headers, record.value)
        except DecodeError as exc:
            reply_to = reply_topic_hint(record.headers)
            if reply_to is not None and not _TOPIC_NAME.fullmatch(reply_to):
                reply_to = None
            request_id = header_value(record.headers, "ce_id")
            await self._reject(record, DeadLetterReason.DECODE, exc, attempt, reply_to, request_id)
            return
        reply_to = event.extension(EXT_REPLY_TO) or self._default_reply_topic
        if not _TOPIC_NAME.fullmatch(reply_to):
            reply_to = ""
        try:
            request, expiry = _validate(event)
        except ValidationFailure as exc:
            await self._reject(
                record, DeadLetterReason.VALIDATION, exc, attempt, reply_to, event.id
            )
            return
        if not self._recent.try_begin(event.source, event.id):
            self._metrics.duplicates.inc()
            logger.info("skipping duplicate request %s from %s", event.id, event.source)
            return
        try:
            replies = ReplyStream(
                self._publisher,
                topic=reply_to,
                request_id=event.id,
                source=self._source,
                extensions={
                    name: value
                    for name in _ECHOED_EXTENSIONS
                    if (value := event.extension(name)) is not None
                },
            )
            if expiry is not None and expiry <= datetime.now(UTC):
                await replies.failed(
                    ErrorInfo(
                        code=ErrorCode.EXPIRED,
                        message=f"request expired at {expiry.isoformat()} before work started",
                        retryable=False,
                    )
                )
            else:
                deadline = None
                if expiry is not None:
                    remaining = (expiry - datetime.now(UTC)).total_seconds()
                    deadline = asyncio.get_running_loop().time() + remaining
                await self._execute(record, attempt, event, request, replies, deadline)
        except BaseException:
            self._recent.abandon(event.source, event.id)
            raise
        self._recent.finish(event.source, event.id)

    async def _execute(
        self,
        record: ConsumerRecord[bytes, bytes],
        attempt: int,
        event: IncomingEvent,
        request: ChatRequest,
        replies: ReplyStream,
        deadline: float | None,
    ) -> None:
        tenant = event.extension(EXT_TENANT)
        # A record keyed by its tenant shares a partition with all of that tenant's
        # requests, so this replica owns the tenant's whole budget; otherwise its share.
        keyed = tenant is not None and record.key == tenant.encode()
        job = ChatJob(
            request=request,
            replies=replies,
            deadline=deadline,
            tenant=tenant,
            tenant_share=1.0 if keyed else self._share(),
        )
        try:
            await self._service.execute(job)
        except KafkaError:
            raise  # results not acknowledged: retry the record, do not commit
        except Exception as exc:
            # A bug, not a provider failure (those end in `failed` inside the service).
            logger.exception("handler failed on request %s", event.id)
            reply_to = event.extension(EXT_REPLY_TO) or self._default_reply_topic
            await self._reject(
                record,
                DeadLetterReason.HANDLER,
                exc,
                attempt,
                reply_to,
                event.id,
                code=ErrorCode.INTERNAL,
            )

    async def _reject(
        self,
        record: ConsumerRecord[bytes, bytes],
        reason: DeadLetterReason,
        error: Exception,
        attempt: int,
        reply_to: str | None,
        request_id: str | None,
        *,
        code: ErrorCode = ErrorCode.INVALID_REQUEST,
    ) -> None:
        location = (record.topic, record.partition, record.offset)
        sends = []
        if location not in self._dead_lettered:
            sends.append(
                publish_dead_letter(
                    self._publisher,
                    record,
                    topic=self._dlq_topic,
                    reason=reason,
                    error=error,
                    attempts=attempt,
                )
            )
        if reply_to and request_id:
            replies = ReplyStream(
                self._publisher,
                topic=reply_to,
                request_id=request_id,
                source=self._source,
                extensions={},
            )
            message = str(error)[:2000] if code is ErrorCode.INVALID_REQUEST else "internal error"
            info = ErrorInfo(code=code, message=message, retryable=False)
            sends.append(replies.failed(info))
        results = await asyncio.gather(*sends, return_exceptions=True)
        if location not in self._dead_lettered and not isinstance(results[0], BaseException):
            self._metrics.dead_letters.labels(reason=reason.value).inc()
            self._dead_lettered[location] = None
            while len(self._dead_lettered) > _DEAD_LETTERED_MEMORY:
                self._dead_lettered.popitem(last=False)
        logger.warning(
            "dead-lettered %s:%d@%d (%s): %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            error,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _validate(event: IncomingEvent) -> tuple[ChatRequest, datetime | None]:
    if event.type != LLM_CHAT_REQUESTED:
        raise ValidationFailure(f"ce_type must be {LLM_CHAT_REQUESTED!r}, got {event.type!r}")
    reply_to = event.extension(EXT_REPLY_TO)
    if reply_to is not None and not _TOPIC_NAME.fullmatch(reply_to):
        # An illegal topic would stall the producer on metadata for every retry.
        raise ValidationFailure(f"replyto {reply_to[:300]!r} is not a legal Kafka topic name")
    try:
        expiry = event.expiry()
    except DecodeError as exc:
        raise ValidationFailure(str(exc)) from exc
    data = event.data
    if not isinstance(data, dict):
        raise ValidationFailure("data must be a JSON object (the chat request)")
    try:
        return ChatRequest.model_validate(data), expiry
    except ValidationError as exc:
        raise ValidationFailure(describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    """Summarize a pydantic error as `field.path: problem; …` for producers."""
    problems = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "data"
        problems.append(f"{location}: {error['msg']}")
    return f"invalid chat request: {'; '.join(problems)}"
