"""Reading the mcp_worker's topics whole, and watching what a client sends on the wire, for
tests that must show a value appears nowhere."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ferryman.codec import IncomingEvent, decode_event
from ferryman.contracts.mcp import MCP_CATALOG_UPDATED
from ferryman.topics import wait_for_partitions
from tests.integration.mcp_harness import McpHarness


async def read_all(harness: McpHarness, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record on the topic now (up to its end offsets when read)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=harness.bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            partitions = await wait_for_partitions(consumer, topic, timeout)
            assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            records: list[Any] = []
            while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    records.extend(batch)
            return records
    finally:
        await consumer.stop()


def record_bytes(records: list[Any]) -> bytes:
    """Every byte of the records: keys, values and header values."""
    parts: list[bytes] = []
    for record in records:
        parts += [record.key or b"", record.value or b""]
        parts += [value or b"" for _, value in record.headers]
    return b"\n".join(parts)


async def events(
    harness: McpHarness, topic: str, until: Callable[[list[IncomingEvent]], bool]
) -> list[IncomingEvent]:
    """The topic's events (tombstones skipped) once `until` holds for them."""
    found: list[IncomingEvent] = []

    def done(records: list[Any]) -> bool:
        nonlocal found
        found = [decode_event(list(r.headers), r.value) for r in records if r.value is not None]
        return until(found)

    await harness.topic(topic, done)
    return found


def of_type(found: list[IncomingEvent], event_type: str) -> list[Any]:
    """The `data` of the events of one type, in order."""
    return [event.data for event in found if event.type == event_type]


def catalog_tools_over_time(found: list[IncomingEvent], server: str, tool: str) -> list[Any]:
    """The tool in each catalog topic record of `server`, oldest first (None: absent)."""
    records = [d for d in of_type(found, MCP_CATALOG_UPDATED) if d["entry"]["server"] == server]
    return [next((t for t in r["entry"]["tools"] if t["name"] == tool), None) for r in records]


def catalog_tool(found: list[IncomingEvent], server: str, tool: str) -> dict[str, Any] | None:
    """The tool in the latest catalog topic record of `server` (None: absent)."""
    return [None, *catalog_tools_over_time(found, server, tool)][-1]


@contextlib.asynccontextmanager
async def recording_proxy(upstream: str) -> AsyncIterator[tuple[str, bytearray]]:
    """A TCP proxy in front of `upstream` (`http://127.0.0.1:PORT/mcp`) that records what the
    client sends: yields the proxied URL and the bytes."""
    host_port = upstream.removeprefix("http://").split("/", 1)[0]
    port = int(host_port.rsplit(":", 1)[1])
    sent = bytearray()

    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if record:
                    sent.extend(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(client_r, server_w, True), pipe(server_r, client_w, False))

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    try:
        yield upstream.replace(f":{port}/", f":{proxy_port}/"), sent
    finally:
        proxy.close()
