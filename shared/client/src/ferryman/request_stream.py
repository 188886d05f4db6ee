"""The replies of one request as an async iterator that knows which request it reads.

```python
stream = client.chat_stream(request)
print(stream.request_id)          # chosen before anything is published
async for event in stream:        # the request is published on the first iteration
    ...
await stream.cancel("user left")  # or client.cancel(stream.request_id)
```
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Mapping
from typing import Generic, Protocol, Self, TypeVar, cast

from pydantic import BaseModel, ValidationError

from ferryman.contracts.errors import ErrorInfo
from ferryman.contracts.mcp import DEFAULT_MCP_CONTROL_TOPIC
from ferryman.replies import ReplyRole, ReplySequencer, ReplyType, reply_token_matches
from ferryman.reply_reader import Delivery

EventT = TypeVar("EventT", bound=BaseModel)

logger = logging.getLogger(__name__)


class RequestFailedError(Exception):
    """The worker answered with a `failed` event; `error` carries code and retryability,
    `failed` the whole event's data (e.g. `StorageFailed.step`, the pipeline step)."""

    def __init__(self, error: ErrorInfo, failed: BaseModel | None = None) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error
        self.failed = failed


class _Failed(Protocol):
    @property
    def error(self) -> ErrorInfo: ...


async def sequenced_replies(
    queue: asyncio.Queue[Delivery | BaseException],
    replies: Mapping[str, ReplyType],
    token: str | None,
    request_id: str,
) -> AsyncGenerator[BaseModel, None]:
    """Yield the replies to `request_id` arriving on `queue` as a reader should see them
    (see `ferryman.replies`), up to the terminal one; replies of unknown types, with a wrong
    reply token or undecodable are dropped (and logged, without the token).

    Raises:
        RequestFailedError: the failed reply was accepted.
        Exception: reading replies failed (what the reader put on `queue`).
    """
    sequencer = ReplySequencer()
    while not sequencer.done:
        delivery = await queue.get()
        if isinstance(delivery, BaseException):
            raise delivery
        reply_type = replies.get(delivery.event_type)
        if reply_type is None:
            continue
        if not reply_token_matches(token, delivery.reply_token):
            logger.warning(
                "dropped reply %s to request %s: wrong reply token", delivery.event_id, request_id
            )
            continue
        try:
            payload = reply_type.model.model_validate_json(delivery.value)
        except ValidationError as exc:
            logger.warning(
                "dropped undecodable reply %s to request %s: %d errors",
                delivery.event_id,
                request_id,
                exc.error_count(),
            )
            continue
        accepted = sequencer.accept(
            payload, reply_type.role, run_id=delivery.run_id, event_id=delivery.event_id
        )
        for shown in accepted:
            if shown is payload and reply_type.role is ReplyRole.FAILED:
                raise RequestFailedError(cast(_Failed, payload).error, payload)
            yield shown


class Canceller(Protocol):
    """What `RequestStream.cancel` calls: `FerrymanClient.cancel`."""

    def __call__(
        self,
        request_id: str,
        *,
        source: str | None = None,
        reason: str | None = None,
        control_topic: str = DEFAULT_MCP_CONTROL_TOPIC,
    ) -> Awaitable[None]: ...


class RequestStream(Generic[EventT]):
    """The replies of one request, in the order a reader should see them.

    The request is published when the stream is first iterated. Stopping the iteration
    (breaking out of the loop, cancelling the task that iterates) does not cancel the
    request on the workers; `cancel` does, explicitly.

    Args:
        request_id: the request's id (its `ce_id`).
        source: the request's `ce_source`; (`source`, `request_id`) identifies it.
        events: the sequenced replies.
        canceller: publishes a cancel (the client's `cancel`).
    """

    def __init__(
        self,
        request_id: str,
        source: str,
        events: AsyncGenerator[BaseModel, None],
        canceller: Canceller,
    ) -> None:
        self.request_id = request_id
        """The request's id: what `FerrymanClient.cancel` takes."""
        self.source = source
        """The request's `ce_source`."""
        self._events = events
        self._canceller = canceller

    def __aiter__(self) -> Self:
        """This stream."""
        return self

    async def __anext__(self) -> EventT:
        """The next reply.

        Raises:
            StopAsyncIteration: the terminal reply was yielded.
            RequestFailedError: the worker published the failed reply.
            TimeoutError: no terminal reply in time.
        """
        return cast(EventT, await anext(self._events))

    async def aclose(self) -> None:
        """Stop reading replies (the request is not cancelled)."""
        await self._events.aclose()

    async def cancel(
        self, reason: str | None = None, *, control_topic: str = DEFAULT_MCP_CONTROL_TOPIC
    ) -> None:
        """Ask the workers to cancel this request (see `FerrymanClient.cancel`); keep
        iterating to see its terminal reply (usually `failed` with code `cancelled`).

        Raises:
            pydantic.ValidationError: `reason` is longer than 1000 characters.
            aiokafka.errors.KafkaError: Kafka did not acknowledge the cancel.
        """
        await self._canceller(
            self.request_id, source=self.source, reason=reason, control_topic=control_topic
        )
