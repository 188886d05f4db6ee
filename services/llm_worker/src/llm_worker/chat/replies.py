"""The chat reply events of one execution, on top of the shared `ReplyStream`."""

from __future__ import annotations

from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_RESTARTED,
    ChatChunk,
    ChatCompleted,
    ChatRestarted,
    ErrorInfo,
)
from ferryman_runtime.replies import ReplyStream


class ChatReplies:
    """Typed chat events over one `ReplyStream`: chunks, restarts, then completed or failed.

    Args:
        stream: the execution's reply stream (run id, ordering, acknowledgements).
    """

    def __init__(self, stream: ReplyStream) -> None:
        self.stream = stream
        self.chunk_count = 0
        """Chunks published so far by this execution."""

    async def chunk(self, chunk: ChatChunk) -> None:
        """Enqueue a chunk event.

        Raises:
            aiokafka.errors.KafkaError: the producer refused the record.
        """
        await self.stream.emit(LLM_CHAT_CHUNK, chunk)
        self.chunk_count += 1

    async def restarted(self, restart: ChatRestarted) -> None:
        """Enqueue a `restarted` event: consumers discard the chunks published so far.

        Raises:
            aiokafka.errors.KafkaError: the producer refused the record.
        """
        await self.stream.emit(LLM_CHAT_RESTARTED, restart)

    async def completed(self, result: ChatCompleted) -> None:
        """Publish `completed` and wait until every event of the execution is acknowledged.

        Raises:
            aiokafka.errors.KafkaError: some event was not acknowledged.
        """
        await self.stream.finish(LLM_CHAT_COMPLETED, result)

    async def failed(self, error: ErrorInfo) -> None:
        """Publish `failed` and wait until every event of the execution is acknowledged.

        Raises:
            aiokafka.errors.KafkaError: some event was not acknowledged.
        """
        await self.stream.fail(error)
