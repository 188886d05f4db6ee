"""Publishes a request's result events (chunks, completed, failed) to its reply topic."""

from __future__ import annotations

import asyncio

from aiokafka.structs import RecordMetadata
from pydantic import BaseModel

from ferryman.codec import BinaryHeaders
from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_RESTARTED,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRestarted,
    ErrorInfo,
)
from ferryman.publisher import KafkaPublisher


class ReplyStream:
    """The result events of one request, keyed by its id, in order.

    Chunks are enqueued without waiting for each acknowledgement (the
    idempotent producer keeps their order); `close()` waits for all of them and
    the terminal event, so an offset is committed only after everything landed.

    Args:
        publisher: the worker's producer.
        topic: the reply topic.
        request_id: the request's `ce_id` (the Kafka key and `ce_correlationid`).
        source: `ce_source` naming the worker.
        extensions: extensions echoed from the request (trace context, tenant).
    """

    def __init__(
        self,
        publisher: KafkaPublisher,
        *,
        topic: str,
        request_id: str,
        source: str,
        extensions: dict[str, str],
    ) -> None:
        self._publisher = publisher
        self._topic = topic
        self._request_id = request_id
        self._key = request_id.encode()
        self._source = source
        self._extensions = extensions
        self._pending: list[asyncio.Future[RecordMetadata]] = []
        self._headers: dict[str, BinaryHeaders] = {}
        self.chunk_count = 0

    async def chunk(self, chunk: ChatChunk) -> None:
        """Enqueue a chunk event.

        Raises:
            aiokafka.errors.KafkaError: the producer refused the record.
        """
        await self._send(LLM_CHAT_CHUNK, chunk)
        self.chunk_count += 1

    async def restarted(self, restart: ChatRestarted) -> None:
        """Enqueue a `restarted` event: consumers discard the chunks published so far.

        Raises:
            aiokafka.errors.KafkaError: the producer refused the record.
        """
        await self._send(LLM_CHAT_RESTARTED, restart)

    async def completed(self, result: ChatCompleted) -> None:
        """Publish the `completed` event and wait until every event of the request is acknowledged.

        Raises:
            aiokafka.errors.KafkaError: some event was not acknowledged.
        """
        await self._send(LLM_CHAT_COMPLETED, result)
        await self._wait()

    async def failed(self, error: ErrorInfo) -> None:
        """Publish the `failed` event and wait until every event of the request is acknowledged.

        Raises:
            aiokafka.errors.KafkaError: some event was not acknowledged.
        """
        await self._send(LLM_CHAT_FAILED, ChatFailed(error=error))
        await self._wait()

    async def _send(self, event_type: str, payload: BaseModel) -> None:
        value = payload.model_dump_json(exclude_none=True).encode()
        make_headers = self._headers.get(event_type)
        if make_headers is None:
            make_headers = self._headers[event_type] = BinaryHeaders(
                event_type=event_type,
                source=self._source,
                correlation_id=self._request_id,
                extensions=self._extensions,
            )
        headers = make_headers()
        self._pending.append(
            await self._publisher.send(self._topic, value, key=self._key, headers=headers)
        )

    async def _wait(self) -> None:
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)
