"""Keeps repeated log lines from flooding the logs during an outage.

While a broker is unreachable, aiokafka logs every reconnect attempt and every
failed fetch, heartbeat and metadata refresh, many times a second; our own
commit retries would add to that. A repeated message (same logger and format
string) is let through once per interval, with the count of those it stood for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

KAFKA_CLIENT_LOGGERS = (
    "aiokafka",
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
)
"""aiokafka's loggers that repeat themselves while a broker is unreachable."""


class LogThrottle:
    """Decides which occurrences of a repeated event get logged: one per `interval` seconds.

    Args:
        interval: the minimum number of seconds between two log lines of one key.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def allow(self, key: Hashable) -> int | None:
        """Return None to suppress this occurrence of `key`, else how many were suppressed
        since the last one logged (0 the first time)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class RepeatFilter(logging.Filter):
    """A logging filter letting each (logger, format string) through once per interval."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._throttle = LogThrottle(interval, clock)
        self.interval = interval

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop a repeat within the interval; mark the next one with the count dropped."""
        suppressed = self._throttle.allow((record.name, record.levelno, str(record.msg)))
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{record.msg} [{suppressed} similar since the last report]"
        return True


def quiet_kafka_client_logs(interval: float) -> None:
    """Throttle aiokafka's repeating loggers to one line per message per `interval` seconds.

    Idempotent: a logger that already has a `RepeatFilter` keeps it.
    """
    for name in KAFKA_CLIENT_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in log.filters):
            log.addFilter(RepeatFilter(interval))
