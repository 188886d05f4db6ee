"""The compacted catalog topic's configuration and its own producer.

A server's record carries every tool with its schemas: an API described by a large OpenAPI
document makes a record of megabytes (Discord's 242 operations: 2.9 MB of JSON), beyond
Kafka's default 1 MB `max.message.bytes`. The records are very repetitive (each tool carries
the schemas it refers to), so they are sent gzip-compressed (Discord's: about 340 KB; gzip is
the codec aiokafka supports without another library), and the topic is created to accept
larger batches still. Compression is the catalog producer's own: the worker's replies are not
compressed, so they pay no compression cost per event.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from aiokafka.structs import RecordMetadata  # pyright: ignore[reportMissingTypeStubs]

from ferryman.codec import encode_binary
from ferryman.kafka_config import KafkaConnection
from ferryman.publisher import KafkaPublisher

CATALOG_MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
"""The catalog topic's `max.message.bytes`: what the broker accepts, compressed."""

CATALOG_MAX_RECORD_BYTES: Final = 32 * 1024 * 1024
"""The largest record the catalog producer sends, uncompressed (aiokafka checks the size
before compressing)."""

CATALOG_TOPIC_CONFIG: Final[dict[str, str]] = {
    "cleanup.policy": "compact",
    "max.message.bytes": str(CATALOG_MAX_MESSAGE_BYTES),
}
"""The catalog topic's configuration when the worker creates it (an existing topic keeps
its own: raise its `max.message.bytes` with `kafka-configs --alter` when records are
refused)."""


class CatalogProducer:
    """A gzip-compressing producer for the catalog topic, started on first use.

    Args:
        connection: the Kafka connection.
        client_id: names the producer.
    """

    def __init__(self, connection: KafkaConnection, *, client_id: str) -> None:
        options: dict[str, Any] = {
            **connection.security_options(),
            "compression_type": "gzip",
            "max_request_size": CATALOG_MAX_RECORD_BYTES,
        }
        self._publisher = KafkaPublisher(
            connection.bootstrap_servers, client_id=client_id, connection=options
        )
        self._starting = asyncio.Lock()
        self._started = False

    async def publisher(self) -> KafkaPublisher:
        """The started producer.

        Raises:
            aiokafka.errors.KafkaConnectionError: no broker answered.
        """
        async with self._starting:
            if not self._started:
                await self._publisher.start()
                self._started = True
        return self._publisher

    async def close(self) -> None:
        """Flush and disconnect (nothing to do when it never started)."""
        async with self._starting:
            if self._started:
                self._started = False
                await self._publisher.stop()


async def send_catalog_event(
    publisher: KafkaPublisher,
    topic: str,
    event_type: str,
    data: bytes | None,
    *,
    key: str,
    source: str,
) -> RecordMetadata:
    """Publish `data` (JSON, serialized once by the caller) as the data of an `event_type`
    CloudEvent keyed by `key` (its `subject` too) and wait for the ack; `data` None
    publishes a tombstone (a compacted topic forgets `key`).

    Raises:
        ferryman.publisher.RecordTooLarge: the record is larger than the topic (or the
            producer) accepts.
        aiokafka.errors.KafkaError: Kafka did not acknowledge the record.
    """
    attributes: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "source": source,
        "datacontenttype": "application/json",
        "time": datetime.now(UTC),
        "subject": key,
    }
    headers, value = encode_binary(attributes, b"null" if data is None else data)
    return await publisher.send_and_wait(
        topic, None if data is None else value, key=key.encode(), headers=headers
    )
