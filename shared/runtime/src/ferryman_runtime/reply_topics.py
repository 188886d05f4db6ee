"""Which reply topics a request may name, and whether they exist.

A request chooses its reply topic, so without a policy any producer could make the
worker write into another consumer's reply topic, into the worker's own request topic,
or (with broker-side auto-creation) create topics at will.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

_LEGAL = re.compile(r"[A-Za-z0-9._-]{1,249}")


class ReplyTopicPolicy:
    """Decides whether a request may have its replies published to a topic.

    Args:
        default: the worker's default reply topic (always allowed).
        patterns: `fnmatch` patterns (case-sensitive; `*` matches dots too) for any tenant.
        by_tenant: per tenant, patterns that replace `patterns` for that tenant.
        own_topics: the worker's request, dead-letter and health topics (never allowed).
    """

    def __init__(
        self,
        *,
        default: str,
        patterns: Sequence[str],
        by_tenant: Mapping[str, Sequence[str]] | None = None,
        own_topics: Iterable[str] = (),
    ) -> None:
        self._default = default
        self._patterns = [_compile(p) for p in patterns]
        self._by_tenant = {t: [_compile(p) for p in ps] for t, ps in (by_tenant or {}).items()}
        self._own = frozenset(own_topics)

    def refusal(self, topic: str, tenant: str | None) -> str | None:
        """Return why `topic` is refused for a request of `tenant`, or None when allowed."""
        if not _LEGAL.fullmatch(topic) or topic in (".", ".."):
            return f"replyto {topic[:300]!r} is not a legal Kafka topic name"
        if topic.startswith("__"):
            return f"replyto {topic!r} is an internal topic"
        if topic in self._own:
            return f"replyto {topic!r} is one of the worker's own topics"
        if topic == self._default:
            return None
        patterns = self._patterns
        if tenant is not None and tenant in self._by_tenant:
            patterns = self._by_tenant[tenant]
        if any(p.fullmatch(topic) for p in patterns):
            return None
        who = f"tenant {tenant!r}" if tenant is not None else "requests"
        return f"replyto {topic!r} is not an allowed reply topic for {who}"


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


class TopicDirectory:
    """Tells whether a topic exists, from a cached list of the cluster's topics.

    The list is fetched with a metadata request for all topics, which never creates a
    topic (a request for one named topic may, where the broker auto-creates topics).
    A name missing from the list is looked up again in a fetch that starts after the
    question was asked, so a topic created just before its first request is found.
    Concurrent questions share one fetch, and fetches start at most every
    `min_interval` seconds, so a flood of unknown names costs a few fetches per second.

    Args:
        fetch: returns the names of the cluster's topics.
        min_interval: minimum seconds between the starts of two fetches.
        clock: monotonic seconds; injectable for tests.
        sleep: waits that many seconds; injectable for tests.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Iterable[str]]],
        *,
        min_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._fetch = fetch
        self._interval = min_interval
        self._clock = clock
        self._sleep = sleep
        self._known: frozenset[str] = frozenset()
        self._fetch_started: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0
        """Topic lists fetched so far."""

    async def exists(self, topic: str) -> bool:
        """Return whether `topic` exists.

        Raises:
            aiokafka.errors.KafkaError: the topic list could not be fetched.
        """
        if topic in self._known:
            return True
        asked = self._clock()
        async with self._lock:
            started = self._fetch_started
            if topic in self._known or (started is not None and started >= asked):
                return topic in self._known  # a fetch that began after the question
            if started is not None:
                await self._sleep(max(0.0, started + self._interval - self._clock()))
            self._fetch_started = self._clock()
            self._known = frozenset(await self._fetch())
            self.fetches += 1
        return topic in self._known
