"""Python client: publish requests to Ferryman workers and read their replies.

```python
connection = KafkaConnection.from_env(os.environ)
async with FerrymanClient(connection, reply_topic="app-7.replies") as client:
    async for event in client.chat_stream(request, expires_in=60):
        ...  # ChatChunk, ChatChunk, …, then a final ChatCompleted
        # (a ChatRestarted or RunRestarted in between means: discard what was shown so far;
        # a tool loop adds ChatProgress, ToolCallStarted and ToolCallFinished)
    completed = await client.chat(request)
    await client.cancel(request_id)  # any request: the workers fail it with `cancelled`
```

The client reads only replies meant for it: either its own reply topic (every partition), or
one partition of a shared reply topic (`reply_partition`). Workers key replies by request id,
so in the second mode the client picks request ids whose key hashes (Kafka's default
murmur2 partitioner, as the workers' producer uses) to its partition. See docs/client.md.
"""
# aiokafka's annotations are partial (unparameterized generics); strict mode would flag every call.
# pyright: reportUnknownMemberType=false, reportUnknownVariableType=false, reportUnknownArgumentType=false

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import BaseModel

from ferryman.cache_control import publish_cache_invalidation
from ferryman.contracts import (
    DEFAULT_LLM_REPLY_TOPIC,
    DEFAULT_LLM_REQUEST_TOPIC,
    LLM_CHAT_REQUESTED,
    ChatChunk,
    ChatCompleted,
    ChatProgress,
    ChatRequest,
    ChatRestarted,
    ToolCallFinished,
    ToolCallStarted,
)
from ferryman.contracts.llm_cache import CacheInvalidation
from ferryman.contracts.mcp import DEFAULT_MCP_CONTROL_TOPIC, CancelRequest
from ferryman.kafka_config import KafkaConnection
from ferryman.publisher import KafkaPublisher
from ferryman.replies import (
    ReplyRegistry,
    ReplyRole,
    ReplySequencer,
    ReplyType,
    RunRestarted,
    default_registry,
)
from ferryman.reply_reader import ReplyReader
from ferryman.request_encoding import RequestOptions, encode_cancel, encode_request
from ferryman.request_stream import RequestFailedError, RequestStream, sequenced_replies
from ferryman.shortcuts import dumps_event, request_from_prompt
from ferryman.topics import ensure_topics, wait_for_partitions

__all__ = [
    "ChatEvent",
    "ChatFailedError",
    "FerrymanClient",
    "PublishedRequest",
    "ReplySequencer",
    "RequestFailedError",
    "RequestStream",
    "RunRestarted",
    "TopicSpec",
    "dumps_event",
    "request_from_prompt",
    "wait_for_partitions",
]

logger = logging.getLogger(__name__)

ChatEvent = (
    ChatChunk
    | ChatRestarted
    | RunRestarted
    | ChatProgress
    | ToolCallStarted
    | ToolCallFinished
    | ChatCompleted
)
"""What `FerrymanClient.chat_stream` yields."""


ChatFailedError = RequestFailedError
"""The name `chat` callers catch; the same class as `RequestFailedError`."""


@dataclass(frozen=True)
class TopicSpec:
    """Partitions and replication of a topic the client is asked to create."""

    partitions: int = 6
    replication_factor: int = 1


