"""Micro-benchmark: the CPU one chunk event costs the worker before it reaches the producer.

`uv run --frozen python -m tests.bench.chunk_cost [--chunks N] [--repeat R]`

Times `ReplyStream.emit` of prebuilt `ChatChunk`s through a publisher whose `send` does
nothing (returns an already-acknowledged future), so the figure is Ferryman's own work per
chunk: payload JSON, headers (`ce_id`, `ce_time`, the fixed ones) and the stream's
bookkeeping. Each stream gets `--tokens` chunks and is then finished, as in the worker, so
the per-stream setup (the header template) is spread over its chunks. The parts are timed
on their own too. Every figure is the best of `--repeat` runs, in µs per chunk.
docs/benchmarks.md ("Per-chunk cost") has the figures before and after the fast paths.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from collections.abc import Callable
from typing import Any, cast

from aiokafka.structs import RecordMetadata

from ferryman.codec import BinaryHeaders
from ferryman.contracts import LLM_CHAT_CHUNK, LLM_CHAT_FAILED, ChatFailed, ErrorCode, ErrorInfo
from ferryman.contracts.llm import ChatChunk, ChunkDelta, ToolCallDelta
from ferryman.publisher import KafkaPublisher
from ferryman_runtime.replies import ReplyStream

EXTENSIONS = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


class NoopPublisher:
    """Stands in for `KafkaPublisher`: every record is acknowledged at once, nothing is sent."""

    def __init__(self) -> None:
        self.records = 0

    async def send(
        self, topic: str, value: bytes | None, *, key: bytes | None, headers: Any = ()
    ) -> asyncio.Future[RecordMetadata]:
        self.records += 1
        acked: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        acked.set_result(cast(RecordMetadata, None))
        return acked


def content_chunks(count: int) -> list[ChatChunk]:
    """Chunks as a chat answer streams them: a word or two of text each."""
    words = [" the", " quick", " brown", " fox", " jumps", "\n", " über", ' "lazy"']
    return [
        ChatChunk(index=i, delta=ChunkDelta(content=words[i % len(words)])) for i in range(count)
    ]


def tool_chunks(count: int) -> list[ChatChunk]:
    """Chunks of one streamed tool call: id and name first, then argument fragments."""
    first = ToolCallDelta(index=0, id="call_abc123", name="get_weather", arguments="")
    fragments = ['{"city', '":"', "Par", 'is"', ',"unit":', '"C"}']
    return [
        ChatChunk(
            index=i,
            delta=ChunkDelta(
                tool_calls=[first if i == 0 else ToolCallDelta(index=0, arguments=fragments[i % 6])]
            ),
        )
        for i in range(count)
    ]


async def _emit_streams(chunks: list[ChatChunk], streams: int) -> float:
    publisher = NoopPublisher()
    error = ErrorInfo(code=ErrorCode.INTERNAL, message="bench", retryable=False)
    started = time.perf_counter()
    for number in range(streams):
        stream = ReplyStream(
            cast(KafkaPublisher, publisher),
            topic="bench.llm.replies",
            request_id=f"request-{number}",
            source="/ferryman/llm-worker/bench",
            extensions=EXTENSIONS,
            failed_type=LLM_CHAT_FAILED,
            failed_model=ChatFailed,
        )
        for chunk in chunks:
            await stream.emit(LLM_CHAT_CHUNK, chunk)
        await stream.fail(error)
    elapsed = time.perf_counter() - started
    assert publisher.records == streams * (len(chunks) + 1)
    return elapsed


def emit_cost(chunks: list[ChatChunk], total: int, repeat: int) -> float:
    """Best µs per chunk for `ReplyStream.emit`, stream setup and finish included."""
    streams = max(1, total // len(chunks))
    best = min(asyncio.run(_emit_streams(chunks, streams)) for _ in range(repeat))
    return best / (streams * len(chunks)) * 1e6


def part_cost(work: Callable[[], object], total: int, repeat: int) -> float:
    """Best µs per call of `work`."""
    return min(timeit.repeat(work, number=total, repeat=repeat)) / total * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks per timed run")
    parser.add_argument("--tokens", type=int, default=32, help="chunks per stream")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best one counts")
    args = parser.parse_args(argv)

    content, tools = content_chunks(args.tokens), tool_chunks(args.tokens)
    headers = BinaryHeaders(
        event_type=LLM_CHAT_CHUNK,
        source="/ferryman/llm-worker/bench",
        correlation_id="request-1",
        extensions=EXTENSIONS,
    )
    sample = content[1]
    rows = [
        ("ReplyStream.emit, content chunk", emit_cost(content, args.chunks, args.repeat)),
        ("ReplyStream.emit, tool-call chunk", emit_cost(tools, args.chunks, args.repeat)),
        (
            "  BinaryHeaders(event_id)",
            part_cost(lambda: headers("run.7"), args.chunks, args.repeat),
        ),
        (
            "  model_dump_json(exclude_none=True).encode()",
            part_cost(
                lambda: sample.model_dump_json(exclude_none=True).encode(), args.chunks, args.repeat
            ),
        ),
        (
            "  __pydantic_serializer__.to_json(exclude_none=True)",
            part_cost(
                lambda: ChatChunk.__pydantic_serializer__.to_json(sample, exclude_none=True),
                args.chunks,
                args.repeat,
            ),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, micros in rows:
        print(f"{name:<{width}}  {micros:6.2f} µs/chunk")


if __name__ == "__main__":
    main()
