"""Python client for producers: publish chat requests, read streamed results.

```python
async with FerrymanClient("127.0.0.1:9092") as client:
    async for event in client.chat_stream(request):
        ...  # ChatChunk, ChatChunk, …, then a final ChatCompleted
        # (a ChatRestarted in between means: discard the chunks shown so far)
    completed = await client.chat(request)
```
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition  # pyright: ignore[reportMissingTypeStubs]

from ferryman.codec import encode_binary, header_value
from ferryman.contracts import (
    DEFAULT_LLM_REPLY_TOPIC,
    DEFAULT_LLM_REQUEST_TOPIC,
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_REQUESTED,
    LLM_CHAT_RESTARTED,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequest,
    ChatRestarted,
    ErrorInfo,
)
from ferryman.contracts.events import EXT_EXPIRY_TIME, EXT_REPLY_TO, EXT_TENANT
from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics

ChatEvent = ChatChunk | ChatRestarted | ChatCompleted
"""What `FerrymanClient.chat_stream` yields."""


class ChatFailedError(Exception):
    """The worker answered with a `failed` event; `error` carries code and retryability."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"{error.code.value}: {error.message}")
        self.error = error


class ReplySequencer:
    """Puts the result events of one request in order, the way a reader should see them.

    Chunks are accepted only for the current attempt and only at the next index, so
    redelivered duplicates, keyed by (`attempt`, `index`), are dropped. A `ChatRestarted` for a
    newer attempt is accepted and makes that attempt current, counting from index 0 again;
    chunks of older attempts, and a repeat of a restart already seen, are dropped. Nothing is
    accepted after the `ChatCompleted`.
    """

    def __init__(self) -> None:
        self.attempt = 1
        """The attempt whose chunks are accepted."""
        self.next_index = 0
        """The index of the next chunk accepted."""
        self.done = False
        """True once the `ChatCompleted` was accepted."""

    def accept(self, event: ChatEvent) -> bool:
        """Return whether `event` should reach the reader, and advance past it if so."""
        if self.done:
            return False
        if isinstance(event, ChatCompleted):
            self.done = True
            return True
        if isinstance(event, ChatRestarted):
            if event.attempt <= self.attempt:
                return False
            self.attempt, self.next_index = event.attempt, 0
            return True
        if (event.attempt, event.index) != (self.attempt, self.next_index):
            return False
        self.next_index += 1
        return True


