"""The chat reply events of one execution, on top of the shared `ReplyStream`."""

from __future__ import annotations

from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_PROGRESS,
    LLM_CHAT_RESTARTED,
    LLM_CHAT_TOOL_CALLED,
    LLM_CHAT_TOOL_RESULT,
    ChatChunk,
    ChatCompleted,
    ChatProgress,
    ChatRestarted,
    ErrorInfo,
    ToolCallFinished,
    ToolCallStarted,
)
from ferryman_runtime.replies import ReplyStream


class ChatReplies:
    """Typed chat events over one `ReplyStream`: chunks, restarts, progress and tool events,
    then completed or failed.

    Args:
        stream: the execution's reply stream (run id, ordering, acknowledgements).
        progress_events: whether progress and tool events are published (a request with
            `stream: false` gets only its terminal event).
    """

    def __init__(self, stream: ReplyStream, *, progress_events: bool = True) -> None:
        self.stream = stream
        self.chunk_count = 0
        """Chunks published so far by this execution."""
        self._progress_events = progress_events
        self._progress_sequence = 0

    async def progress(self, stage: str, step: int, message: str | None) -> None:
        """Enqueue a progress event (`ChatProgress.stage`).

        Raises:
            aiokafka.errors.KafkaError: the producer refused the record.
        """
        if not self._progress_events:
            return
        event = ChatProgress.model_validate(
            {"stage": stage, "step": step, "message": message, "sequence": self._progress_sequence}
        )
        self._progress_sequence += 1
        await self.stream.emit(LLM_CHAT_PROGRESS, event)

    async def tool_called(self, event: ToolCallStarted) -> None:
        """Enqueue a `tool.called` event.

        Raises:
            aiokafka.errors.KafkaError: the producer refused the record.
        """
        if self._progress_events:
            await self.stream.emit(LLM_CHAT_TOOL_CALLED, event)

    async def tool_result(self, event: ToolCallFinished) -> None:
        """Enqueue a `tool.result` event.

        Raises:
            aiokafka.errors.KafkaError: the producer refused the record.
        """
        if self._progress_events:
            await self.stream.emit(LLM_CHAT_TOOL_RESULT, event)

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
