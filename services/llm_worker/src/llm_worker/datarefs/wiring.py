"""Builds dataref resolution from the worker's settings."""

from __future__ import annotations

from dataclasses import dataclass

from ferryman.storage_client import StorageClient
from llm_worker.datarefs.kafka_storage import KafkaObjectStorage
from llm_worker.datarefs.resolver import StorageResolver
from llm_worker.settings import LlmWorkerSettings


@dataclass(frozen=True)
class StorageResolution:
    """The resolver and the connection it owns."""

    resolver: StorageResolver
    storage: KafkaObjectStorage

    async def aclose(self) -> None:
        """Disconnect from the storage_worker."""
        await self.storage.aclose()


def storage_resolver(settings: LlmWorkerSettings) -> StorageResolution | None:
    """Dataref resolution through the storage_worker, or None when it is not configured
    (`settings.storage.request_topic` unset). Nothing connects until a request needs it."""
    config = settings.storage
    if config.request_topic is None:
        return None
    client = StorageClient(
        settings.kafka_connection(),
        request_topic=config.request_topic,
        reply_topic=config.reply_topic,
        source=f"/ferryman/llm-worker/{settings.instance_id}",
    )
    storage = KafkaObjectStorage(client)
    return StorageResolution(StorageResolver(storage, config), storage)
