"""A `ChatJob.replies` that records the events instead of publishing them.

Routing and resilience tests check which events a request produced, in which order and
with what data; how they are published is tested with the real publisher elsewhere.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_PROGRESS,
    LLM_CHAT_RESTARTED,
    LLM_CHAT_TOOL_CALLED,
    LLM_CHAT_TOOL_RESULT,
    ChatChunk,
    ChatCompleted,
    ChatRestarted,
    ErrorInfo,
    ToolCallFinished,
    ToolCallStarted,
)


class RecordingReplies:
    """Records `(event type, data)` as the event would carry it (JSON, no nulls)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def chunk(self, chunk: ChatChunk) -> None:
        self._record(LLM_CHAT_CHUNK, chunk)

    async def restarted(self, restart: ChatRestarted) -> None:
        self._record(LLM_CHAT_RESTARTED, restart)

    async def progress(self, stage: str, step: int, message: str | None) -> None:
        data = {"stage": stage, "step": step, "message": message}
        self.events.append((LLM_CHAT_PROGRESS, {k: v for k, v in data.items() if v is not None}))

    async def tool_called(self, event: ToolCallStarted) -> None:
        self._record(LLM_CHAT_TOOL_CALLED, event)

    async def tool_result(self, event: ToolCallFinished) -> None:
        self._record(LLM_CHAT_TOOL_RESULT, event)

    async def completed(self, result: ChatCompleted) -> None:
        self._record(LLM_CHAT_COMPLETED, result)

    async def failed(self, error: ErrorInfo) -> None:
        self.events.append((LLM_CHAT_FAILED, {"error": _data(error)}))

    def types(self) -> list[str]:
        return [event_type for event_type, _ in self.events]

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [data for t, data in self.events if t == event_type]

    def _record(self, event_type: str, payload: BaseModel) -> None:
        self.events.append((event_type, _data(payload)))


def _data(payload: BaseModel) -> dict[str, Any]:
    return payload.model_dump(mode="json", exclude_none=True)