class FerrymanClient:
    """Publishes chat requests and reads their results from a reply topic.

    Args:
        bootstrap_servers: comma-separated `host:port` list.
        request_topic: where requests go.
        reply_topic: where this client reads results (sent as the `replyto` extension).
        source: `ce_source` of the requests; (`source`, id) identifies a request.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        request_topic: str = DEFAULT_LLM_REQUEST_TOPIC,
        reply_topic: str = DEFAULT_LLM_REPLY_TOPIC,
        source: str | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._request_topic = request_topic
        self._reply_topic = reply_topic
        self._source = source or f"/ferryman/client/{socket.gethostname()}-{os.getpid()}"
        self._publisher = KafkaPublisher(bootstrap_servers, client_id="ferryman-client")
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Queue[tuple[str, bytes]]] = {}

    async def __aenter__(self) -> FerrymanClient:
        """Connect, and start reading the reply topic from its current end.

        Raises:
            aiokafka.errors.KafkaError: Kafka could not be reached.
        """
        await ensure_topics(
            self._bootstrap, [self._reply_topic], partitions=6, replication_factor=1
        )
        await self._publisher.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False
        )
        try:
            await consumer.start()
            partitions = await wait_for_partitions(consumer, self._reply_topic)
            assigned = [TopicPartition(self._reply_topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:  # pin the positions before anything is published
                await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            await self._publisher.stop()
            raise
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read_replies(consumer))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Disconnect."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._consumer is not None:
            await self._consumer.stop()
        await self._publisher.stop()

    async def publish(
        self,
        request: ChatRequest | Mapping[str, Any],
        *,
        request_id: str | None = None,
        expires_at: datetime | None = None,
        tenant: str | None = None,
        key: bytes | None = None,
    ) -> str:
        """Publish a request without waiting for results; return its id.

        Raises:
            pydantic.ValidationError: `request` is not a valid chat request.
            aiokafka.errors.KafkaError: Kafka did not acknowledge it.
        """
        if not isinstance(request, ChatRequest):
            request = ChatRequest.model_validate(request)
        request_id = request_id or str(uuid.uuid4())
        attributes: dict[str, Any] = {
            "id": request_id,
            "type": LLM_CHAT_REQUESTED,
            "source": self._source,
            "datacontenttype": "application/json",
            EXT_REPLY_TO: self._reply_topic,
        }
        if expires_at is not None:
            attributes[EXT_EXPIRY_TIME] = expires_at.isoformat().replace("+00:00", "Z")
        if tenant is not None:
            attributes[EXT_TENANT] = tenant
        data = request.model_dump_json(exclude_none=True, by_alias=True).encode()
        headers, value = encode_binary(attributes, data)
        await self._publisher.send_and_wait(
            self._request_topic, value, key=key or request_id.encode(), headers=headers
        )
        return request_id

    async def chat_stream(
        self,
        request: ChatRequest | Mapping[str, Any],
        *,
        request_id: str | None = None,
        timeout: float = 600.0,
        **publish_options: Any,
    ) -> AsyncIterator[ChatEvent]:
        """Publish `request` and yield its chunks in order, then its `ChatCompleted`.

        When the worker restarts a failed stream on another deployment, a `ChatRestarted` is
        yielded: discard the chunks received so far; the new attempt's chunks follow from
        index 0. Duplicates (a redelivered request) and late chunks of an earlier attempt are
        dropped (see `ReplySequencer`).

        Raises:
            ChatFailedError: the worker published `failed`.
            TimeoutError: no terminal event within `timeout` seconds.
        """
        request_id = request_id or str(uuid.uuid4())
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._waiting[request_id] = queue
        try:
            await self.publish(request, request_id=request_id, **publish_options)
            sequencer = ReplySequencer()
            async with asyncio.timeout(timeout):
                while not sequencer.done:
                    event = _decode(*await queue.get())
                    if isinstance(event, ChatFailed):
                        raise ChatFailedError(event.error)
                    if event is not None and sequencer.accept(event):
                        yield event
        finally:
            self._waiting.pop(request_id, None)

    async def chat(
        self, request: ChatRequest | Mapping[str, Any], *, timeout: float = 600.0, **options: Any
    ) -> ChatCompleted:
        """Publish `request` and return its `ChatCompleted`.

        Raises:
            ChatFailedError: the worker published `failed`.
            TimeoutError: no terminal event within `timeout` seconds.
        """
        async for event in self.chat_stream(request, timeout=timeout, **options):
            if isinstance(event, ChatCompleted):
                return event
        raise RuntimeError("the result stream ended without a terminal event")

    async def _read_replies(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    correlation = header_value(record.headers, "ce_correlationid")
                    queue = self._waiting.get(correlation or "")
                    if queue is None:
                        continue
                    event_type = header_value(record.headers, "ce_type") or ""
                    queue.put_nowait((event_type, record.value or b""))


_RESULT_MODELS: dict[str, type[ChatChunk | ChatRestarted | ChatCompleted | ChatFailed]] = {
    LLM_CHAT_CHUNK: ChatChunk,
    LLM_CHAT_RESTARTED: ChatRestarted,
    LLM_CHAT_COMPLETED: ChatCompleted,
    LLM_CHAT_FAILED: ChatFailed,
}


def _decode(event_type: str, value: bytes) -> ChatEvent | ChatFailed | None:
    """Parse a result event's data; `None` for a type this client does not know."""
    model = _RESULT_MODELS.get(event_type)
    return None if model is None else model.model_validate_json(value)


def request_from_prompt(prompt: str, *, model: str, stream: bool = True) -> ChatRequest:
    """Build a one-message chat request (used by the CLI and the demo)."""
    return ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    )


def dumps_event(event: ChatEvent) -> str:
    """Render an event as compact JSON."""
    return json.dumps(event.model_dump(exclude_none=True), separators=(",", ":"))


async def wait_for_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 30.0
) -> set[int]:
    """Return the partitions of `topic`, waiting for metadata of a just-created topic.

    Raises:
        LookupError: the topic has no partitions after `timeout` seconds.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        if asyncio.get_running_loop().time() > deadline:
            raise LookupError(f"topic {topic!r} does not exist (no partitions in metadata)")
        await consumer._client.force_metadata_update()  # pyright: ignore[reportPrivateUsage]
        if not consumer.partitions_for_topic(topic):
            await asyncio.sleep(0.1)  # metadata of a new topic propagates within moments
