"""Records that cannot be executed: each is dead-lettered once, then answered `failed` once."""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false

from __future__ import annotations

import logging
from collections import OrderedDict

from aiokafka import ConsumerRecord  # pyright: ignore[reportMissingTypeStubs]

from ferryman.contracts.errors import ErrorCode, ErrorInfo
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.dead_letter import DeadLetterReason, publish_dead_letter
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.redaction import redact
from ferryman_runtime.replies import ReplyStream

logger = logging.getLogger(__name__)

_MEMORY = 10_000
"""Dead-lettered record locations remembered (a redelivery within them is not parked again)."""


class Rejections:
    """Parks poison and failed records in the dead-letter topic and tells their requesters.

    The dead letter goes first; the `failed` reply is sent once it is safely parked, and
    only once, however often the dead letter (or the reply) had to be retried.

    Args:
        publisher: publishes dead letters.
        dlq_topic: where they go.
        metrics: counts them by reason.
    """

    def __init__(
        self, *, publisher: KafkaPublisher, dlq_topic: str, metrics: ConsumerMetrics
    ) -> None:
        self._publisher = publisher
        self._dlq_topic = dlq_topic
        self._metrics = metrics
        # Dead-lettered records → whether their `failed` reply went out too.
        self._parked: OrderedDict[tuple[str, int, int], bool] = OrderedDict()

    async def reject(
        self,
        record: ConsumerRecord[bytes, bytes],
        reason: DeadLetterReason,
        error: BaseException,
        attempt: int,
        reply: ReplyStream | None,
        *,
        code: ErrorCode = ErrorCode.INVALID_REQUEST,
        message: str | None = None,
    ) -> None:
        """Dead-letter `record` (once), then publish `failed` on `reply` (once) if given.

        Raises:
            aiokafka.errors.KafkaError: the dead letter or the reply was not acknowledged;
                the record must be retried, not committed.
        """
        location = (record.topic, record.partition, record.offset)
        if location not in self._parked:
            await publish_dead_letter(
                self._publisher,
                record,
                topic=self._dlq_topic,
                reason=reason,
                error=error,
                attempts=attempt,
            )
            self._metrics.dead_letters.labels(reason=reason.value).inc()
            self._parked[location] = False
            while len(self._parked) > _MEMORY:
                self._parked.popitem(last=False)
            logger.warning(
                "dead-lettered %s:%d@%d (%s): %s",
                record.topic,
                record.partition,
                record.offset,
                reason,
                redact(str(error))[:500],
            )
        if reply is None or self._parked.get(location, True):
            return
        if message is None:
            invalid = code is ErrorCode.INVALID_REQUEST
            message = redact(str(error))[:2000] if invalid else "internal error"
        info = ErrorInfo(code=code, message=message, retryable=code is ErrorCode.UNAVAILABLE)
        await reply.fail(info)
        self._parked[location] = True
