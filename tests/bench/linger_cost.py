"""Benchmark: what the producer's `linger_ms` does to a worker's reply streams on a real Kafka.

`uv run --frozen python -m tests.bench.linger_cost [--lingers 0,5] [--rates 10,50,100]`

One process plays the worker's publishing side only: requests "arrive" at each rate (absolute
pacing), and each one streams `--tokens` chunk events at `--token-rate` through a
`ReplyStream` over a `KafkaPublisher` with the given `linger_ms`, then its terminal event,
waiting for every acknowledgement as the worker does. No LLM, no request consumer, so the
CPU measured (`time.process_time` over the measured window) is the cost of publishing
replies, which is what linger changes. Per linger and rate it prints:

- `cpu ms/req`: this process's CPU per request (the stream pacing itself costs the same
  at every linger);
- `first ack p50/p99`: ms from handing a stream's first chunk to the producer until Kafka
  acknowledged it, which is what linger adds to a client's time to first token;
- `done p50/p99`: ms from the last chunk to the terminal event's acknowledgement;
- `records/request`: records per produce request (aiokafka's sender, counted).

Lingers are interleaved per rate, and `--repeat` runs the whole grid again, so a busy host
skews all columns alike. The broker is `KAFKA_BOOTSTRAP_SERVERS` or the local one of
`tools/kafka/local_kafka.py` (started if none answers). docs/benchmarks.md has figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ferryman.contracts import LLM_CHAT_CHUNK, LLM_CHAT_COMPLETED, LLM_CHAT_FAILED, ChatFailed
from ferryman.contracts.llm import ChatChunk, ChatCompleted, ChunkDelta
from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics
from ferryman_runtime.replies import ReplyStream
from tests.bench.procs import kafka_bootstrap

COMPLETED = ChatCompleted.model_validate(
    {
        "content": "x" * 32,
        "tool_calls": [],
        "finish_reason": "stop",
        "usage": {"input_tokens": 12, "output_tokens": 32},
        "provider": "openai",
        "model": "bench",
        "chunk_count": 32,
        "latency_ms": {"first_token": 50.0, "total": 205.0},
    }
)


@dataclass
class Stats:
    """What one (linger, rate) cell measured."""

    first_ack_ms: list[float] = field(default_factory=list)
    done_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    requests: int = 0
    produce_requests: int = 0
    records: int = 0


class CountingPublisher(KafkaPublisher):
    """A `KafkaPublisher` that counts produce requests and the records they carried."""

    counting = False
    produce_requests = 0
    records = 0

    async def start(self) -> None:
        await super().start()
        sender = self._producer._sender  # pyright: ignore[reportPrivateUsage]
        send_produce_request = sender._send_produce_req  # pyright: ignore[reportPrivateUsage]

        async def counted(node_id: int, batches: dict[Any, Any]) -> None:
            if self.counting:
                self.produce_requests += 1
                self.records += sum(batch.record_count for batch in batches.values())
            await send_produce_request(node_id, batches)

        sender._send_produce_req = counted  # pyright: ignore[reportPrivateUsage]


async def one_request(
    publisher: KafkaPublisher, topic: str, args: argparse.Namespace, stats: Stats | None
) -> None:
    """Stream one request's chunks at the token rate, then its terminal event."""
    stream = ReplyStream(
        publisher,
        topic=topic,
        request_id=str(uuid.uuid4()),
        source="/ferryman/llm-worker/bench",
        extensions={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        failed_type=LLM_CHAT_FAILED,
        failed_model=ChatFailed,
    )
    start = time.monotonic()
    for index in range(args.tokens):
        await stream.emit(LLM_CHAT_CHUNK, ChatChunk(index=index, delta=ChunkDelta(content=" tok")))
        if index == 0 and stats is not None:
            first = stream._pending[0]  # pyright: ignore[reportPrivateUsage]
            first.add_done_callback(
                lambda _, s=stats: s.first_ack_ms.append((time.monotonic() - start) * 1000)
            )
        if index < args.tokens - 1:
            await asyncio.sleep(1 / args.token_rate)
    last = time.monotonic()
    await stream.finish(LLM_CHAT_COMPLETED, COMPLETED)
    if stats is not None:
        stats.done_ms.append((time.monotonic() - last) * 1000)


async def at_rate(
    publisher: CountingPublisher, topic: str, args: argparse.Namespace, rate: float
) -> Stats:
    """Warm up, then measure `--seconds` of requests arriving at `rate`."""
    stats = Stats()
    warmup, measured = round(rate * args.warmup_seconds), round(rate * args.seconds)
    tasks: list[asyncio.Task[None]] = []
    t0, cpu0 = time.monotonic(), time.process_time()
    for number in range(warmup + measured):
        if number == warmup:
            await asyncio.gather(*tasks)  # the measured window starts with no stream open
            tasks.clear()
            publisher.counting, publisher.produce_requests, publisher.records = True, 0, 0
            cpu0, t0 = time.process_time(), time.monotonic() - number / rate
        delay = t0 + number / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        measuring = stats if number >= warmup else None
        tasks.append(asyncio.create_task(one_request(publisher, topic, args, measuring)))
    await asyncio.gather(*tasks)
    stats.cpu_s = time.process_time() - cpu0
    publisher.counting = False
    stats.requests = measured
    stats.produce_requests, stats.records = publisher.produce_requests, publisher.records
    return stats


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, by the inclusive method."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def row(linger: int, rate: float, stats: Stats) -> str:
    """One printed line of results."""
    return (
        f"linger {linger:>3} ms  {rate:>5g} req/s  "
        f"cpu ms/req {stats.cpu_s / stats.requests * 1000:6.2f}  "
        f"first ack p50/p99 {percentile(stats.first_ack_ms, 50):6.2f} / "
        f"{percentile(stats.first_ack_ms, 99):6.2f}  "
        f"done p50/p99 {percentile(stats.done_ms, 50):6.2f} / "
        f"{percentile(stats.done_ms, 99):6.2f}  "
        f"records/request {stats.records / max(stats.produce_requests, 1):5.1f}"
    )


async def bench(args: argparse.Namespace, bootstrap: str) -> None:
    """Run the grid: for each repeat and rate, every linger in turn on a fresh topic."""
    for repeat in range(args.repeat):
        for rate in args.rates:
            for linger in args.lingers:
                topic = f"bench-linger-{uuid.uuid4().hex[:8]}.replies"
                await ensure_topics(
                    bootstrap, [topic], partitions=args.partitions, replication_factor=1
                )
                publisher = CountingPublisher(
                    bootstrap, client_id="ferryman-linger-bench", linger_ms=linger
                )
                await publisher.start()
                try:
                    stats = await at_rate(publisher, topic, args, rate)
                finally:
                    await publisher.stop()
                print(f"run {repeat + 1}  {row(linger, rate, stats)}", flush=True)


def numbers(text: str) -> list[float]:
    """Parse a comma-separated list of numbers."""
    return [float(n) for n in text.split(",") if n.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lingers", type=numbers, default=[0.0, 2.0, 5.0, 10.0])
    parser.add_argument("--rates", type=numbers, default=[10.0, 50.0, 100.0], help="req/s")
    parser.add_argument("--tokens", type=int, default=32, help="chunks per request")
    parser.add_argument("--token-rate", type=float, default=200.0, help="chunks/s per request")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured s per cell")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="unmeasured s")
    parser.add_argument("--partitions", type=int, default=6, help="reply topic partitions")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the whole grid")
    args = parser.parse_args(argv)
    args.lingers = [int(linger) for linger in args.lingers]
    bootstrap, local_kafka = kafka_bootstrap()
    try:
        run = asyncio.run
        with contextlib.suppress(ImportError):
            import uvloop  # the worker's event loop

            run = uvloop.run
        run(bench(args, bootstrap))
    finally:
        if local_kafka is not None:
            local_kafka.stop()


if __name__ == "__main__":
    main()
