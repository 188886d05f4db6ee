"""The response-cache invalidation event as it goes on the control topic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from ferryman.codec import Headers, encode_binary
from ferryman.contracts.llm_cache import LLM_CACHE_INVALIDATE_REQUESTED, CacheInvalidation
from ferryman.publisher import KafkaPublisher

ALL_TENANTS_KEY = "*"
"""The Kafka key of an invalidation of every tenant (others are keyed by their tenant, so
one tenant's invalidations stay in order)."""


def encode_cache_invalidation(
    invalidation: CacheInvalidation, *, source: str, now: datetime, event_id: str | None = None
) -> tuple[str, Headers, bytes]:
    """Return the event id, Kafka headers and value of a binary-mode
    `ferryman.llm.cache.invalidate.requested` event carrying `invalidation` (publish it keyed
    by `invalidation_key`)."""
    event_id = event_id or str(uuid.uuid4())
    attributes: dict[str, Any] = {
        "id": event_id,
        "type": LLM_CACHE_INVALIDATE_REQUESTED,
        "source": source,
        "time": now.astimezone(UTC),
        "datacontenttype": "application/json",
    }
    headers, value = encode_binary(
        attributes, invalidation.model_dump_json(exclude_defaults=True).encode()
    )
    return event_id, headers, value


def invalidation_key(invalidation: CacheInvalidation) -> bytes:
    """The Kafka key of `invalidation`: its tenant, or `*` for all tenants."""
    return (invalidation.tenant or ALL_TENANTS_KEY).encode()


async def publish_cache_invalidation(
    publisher: KafkaPublisher,
    invalidation: CacheInvalidation,
    *,
    topic: str,
    source: str,
    now: datetime,
) -> str:
    """Publish `invalidation` to the control `topic` and wait for Kafka's acknowledgement;
    return the event's id.

    Raises:
        aiokafka.errors.KafkaError: Kafka did not acknowledge the event.
    """
    event_id, headers, value = encode_cache_invalidation(invalidation, source=source, now=now)
    await publisher.send_and_wait(topic, value, key=invalidation_key(invalidation), headers=headers)
    return event_id
