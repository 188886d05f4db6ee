"""The provider stream: a closed union of frozen events, and the fold that completes it.

Every provider adapter yields `StreamEvent`s; the worker turns them into chunk
events, and the non-streaming result is `fold()` over the same events, so the
two paths cannot drift.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ferryman.contracts import CompletedToolCall, ErrorCode, FerrymanError, FinishReason, Usage


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TextDelta(_Event):
    """More answer text."""

    kind: Literal["text"] = "text"
    text: str


class ToolCallFragment(_Event):
    """A piece of a tool call: `id` and `name` on first appearance, then argument fragments."""

    kind: Literal["tool_call"] = "tool_call"
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


class UsageReport(_Event):
    """Tokens spent, as reported by the provider."""

    kind: Literal["usage"] = "usage"
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int | None = None
    """Cache reads (part of `input_tokens`)."""
    reasoning_tokens: int | None = None
    cache_write_tokens: int | None = None
    """Cache writes (part of `input_tokens`)."""
    cache_write_long_tokens: int | None = None
    """The part of the writes made with the long (1h) retention."""


class Finish(_Event):
    """The provider finished the answer."""

    kind: Literal["finish"] = "finish"
    reason: FinishReason
    model: str | None = None
    """The model the provider says served the request, when it says."""
    filtered_categories: list[str] | None = None
    """Content-filter categories that ended the answer, when the provider names them."""


StreamEvent = Annotated[
    TextDelta | ToolCallFragment | UsageReport | Finish, Field(discriminator="kind")
]


@dataclass
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    """A finished answer: the fold of a stream."""

    content: str
    tool_calls: list[CompletedToolCall]
    finish_reason: FinishReason
    usage: Usage
    model: str | None
    filtered_categories: list[str] | None = None


class CompletionBuilder:
    """Accumulates stream events into a `Completion`."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._calls: dict[int, _ToolCallParts] = {}
        self._usage = Usage(input_tokens=0, output_tokens=0)
        self._finish: Finish | None = None

    def add(self, event: StreamEvent) -> None:
        """Fold one event in."""
        if isinstance(event, TextDelta):
            self._content.append(event.text)
        elif isinstance(event, ToolCallFragment):
            parts = self._calls.setdefault(event.index, _ToolCallParts())
            if event.id:
                parts.id = event.id
            if event.name:
                parts.name = event.name
            if event.arguments:
                parts.arguments.append(event.arguments)
        elif isinstance(event, UsageReport):
            self._usage = Usage(
                input_tokens=event.input_tokens,
                output_tokens=event.output_tokens,
                cached_input_tokens=event.cached_input_tokens,
                reasoning_tokens=event.reasoning_tokens,
                cache_write_tokens=event.cache_write_tokens,
                cache_write_long_tokens=event.cache_write_long_tokens,
            )
        else:
            self._finish = event

    def result(self) -> Completion:
        """Return the completion.

        Raises:
            FerrymanError: the stream ended without the provider finishing it
                (a cut stream is never reported as a complete answer).
        """
        if self._finish is None:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                "the provider's stream ended before the answer was finished",
                retryable=True,
            )
        calls = [
            CompletedToolCall(id=parts.id, name=parts.name, arguments="".join(parts.arguments))
            for _, parts in sorted(self._calls.items())
        ]
        return Completion(
            content="".join(self._content),
            tool_calls=calls,
            finish_reason=self._finish.reason,
            usage=self._usage,
            model=self._finish.model,
            filtered_categories=self._finish.filtered_categories,
        )


def fold_events(events: Iterable[StreamEvent]) -> Completion:
    """Fold a finished sequence of events.

    Raises:
        FerrymanError: the events do not include a `Finish`.
    """
    builder = CompletionBuilder()
    for event in events:
        builder.add(event)
    return builder.result()


async def fold(stream: AsyncIterator[StreamEvent]) -> Completion:
    """Consume a stream and fold it.

    Raises:
        FerrymanError: the provider failed, or the stream ended unfinished.
    """
    builder = CompletionBuilder()
    async for event in stream:
        builder.add(event)
    return builder.result()
