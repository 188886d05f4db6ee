"""Object events on the events topic (created, deleted, metadata changed), keyed by
`tenant/backend/key` so one object's events stay in order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from aiokafka.errors import KafkaError  # pyright: ignore[reportMissingTypeStubs]

from ferryman.contracts.events import EXT_DATAREF
from ferryman.contracts.storage import (
    STORAGE_OBJECT_CREATED,
    STORAGE_OBJECT_DELETED,
    STORAGE_OBJECT_METADATA_CHANGED,
    ObjectEvent,
    ObjectInfo,
    object_dataref,
)
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.side_events import publish_event

logger = logging.getLogger(__name__)

Cause = Literal["put", "copy", "move", "delete", "metadata", "process"]


class ObjectEvents:
    """Publishes object events (at least once: a consumer dedupes by key and version).

    Args:
        publisher: the worker's publisher (None before it started).
        topic: the events topic.
        source: the worker's `ce_source`.
    """

    def __init__(
        self, publisher: Callable[[], KafkaPublisher | None], topic: str, source: str
    ) -> None:
        self._publisher = publisher
        self._topic = topic
        self._source = source
        self.published = 0
        self.failed = 0

    async def created(self, tenant: str, info: ObjectInfo, cause: Cause, request: str) -> None:
        """An object was written."""
        await self._send(STORAGE_OBJECT_CREATED, tenant, info, cause, request)

    async def deleted(self, tenant: str, info: ObjectInfo, cause: Cause, request: str) -> None:
        """An object was deleted (`info`: as it was)."""
        await self._send(STORAGE_OBJECT_DELETED, tenant, info, cause, request)

    async def metadata_changed(
        self, tenant: str, info: ObjectInfo, cause: Cause, request: str
    ) -> None:
        """An object's metadata, tags or content type changed."""
        await self._send(STORAGE_OBJECT_METADATA_CHANGED, tenant, info, cause, request)

    async def _send(
        self, event_type: str, tenant: str, info: ObjectInfo, cause: Cause, request: str
    ) -> None:
        publisher = self._publisher()
        if publisher is None:
            return
        event = ObjectEvent(tenant=tenant, object=info, cause=cause, request_id=request)
        try:
            await publish_event(
                publisher,
                self._topic,
                event_type,
                event,
                key=f"{tenant}/{info.backend}/{info.key}",
                source=self._source,
                subject=info.key,
                extensions={EXT_DATAREF: object_dataref(info.backend, info.key)},
            )
            self.published += 1
        except KafkaError as exc:
            # Raised: the request is not acknowledged and runs again; its redelivery finds
            # its own write and publishes the event then (events are at least once).
            self.failed += 1
            logger.error("object event %s not published: %s", event_type, type(exc).__name__)
            raise
