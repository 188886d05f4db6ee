"""Events a worker publishes besides replies (health reports, catalogs, audit records): one
CloudEvent in binary mode, keyed, acknowledged."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka.structs import RecordMetadata  # pyright: ignore[reportMissingTypeStubs]
from pydantic import BaseModel

from ferryman.codec import encode_binary
from ferryman.publisher import KafkaPublisher


async def enqueue_event(
    publisher: KafkaPublisher,
    topic: str,
    event_type: str,
    payload: BaseModel | None,
    *,
    key: str,
    source: str,
    subject: str | None = None,
    time: datetime | None = None,
    extensions: Mapping[str, str] | None = None,
) -> asyncio.Future[RecordMetadata]:
    """Enqueue `payload` as the data of an `event_type` CloudEvent; the returned future
    resolves on the ack. `payload` None publishes a tombstone (no value: a compacted topic
    forgets `key`).

    Raises:
        aiokafka.errors.KafkaError: the event could not be enqueued.
    """
    attributes: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "source": source,
        "datacontenttype": "application/json",
        "time": time or datetime.now(UTC),
    }
    if subject is not None:
        attributes["subject"] = subject
    attributes.update(extensions or {})
    data = b"null" if payload is None else payload.model_dump_json().encode()
    headers, value = encode_binary(attributes, data)
    return await publisher.send(
        topic, None if payload is None else value, key=key.encode(), headers=headers
    )


async def publish_event(
    publisher: KafkaPublisher,
    topic: str,
    event_type: str,
    payload: BaseModel | None,
    *,
    key: str,
    source: str,
    subject: str | None = None,
    time: datetime | None = None,
    extensions: Mapping[str, str] | None = None,
) -> None:
    """`enqueue_event`, then wait for the ack.

    Raises:
        aiokafka.errors.KafkaError: the event was not acknowledged.
    """
    acked = await enqueue_event(
        publisher,
        topic,
        event_type,
        payload,
        key=key,
        source=source,
        subject=subject,
        time=time,
        extensions=extensions,
    )
    await acked
