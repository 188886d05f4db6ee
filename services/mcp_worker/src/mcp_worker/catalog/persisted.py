"""The catalog topic as the worker's memory: on start a replica reads the latest record of
each server back, so tool definitions approved before a restart stay the baseline and a
tool quarantined before it stays quarantined (a restart is no way around a rug pull)."""

from __future__ import annotations

import asyncio
import contextlib

from ferryman.contracts.mcp import CatalogRecord
from ferryman.kafka_config import KafkaConnection
from ferryman_runtime.catalog_view import CatalogView


async def read_catalog(
    connection: KafkaConnection, topic: str, client_id: str, timeout: float = 60.0
) -> dict[str, CatalogRecord]:
    """The latest valid record per server on the catalog topic (tombstones remove).

    Raises:
        LookupError: the topic was not read to its end within `timeout` (it does not
            exist, or Kafka could not be read).
    """
    view = CatalogView(connection, topic, client_id=client_id)
    reading = asyncio.create_task(view.run(), name=f"read-catalog-{topic}")
    try:
        async with asyncio.timeout(timeout):
            await view.ready.wait()
    except TimeoutError:
        raise LookupError(
            f"catalog topic {topic!r} was not read to its end within {timeout:g} s"
        ) from None
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    return {server: record for server in view.servers() if (record := view.record(server))}
