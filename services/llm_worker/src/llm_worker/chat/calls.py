"""One provider call: stream it into chunk events (or generate it), bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ferryman.contracts import (
    ChatChunk,
    ChatCompleted,
    ChatRequest,
    ChunkDelta,
    ErrorCode,
    FerrymanError,
    Latency,
    ToolCallDelta,
)
from llm_worker.caching.entries import chunks_of
from llm_worker.chat.call_telemetry import CallLabels
from llm_worker.chat.replies import ChatReplies
from llm_worker.chat.stream_guard import StreamTimeouts, guard_stream
from llm_worker.chat.streaming import (
    Completion,
    CompletionBuilder,
    StreamEvent,
    TextDelta,
    ToolCallFragment,
)
from llm_worker.metrics import LlmMetrics
from llm_worker.providers.port import ChatModel


@dataclass
class StreamProgress:
    """What a request has published so far: the current stream attempt and its chunks."""

    attempt: int = 1
    published: int = 0
    first_token_at: float | None = None
    """`time.monotonic()` of the request's first published chunk."""


@dataclass(frozen=True)
class Call:
    """Where and how one call goes."""

    client: ChatModel
    model: str
    labels: CallLabels
    """The call's metric labels."""
    timeouts: StreamTimeouts
    deadline: float | None
    """The time on `clock` the call must end by."""
    clock: Callable[[], float] | None = None
    """The clock of `deadline` and the stream bounds (default: the event loop's)."""


@dataclass
class CallResult:
    """A finished call: the answer, and its time to first token (seconds) if it streamed."""

    completed: ChatCompleted
    first_token: float | None
    chunks: list[ChunkDelta] = field(default_factory=list[ChunkDelta])
    """With `record`: the deltas of the answer as published (this attempt's only), or for
    an answer that was not streamed, as a stream would have published them."""


async def run_call(
    call: Call,
    request: ChatRequest,
    replies: ChatReplies,
    progress: StreamProgress,
    metrics: LlmMetrics,
    started: float,
    step: int | None = None,
    record: bool = False,
) -> CallResult:
    """Make one call; a streamed answer is published chunk by chunk as it arrives.

    Args:
        call: the deployment, model, bounds and deadline.
        request: the chat request.
        replies: where chunks go.
        progress: updated with every published chunk.
        metrics: chunk and time-to-first-chunk metrics.
        started: `time.monotonic()` when the request's work began (for latencies).
        step: the tool loop's turn the chunks belong to, if any.
        record: keep the answer's deltas in `CallResult.chunks` (for the response cache).

    Raises:
        FerrymanError: the provider failed, timed out, or ended the stream unfinished.
        aiokafka.errors.KafkaError: a chunk could not be enqueued.
    """
    if request.stream:
        return await _stream(call, request, replies, progress, metrics, started, step, record)
    result = await _generate(call, request, started)
    if record:
        result.chunks = chunks_of(result.completed)
    return result


async def _generate(call: Call, request: ChatRequest, started: float) -> CallResult:
    provider = call.client.provider
    budget = None
    if call.deadline is not None:
        now = call.clock() if call.clock else asyncio.get_running_loop().time()
        budget = call.deadline - now
    try:
        async with asyncio.timeout(budget):
            result = await call.client.generate(request, call.model)
    except TimeoutError as exc:
        raise FerrymanError(
            ErrorCode.TIMEOUT,
            f"{provider} did not answer within the call's time budget",
            retryable=True,
            upstream=provider,
        ) from exc
    return CallResult(_completed(result, call, 0, Latency(total=_ms_since(started))), None)


async def _stream(
    call: Call,
    request: ChatRequest,
    replies: ChatReplies,
    progress: StreamProgress,
    metrics: LlmMetrics,
    started: float,
    step: int | None,
    record: bool,
) -> CallResult:
    provider = call.client.provider
    builder = CompletionBuilder()
    recorded: list[ChunkDelta] = []
    call_started = time.monotonic()
    first_token: float | None = None
    attempt = progress.attempt
    events = guard_stream(
        call.client.stream(request, call.model),
        call.timeouts,
        provider=provider,
        deadline=call.deadline,
        clock=call.clock,
    )
    # Closed here, not by the garbage collector, when publishing a chunk fails mid-stream:
    # the provider's connection goes back at once and no finalizer runs on another task.
    async with contextlib.aclosing(events):
        async for event in events:
            builder.add(event)
            delta = _chunk_delta(event)
            if delta is None:
                continue
            if first_token is None:
                now = time.monotonic()
                first_token = now - call_started
                labels = call.labels
                metrics.first_chunk.labels(*labels.genai(), labels.upstream).observe(first_token)
                if progress.first_token_at is None:
                    progress.first_token_at = now
            chunk = ChatChunk(index=progress.published, delta=delta, attempt=attempt, step=step)
            await replies.chunk(chunk)
            progress.published += 1
            if record:
                recorded.append(delta)
    result = builder.result()
    metrics.chunks.labels(upstream=call.labels.upstream).inc(progress.published)
    first_ms = None
    if progress.first_token_at is not None:
        first_ms = round((progress.first_token_at - started) * 1000.0, 3)
    latency = Latency(first_token=first_ms, total=_ms_since(started))
    completed = _completed(result, call, progress.published, latency)
    if attempt > 1:
        completed = completed.model_copy(update={"stream_attempt": attempt})
    return CallResult(completed, first_token, recorded)


def _chunk_delta(event: StreamEvent) -> ChunkDelta | None:
    """The chunk a stream event is published as (None: it is not published)."""
    if isinstance(event, TextDelta):
        return ChunkDelta(content=event.text)
    if isinstance(event, ToolCallFragment):
        fragment = ToolCallDelta(
            index=event.index, id=event.id, name=event.name, arguments=event.arguments
        )
        return ChunkDelta(tool_calls=[fragment])
    return None


def _completed(result: Completion, call: Call, chunks: int, latency: Latency) -> ChatCompleted:
    return ChatCompleted(
        content=result.content,
        tool_calls=result.tool_calls,
        finish_reason=result.finish_reason,
        usage=result.usage,
        provider=call.client.provider,
        model=result.model or call.model,
        chunk_count=chunks,
        latency_ms=latency,
        filtered_categories=result.filtered_categories,
    )


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 3)
