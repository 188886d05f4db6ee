"""The kit's floor: CPU per request of the documented echo worker (docs/examples), which does
no upstream work at all (one chunk and one `completed` per request), at a paced rate.

`uv run --frozen python -m tests.bench.kit_floor [--rate 100] [--requests 2000]`: what any
worker on the kit pays per request for Kafka (consume, produce, commit) and the pipeline
before its own work; the MCP bench's CPU ratio is read against it (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer  # pyright: ignore[reportMissingTypeStubs]

from ferryman.codec import encode_binary
from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics
from tests.bench.session import pin_to_end
from tests.mcp_servers import free_port

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
WARMUP = 200


async def measure(rate: float, requests: int) -> float:
    """CPU milliseconds the echo worker spends per request at `rate` requests/s."""
    tag = uuid.uuid4().hex[:8]
    request_topic, reply_topic = f"echo-{tag}.requests", f"echo-{tag}.results"
    await ensure_topics(BOOTSTRAP, [request_topic, reply_topic], partitions=6, replication_factor=1)
    settings = {
        "REQUEST_TOPIC": request_topic,
        "DEFAULT_REPLY_TOPIC": reply_topic,
        "GROUP_ID": f"g-{tag}",
        "HTTP_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
        "MAX_IN_FLIGHT": "2000",
    }
    env = {**os.environ, **{f"ECHO_WORKER_{k}": v for k, v in settings.items()}}
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "docs" / "examples" / "echo_worker.py"), env=env
    )
    publisher = KafkaPublisher(BOOTSTRAP, client_id=f"kit-floor-{tag}")
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None)
    await publisher.start()
    await consumer.start()
    completed = 0

    async def read() -> None:
        nonlocal completed
        async for record in consumer:
            if dict(record.headers).get("ce_type") == b"example.echo.completed":
                completed += 1

    async def send(index: int) -> None:
        request_id = f"{tag}-{index}"
        attributes = {
            "id": request_id,
            "type": "example.echo.requested",
            "source": "/bench",
            "datacontenttype": "application/json",
        }
        headers, value = encode_binary(attributes, json.dumps({"text": "x"}).encode())
        await publisher.send(request_topic, value, key=request_id.encode(), headers=headers)

    async def until(count: int) -> None:
        while completed < count:
            await asyncio.sleep(0.05)  # polling a counter the reader task advances

    await pin_to_end(consumer, reply_topic)
    reader = asyncio.create_task(read())
    try:
        for index in range(WARMUP):
            await send(index)
        await asyncio.wait_for(until(WARMUP), 120)
        process = psutil.Process(worker.pid)
        cpu0 = sum(process.cpu_times()[:2])
        start = time.monotonic()
        for index in range(requests):
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            await send(WARMUP + index)
        await asyncio.wait_for(until(WARMUP + requests), 120)
        return (sum(process.cpu_times()[:2]) - cpu0) / requests * 1000
    finally:
        reader.cancel()
        await publisher.stop()
        await consumer.stop()
        worker.terminate()
        await worker.wait()


def main() -> None:
    """Measure and print the floor."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests")
    options = parser.parse_args()
    per_request = asyncio.run(measure(options.rate, options.requests))
    print(f"echo worker at {options.rate:g}/s: {per_request:.2f} ms CPU per request")


if __name__ == "__main__":
    main()
