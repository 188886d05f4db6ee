"""The control topic, read whole by every replica (no consumer group): cancels and tool
approvals. On start a replica reads back `window` seconds, so a cancel published just
before it started still applies to its request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]
from pydantic import ValidationError

from ferryman.codec import DecodeError, decode_event
from ferryman.contracts.mcp import (
    MCP_CANCEL_REQUESTED,
    MCP_TOOL_APPROVED,
    CancelRequest,
    ToolApproval,
)
from ferryman.kafka_config import KafkaConnection
from ferryman.topics import wait_for_partitions

logger = logging.getLogger(__name__)


class ControlReader:
    """Reads the control topic and hands each event to its callback.

    Args:
        connection: the Kafka connection.
        topic: the control topic.
        window: seconds read back at start.
        on_cancel: called for each valid cancel.
        on_approval: called for each valid approval.
        client_id: names the consumer.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str,
        *,
        window: float,
        on_cancel: Callable[[CancelRequest], None],
        on_approval: Callable[[ToolApproval], None],
        client_id: str,
    ) -> None:
        self._connection = connection
        self._topic = topic
        self._window = window
        self._on_cancel = on_cancel
        self._on_approval = on_approval
        self._client_id = client_id
        self.ready = asyncio.Event()
        """Set once the reader is positioned and reading."""
        self.seen = 0

    async def run(self) -> None:
        """Read until cancelled (reconnecting through Kafka outages: aiokafka retries)."""
        options: dict[str, Any] = self._connection.aiokafka_options(self._client_id)
        consumer = AIOKafkaConsumer(
            **options, group_id=None, enable_auto_commit=False, auto_offset_reset="latest"
        )
        await consumer.start()
        try:
            found = await wait_for_partitions(consumer, self._topic, timeout=60.0)
            partitions = [TopicPartition(self._topic, p) for p in sorted(found)]
            consumer.assign(partitions)
            # Ends first: a record published meanwhile is past them and after `since`.
            ends = await consumer.end_offsets(partitions)
            since = int((time.time() - self._window) * 1000)
            offsets = await consumer.offsets_for_times(dict.fromkeys(partitions, since))
            for partition in partitions:
                found = offsets.get(partition)
                consumer.seek(partition, found.offset if found is not None else ends[partition])
            self.ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                for records in batches.values():
                    for record in records:
                        self._handle(record.headers, record.value)
        finally:
            await consumer.stop()

    def _handle(self, headers: Any, value: bytes | None) -> None:
        self.seen += 1
        try:
            event = decode_event(list(headers), value)
        except DecodeError as exc:
            logger.warning("undecodable control event skipped: %s", str(exc)[:200])
            return
        try:
            if event.type == MCP_CANCEL_REQUESTED:
                self._on_cancel(CancelRequest.model_validate(event.data))
            elif event.type == MCP_TOOL_APPROVED:
                self._on_approval(ToolApproval.model_validate(event.data))
        except ValidationError as exc:
            logger.warning(
                "invalid %s event skipped: %s", event.type, str(exc).splitlines()[0][:200]
            )
