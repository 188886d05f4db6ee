"""A stored answer: the chunks its stream published and its `completed`, as compact JSON."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from ferryman.contracts import ChatCompleted, ChunkDelta, ToolCallDelta


class CachedResponse(BaseModel):
    """One answer in the response cache.

    `chunks` are the deltas the original stream published (for an answer that was not
    streamed: its content, then one delta per tool call), so replaying them gives a
    stream whose concatenation equals `completed.content`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    key: str
    chunks: list[ChunkDelta]
    completed: ChatCompleted
    stored_at: AwareDatetime
    expires_at: AwareDatetime

    def to_bytes(self) -> bytes:
        """The entry as stored (compact JSON)."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> CachedResponse:
        """Parse a stored entry.

        Raises:
            ValueError: `blob` is not an entry of this version (an older or newer layout,
                or damaged).
        """
        try:
            return cls.model_validate_json(blob)
        except ValidationError as exc:
            raise ValueError(f"not a cached response: {exc.error_count()} errors") from None


def chunks_of(completed: ChatCompleted) -> list[ChunkDelta]:
    """The deltas that replay an answer that was not streamed: its content (if any), then
    one complete fragment per tool call."""
    chunks: list[ChunkDelta] = []
    if completed.content:
        chunks.append(ChunkDelta(content=completed.content))
    for index, call in enumerate(completed.tool_calls):
        fragment = ToolCallDelta(index=index, id=call.id, name=call.name, arguments=call.arguments)
        chunks.append(ChunkDelta(tool_calls=[fragment]))
    return chunks
