"""Runs one record until it is settled: handled, or given up on and handed over.

A record is settled when the handler succeeded, or when, after its last allowed
attempt, `on_exhausted` (which dead-letters it) succeeded. Until then its offset
stays uncommitted, so a record is never both unprocessed and committed.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import ConsumerRecord  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]

from ferryman.contracts.errors import FerrymanError
from ferryman_runtime.metrics import ConsumerMetrics
from ferryman_runtime.telemetry.spans import error_type_of
from ferryman_runtime.undecodable import UndecodableRecord

logger = logging.getLogger("ferryman_runtime.parallel_consumer")

RecordHandler = Callable[[ConsumerRecord[bytes, bytes], int], Awaitable[None]]
"""Processes one record; the int is the attempt number (1 on first delivery)."""

ExhaustedHandler = Callable[[ConsumerRecord[bytes, bytes], int, BaseException], Awaitable[None]]
"""Takes over a record whose handler failed: (record, attempts made, last error)."""

UndecodableHandler = Callable[[UndecodableRecord], Awaitable[None]]
"""Takes over a record aiokafka could not decode (raw key, value and headers)."""


@dataclass(frozen=True)
class Backoff:
    """Capped exponential delays: `first` seconds, doubling, at most `cap`."""

    first: float
    cap: float

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (from 1)."""
        return min(self.cap, self.first * 2 ** (attempt - 1))


def _where(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}@{offset}"


UNDECODABLE = "undecodable"
"""The error type of a record the Kafka client could not decode."""


def _gives_up_at_once(error: BaseException) -> bool:
    # The shared taxonomy's verdict: the same input fails the same way again.
    return isinstance(error, FerrymanError) and not error.retryable


class RecordAttempts:
    """Calls the handler with bounded retries and hands over what cannot be handled.

    Args:
        handler: processes one record.
        max_attempts: handler calls per record before `on_exhausted` takes it over.
        on_exhausted: takes over a record after its last failed attempt; None retries
            the handler forever instead.
        on_undecodable: takes over a record aiokafka could not decode.
        backoff: delays between handler attempts and between hand-over attempts.
        metrics: where to count retries and hand-overs.
        sleep: waits between attempts (injected by tests).
        connected: whether Kafka is reachable; a Kafka error while it is not does not
            count towards `max_attempts` (a broker outage must not dead-letter every
            record in flight: their results are delivered when the broker is back).
    """

    def __init__(
        self,
        *,
        handler: RecordHandler,
        max_attempts: int,
        on_exhausted: ExhaustedHandler | None,
        on_undecodable: UndecodableHandler | None,
        backoff: Backoff,
        metrics: ConsumerMetrics,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._handler = handler
        self._max_attempts = max_attempts
        self._on_exhausted = on_exhausted
        self.on_undecodable = on_undecodable
        self._backoff = backoff
        self._metrics = metrics
        self._sleep = sleep
        self._connected = connected

    async def settle(self, record: ConsumerRecord[bytes, bytes]) -> str | None:
        """Run `record` until the handler succeeds or `on_exhausted` has taken it over;
        return None when the handler succeeded, else the last error's `error_type`.

        A handler error is retried after a backoff. With `on_exhausted` set, the record
        is handed over after `max_attempts` calls, or at once when the error is a
        non-retryable `FerrymanError`; a failing `on_exhausted` is retried until it
        succeeds. Without `on_exhausted`, the handler is retried forever.
        """
        where = _where(record.topic, record.partition, record.offset)
        attempt = 1
        counted = 0
        while True:
            try:
                await self._handler(record, attempt)
                return None
            except Exception as exc:
                if not (isinstance(exc, KafkaError) and not self._connected()):
                    counted += 1
                if self._on_exhausted is not None and (
                    counted >= self._max_attempts or _gives_up_at_once(exc)
                ):
                    logger.error(
                        "handler failed for %s %d time(s) (%s: %s); handing it over",
                        where,
                        attempt,
                        type(exc).__name__,
                        exc,
                    )
                    self._metrics.exhausted.labels(record.topic).inc()
                    hand_over = functools.partial(self._on_exhausted, record, attempt, exc)
                    await self._until_done(hand_over, f"on_exhausted for {where}")
                    return error_type_of(exc)
                delay = self._backoff.delay(attempt)
                if attempt == 1:  # the trace once; repeats name the error only
                    logger.warning(
                        "handler failed for %s (attempt 1); retrying in %.1fs",
                        where,
                        delay,
                        exc_info=True,
                    )
                else:
                    logger.warning(
                        "handler failed for %s (attempt %d: %s: %s); retrying in %.1fs",
                        where,
                        attempt,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                self._metrics.handler_retries.labels(record.topic).inc()
                attempt += 1
                await self._sleep(delay)

    async def settle_undecodable(self, record: UndecodableRecord) -> str:
        """Hand `record` to `on_undecodable`, retrying until it succeeds; return `UNDECODABLE`.

        Raises:
            RuntimeError: no `on_undecodable` is set (the caller checks first).
        """
        if self.on_undecodable is None:
            raise RuntimeError("on_undecodable is not set")
        self._metrics.undecodable.labels(record.topic).inc()
        hand_over = functools.partial(self.on_undecodable, record)
        await self._until_done(
            hand_over, f"on_undecodable for {_where(record.topic, record.partition, record.offset)}"
        )
        return UNDECODABLE

    async def _until_done(self, call: Callable[[], Awaitable[None]], what: str) -> None:
        attempt = 1
        while True:
            try:
                await call()
                return
            except Exception as exc:
                delay = self._backoff.delay(attempt)
                logger.warning(
                    "%s failed (attempt %d: %s: %s); retrying in %.1fs",
                    what,
                    attempt,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                attempt += 1
                await self._sleep(delay)
