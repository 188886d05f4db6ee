"""`messaging_client_sent_messages_total`: every record a worker publishes, by topic and
outcome.

Reply topics are named by producers, so only the worker's configured topics (request,
dead-letter, health, default reply, catalog, audit, usage, events, tool loop, …) appear
by name; any other topic is counted as `reply`.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol, runtime_checkable

from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]
from aiokafka.structs import RecordMetadata  # pyright: ignore[reportMissingTypeStubs]
from prometheus_client import CollectorRegistry, Counter

from ferryman.publisher import Headers, KafkaPublisher

REPLY = "reply"
"""The label value of every topic that is not one of the worker's configured topics."""


def configured_topics(settings: Any, extra: Collection[str] = ()) -> frozenset[str]:
    """The topic names a worker's settings configure: every non-empty `*_topic` string
    field (nested settings included), plus `extra`."""
    found: set[str] = set(extra)

    def walk(values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                walk(value)  # pyright: ignore[reportUnknownArgumentType]
            elif key.endswith("_topic") and isinstance(value, str) and value:
                found.add(value)

    walk(settings.model_dump())
    return frozenset(found)


@runtime_checkable
class KnowsConfiguredTopics(Protocol):
    """Something that can tell the worker's configured topics from producer-chosen ones."""

    def is_configured(self, topic: str) -> bool:
        """Whether `topic` is one of the worker's configured topics."""
        ...


class SentMessages:
    """Counts published records by destination (configured topics by name, others as
    `reply`) and outcome (`ok`, `failed`).

    Args:
        registry: where the counter goes.
        topics: the configured topics, shown by name.
    """

    def __init__(self, registry: CollectorRegistry, topics: Collection[str]) -> None:
        self._topics = frozenset(topics)
        self._sent = Counter(
            "messaging_client_sent_messages",
            "Records published, by destination (the worker's configured topics by name,"
            " producer-chosen reply topics as `reply`) and outcome (ok, failed).",
            ["messaging_destination_name", "outcome"],
            registry=registry,
        )

    def is_configured(self, topic: str) -> bool:
        """Whether `topic` is one of the worker's configured topics."""
        return topic in self._topics

    def destination(self, topic: str) -> str:
        """The label value standing for `topic`."""
        return topic if topic in self._topics else REPLY

    def count(self, topic: str, *, ok: bool) -> None:
        """Count one record's outcome."""
        self._sent.labels(self.destination(topic), "ok" if ok else "failed").inc()


class CountingPublisher(KafkaPublisher):
    """A `KafkaPublisher` that counts each record once it is acknowledged or has failed.

    Args:
        bootstrap_servers: see `KafkaPublisher`.
        sent: where records are counted.
        **options: the other `KafkaPublisher` arguments.

    Raises:
        ValueError: see `KafkaPublisher`.
    """

    def __init__(self, bootstrap_servers: str, *, sent: SentMessages, **options: Any) -> None:
        super().__init__(bootstrap_servers, **options)
        self._counter = sent

    def is_configured(self, topic: str) -> bool:
        """Whether `topic` is one of the worker's configured topics (named in spans too)."""
        return self._counter.is_configured(topic)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Headers = (),
    ) -> asyncio.Future[RecordMetadata]:
        """Enqueue a record (see `KafkaPublisher.send`) and count it when it settles.

        Raises:
            RecordTooLarge: the record exceeds the producer's `max_request_size`.
            aiokafka.errors.KafkaError: the record could not be enqueued.
        """
        try:
            acked = await super().send(topic, value, key=key, headers=headers)
        except KafkaError:
            self._counter.count(topic, ok=False)
            raise
        acked.add_done_callback(self._settled(topic))
        return acked

    def _settled(self, topic: str) -> Callable[[asyncio.Future[RecordMetadata]], None]:
        def count(acked: asyncio.Future[RecordMetadata]) -> None:
            # Cancelled: the caller gave up waiting; the broker may still have it.
            if not acked.cancelled():
                self._counter.count(topic, ok=acked.exception() is None)

        return count