@dataclass(frozen=True)
class PublishedRequest:
    """A request on its way: its id, and the reply token its replies must carry (if any)."""

    id: str
    reply_token: str | None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class FerrymanClient:
    """Publishes requests and reads their replies.

    Args:
        connection: a `KafkaConnection`, or the bootstrap list of a plaintext cluster.
        request_topic: where requests go unless a call names another topic.
        reply_topic: where replies are read (sent as the `replyto` extension).
        reply_partition: read only this partition of `reply_topic` (a topic shared by
            several clients, each owning a partition); None reads every partition (a topic
            of this client's own).
        create_reply_topic: create `reply_topic` if missing (True: 6 partitions, replication
            1, for development); by default the topic must exist.
        source: `ce_source` of the requests; (`source`, id) identifies a request.
        reply_tokens: send a secret `replytoken` with each request and accept only replies
            that echo it.
        registry: the request types and their reply types (LLM chat by default).
        clock: the current time (for `expires_in`).
        metadata_timeout: seconds to wait for the reply topic's partitions.
    """

    def __init__(
        self,
        connection: str | KafkaConnection = "127.0.0.1:9092",
        *,
        request_topic: str = DEFAULT_LLM_REQUEST_TOPIC,
        reply_topic: str = DEFAULT_LLM_REPLY_TOPIC,
        reply_partition: int | None = None,
        create_reply_topic: bool | TopicSpec = False,
        source: str | None = None,
        reply_tokens: bool = True,
        registry: ReplyRegistry | None = None,
        clock: Callable[[], datetime] = _utcnow,
        metadata_timeout: float = 10.0,
    ) -> None:
        if reply_partition is not None and reply_partition < 0:
            raise ValueError(f"reply_partition must be >= 0, not {reply_partition}")
        self._connection = KafkaConnection.coerce(connection)
        self._request_topic = request_topic
        self._reply_topic = reply_topic
        self._reply_partition = reply_partition
        self._create_reply_topic = (
            TopicSpec() if create_reply_topic is True else create_reply_topic or None
        )
        self._source = source or f"/ferryman/client/{socket.gethostname()}-{os.getpid()}"
        self._reply_tokens = reply_tokens
        self._registry = registry or default_registry()
        self._clock = clock
        self._publisher = KafkaPublisher(
            self._connection.bootstrap_servers,
            client_id=self._connection.client_id or "ferryman-client",
            connection=self._connection.security_options(),
        )
        self._replies = ReplyReader(
            self._connection, reply_topic, reply_partition, metadata_timeout=metadata_timeout
        )

    async def __aenter__(self) -> FerrymanClient:
        """Connect, and start reading the reply topic (or partition) from its current end.

        Raises:
            LookupError: the reply topic does not exist (and was not to be created).
            ValueError: `reply_partition` is not a partition of the reply topic.
            aiokafka.errors.KafkaError: Kafka could not be reached or refused the credentials.
        """
        spec = self._create_reply_topic
        if spec is not None:
            await ensure_topics(
                self._connection,
                [self._reply_topic],
                partitions=spec.partitions,
                replication_factor=spec.replication_factor,
            )
        try:
            await self._publisher.start()
            await self._replies.start()
        except BaseException:
            await self._publisher.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Disconnect."""
        await self._replies.stop()
        await self._publisher.stop()

    @property
    def source(self) -> str:
        """The `ce_source` of the requests this client sends."""
        return self._source

    def new_request_id(self) -> str:
        """A fresh request id; with `reply_partition`, one whose replies land there."""
        while True:
            request_id = str(uuid.uuid4())
            if self._replies.receives(request_id):
                return request_id

    async def publish(
        self, event_type: str, data: BaseModel | Mapping[str, Any], **options: Any
    ) -> PublishedRequest:
        """Publish a request without waiting for its replies.

        Options are those of `request_stream` but `timeout`.

        Raises:
            pydantic.ValidationError: `data` is not valid for a registered request type.
            ValueError: an option is malformed (see `request_stream`).
            aiokafka.errors.KafkaError: Kafka did not acknowledge the request.
        """
        request_id = self._request_id(options.pop("request_id", None))
        token = secrets.token_urlsafe(24) if self._reply_tokens else None
        await self._send(event_type, data, request_id, token, **options)
        return PublishedRequest(request_id, token)

    def _request_id(self, given: str | None) -> str:
        if given is None:
            return self.new_request_id()
        if not given:
            raise ValueError("request_id must not be empty")
        if not self._replies.receives(given):
            raise ValueError(
                f"request id {given!r} does not hash to reply partition {self._reply_partition}; "
                "let the client choose it (new_request_id())"
            )
        return given

    async def _send(
        self,
        event_type: str,
        data: BaseModel | Mapping[str, Any],
        request_id: str,
        reply_token: str | None,
        *,
        topic: str | None = None,
        key: bytes | None = None,
        **options: Any,
    ) -> None:
        headers, value = encode_request(
            event_type=event_type,
            data=data,
            request_id=request_id,
            source=self._source,
            reply_topic=self._reply_topic,
            reply_token=reply_token,
            options=RequestOptions(**options),
            registry=self._registry,
            now=self._clock(),
        )
        await self._publisher.send_and_wait(
            topic or self._request_topic, value, key=key or request_id.encode(), headers=headers
        )

    def request_stream(
        self,
        event_type: str,
        data: BaseModel | Mapping[str, Any],
        *,
        timeout: float = 600.0,
        **options: Any,
    ) -> RequestStream[BaseModel]:
        """Return the stream of a request: iterating it publishes the request and yields its
        replies in order, ending with the completed one. `request_id` of the stream is known
        at once (for `cancel`).

        A `RunRestarted` (the request was redelivered and runs again) or a restart reply
        (`ChatRestarted`) means: discard what was shown so far. Duplicates, replies of
        older runs or attempts, replies with a wrong reply token and undecodable replies
        are dropped (see `ferryman.replies`).

        Options: `request_id`, `topic` (default: the client's request topic), `key` (the
        request's Kafka key; default: its id), `tenant`, `traceparent`, `tracestate`,
        `expires_in` (seconds) or `expires_at` (aware datetime).

        Raises:
            LookupError: `event_type` has no registered reply types (at the call).
            ValueError: `request_id` is empty or hashes to another reply partition (at the
                call); another option is malformed (when iterated).
            RequestFailedError: the worker published the failed reply (when iterated).
            TimeoutError: no terminal reply within `timeout` seconds (when iterated).
            aiokafka.errors.KafkaError: publishing failed, or reading replies failed.
        """
        replies = self._registry.kind(event_type).replies
        request_id = self._request_id(options.pop("request_id", None))
        events = self._replies_to(event_type, data, request_id, replies, timeout, options)
        return RequestStream(request_id, self._source, events, self.cancel)

    async def _replies_to(
        self,
        event_type: str,
        data: BaseModel | Mapping[str, Any],
        request_id: str,
        replies: Mapping[str, ReplyType],
        timeout: float,
        options: dict[str, Any],
    ) -> AsyncGenerator[BaseModel, None]:
        token = secrets.token_urlsafe(24) if self._reply_tokens else None
        queue = self._replies.register(request_id)
        try:
            await self._send(event_type, data, request_id, token, **options)
            async with asyncio.timeout(timeout):
                async for event in sequenced_replies(queue, replies, token, request_id):
                    yield event
        finally:
            self._replies.unregister(request_id)

    async def request(
        self,
        event_type: str,
        data: BaseModel | Mapping[str, Any],
        *,
        timeout: float = 600.0,
        **options: Any,
    ) -> BaseModel:
        """Publish a request and return its completed reply (options of `request_stream`).

        Raises:
            RequestFailedError: the worker published the failed reply.
            TimeoutError: no terminal reply within `timeout` seconds.
            LookupError: `event_type` has no registered reply types.
            ValueError: an option is malformed.
        """
        replies = self._registry.kind(event_type).replies.values()
        completed = tuple(r.model for r in replies if r.role is ReplyRole.COMPLETED)
        async for event in self.request_stream(event_type, data, timeout=timeout, **options):
            if isinstance(event, completed):
                return event
        raise RuntimeError("the reply stream ended without a terminal event")

    def chat_stream(
        self,
        request: ChatRequest | Mapping[str, Any],
        *,
        timeout: float = 600.0,
        **options: Any,
    ) -> RequestStream[ChatEvent]:
        """Return the stream of a chat request: iterating it publishes the request and yields
        its chunks in order, then its `ChatCompleted`; `request_id` of the stream is known at
        once (for `cancel`).

        In a tool loop (`tool_execution` `auto`) the chunks carry their `step`, and
        `ChatProgress`, `ToolCallStarted` and `ToolCallFinished` come between them as the
        worker publishes them. A `ChatRestarted` (the worker restarted a failed stream on
        another deployment) means: discard the chunks of its `step` received so far; a
        `RunRestarted` (the request was redelivered): discard everything received so far.
        Options are those of `request_stream`.

        Raises:
            ValueError: `request_id` is unusable (at the call); another option is malformed.
            ChatFailedError: the worker published `failed` (when iterated; code `cancelled`
                after `cancel`).
            TimeoutError: no terminal event within `timeout` seconds (when iterated).
            pydantic.ValidationError: `request` is not a valid chat request (when iterated).
        """
        stream = self.request_stream(LLM_CHAT_REQUESTED, request, timeout=timeout, **options)
        return cast(RequestStream[ChatEvent], stream)

    async def chat(
        self, request: ChatRequest | Mapping[str, Any], *, timeout: float = 600.0, **options: Any
    ) -> ChatCompleted:
        """Publish a chat request and return its `ChatCompleted`.

        Raises:
            ChatFailedError: the worker published `failed`.
            TimeoutError: no terminal event within `timeout` seconds.
            pydantic.ValidationError: `request` is not a valid chat request.
            ValueError: an option is malformed.
        """
        completed = await self.request(LLM_CHAT_REQUESTED, request, timeout=timeout, **options)
        return cast(ChatCompleted, completed)

    async def cancel(
        self,
        request_id: str,
        *,
        source: str | None = None,
        reason: str | None = None,
        control_topic: str = DEFAULT_MCP_CONTROL_TOPIC,
    ) -> None:
        """Ask the workers to cancel a request: publish a `CancelRequest` to `control_topic`,
        keyed by `request_id`.

        A request is identified by (`source`, `request_id`); `source` defaults to this
        client's own `ce_source`. The worker running it stops and publishes `failed` with
        code `cancelled` (keep reading the request's stream to see it); a request that
        arrives after its cancel fails the same way; a finished request is not affected.
        Nothing is cancelled implicitly: stopping the iteration of a stream does not.

        Raises:
            pydantic.ValidationError: `request_id` or `source` is empty, or `reason` is longer
                than 1000 characters (nothing is published).
            aiokafka.errors.KafkaError: Kafka did not acknowledge the cancel.
        """
        cancel = CancelRequest(request_id=request_id, source=source or self._source, reason=reason)
        headers, value = encode_cancel(cancel, source=self._source, now=self._clock())
        await self._publisher.send_and_wait(
            control_topic, value, key=request_id.encode(), headers=headers
        )

    async def invalidate_llm_cache(
        self,
        *,
        tenant: str | None = None,
        all: bool = False,
        prefix: str = "",
        reason: str | None = None,
        control_topic: str = DEFAULT_MCP_CONTROL_TOPIC,
    ) -> str:
        """Drop answers from the LLM workers' response cache: publish a `CacheInvalidation`
        to `control_topic` (keyed by the tenant, `*` for all) and return the event's id.

        Give `tenant` (optionally with a `prefix` of its key space: `"<namespace>/"` or
        `"<namespace>/<provider>/<model>/"`) or `all=True`. Entries stored before the event
        are dropped by every replica (a shared Redis cache: by the first replica to read it);
        entries stored after it are untouched.

        Raises:
            pydantic.ValidationError: neither or both of `tenant` and `all`, a `prefix` with
                `all`, or a field too long (nothing is published).
            aiokafka.errors.KafkaError: Kafka did not acknowledge the event.
        """
        invalidation = CacheInvalidation(tenant=tenant, all=all, prefix=prefix, reason=reason)
        return await publish_cache_invalidation(
            self._publisher, invalidation, topic=control_topic, source=self._source,
            now=self._clock(),
        )  # fmt: skip
