"""The catalog topic as the worker's memory: on start a replica reads the latest record of
each server back, so tool definitions approved before a restart stay the baseline and a
tool quarantined before it stays quarantined (a restart is no way around a rug pull)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]
from pydantic import ValidationError

from ferryman.contracts.mcp import CatalogRecord
from ferryman.kafka_config import KafkaConnection
from ferryman.topics import wait_for_partitions

logger = logging.getLogger(__name__)


async def read_catalog(
    connection: KafkaConnection, topic: str, client_id: str, timeout: float = 60.0
) -> dict[str, CatalogRecord]:
    """The latest valid record per server on the catalog topic (tombstones remove).

    Raises:
        aiokafka.errors.KafkaError: Kafka could not be read.
        LookupError: the topic does not exist, or was not read to its end within `timeout`.
    """
    options: dict[str, Any] = connection.aiokafka_options(client_id)
    # `earliest`: a position asked before the first fetch resolves to the beginning, never
    # to the end (which would skip the records this reads back).
    consumer = AIOKafkaConsumer(
        **options, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    latest: dict[str, CatalogRecord] = {}
    try:
        found = await wait_for_partitions(consumer, topic, timeout=timeout)
        partitions = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {p for p in partitions if ends[p] > 0}
        deadline = asyncio.get_running_loop().time() + timeout
        while remaining:
            if asyncio.get_running_loop().time() > deadline:
                raise LookupError(f"catalog topic {topic!r} was not read to its end in time")
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for partition, records in batches.items():
                for record in records:
                    _keep(latest, record.key, record.value)
                if records and records[-1].offset + 1 >= ends[partition]:
                    remaining.discard(partition)
            for partition in list(remaining):
                if await consumer.position(partition) >= ends[partition]:
                    remaining.discard(partition)
    finally:
        await consumer.stop()
    return latest


def _keep(latest: dict[str, CatalogRecord], key: bytes | None, value: bytes | None) -> None:
    if key is None:
        return
    server = key.decode("utf-8", "replace")
    if value is None:
        latest.pop(server, None)
        return
    try:
        latest[server] = CatalogRecord.model_validate_json(value)
    except ValidationError:
        logger.warning("catalog record of %s is not valid; ignored", server[:128])
