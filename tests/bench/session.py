"""One worker process under load: its topics, the bench's publisher and reply reader.

`WorkerSession` creates fresh topics (`bench-<tag>.llm.*`), starts the worker of a
`WorkerBuild`, waits for `/health` ready, and reads the reply topic itself (group_id=None,
assigned and pinned to its end before anything is published), stamping per request the
publish, the first chunk seen and the terminal event seen (all `time.monotonic()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Self

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from ferryman.codec import encode_binary
from ferryman.contracts import LLM_CHAT_REQUESTED
from ferryman.contracts.events import EXT_REPLY_TO
from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics
from tests.bench.bare import MESSAGES, MODEL
from tests.bench.procs import Fake, WorkerBuild, WorkerProcess, http_json, start_worker, stop

Item = tuple[str, bytes, list[tuple[str, bytes]]]  # request id, value, headers


@dataclass
class Req:
    sent: float = 0.0
    first: float | None = None
    done: float | None = None
    failed: bool = False
    chunks: int = 0


class ReplyReader:
    """Reads the reply topic; timestamps each request's first chunk and terminal event."""

    def __init__(self) -> None:
        self.reqs: dict[str, Req] = {}
        self.terminal = 0

    async def run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for records in batch.values():
                for record in records:
                    headers = dict(record.headers)
                    req = self.reqs.get(headers.get("ce_correlationid", b"").decode())
                    if req is None or req.done is not None:
                        continue
                    kind = headers.get("ce_type", b"").decode().rsplit(".", 1)[-1]
                    if kind == "chunk":
                        req.chunks += 1
                        if req.first is None:
                            req.first = now
                    elif kind in ("completed", "failed"):
                        req.done, req.failed = now, kind == "failed"
                        self.terminal += 1


async def pin_to_end(consumer: AIOKafkaConsumer, topic: str) -> None:
    """Assign every partition of `topic` to the started `consumer` (no group) and pin its
    positions to the end, so it reads exactly what is published from now on."""
    partitions: set[int] | None = None
    for _ in range(50):
        if partitions := consumer.partitions_for_topic(topic):
            break
        await consumer._client.force_metadata_update()  # pyright: ignore[reportPrivateUsage]
    assigned = [TopicPartition(topic, p) for p in sorted(partitions or ())]
    consumer.assign(assigned)
    await consumer.seek_to_end(*assigned)
    for tp in assigned:  # pin the positions before anything is published
        await consumer.position(tp)


class WorkerSession:
    """A started worker plus the bench's Kafka client side; use `async with`."""

    def __init__(self, build: WorkerBuild, bootstrap: str, fake: Fake, *, max_in_flight: int,
                 partitions: int) -> None:  # fmt: skip
        self.build, self.bootstrap, self.fake = build, bootstrap, fake
        self.max_in_flight, self.partitions = max_in_flight, partitions
        self.tag = uuid.uuid4().hex[:8]
        self.req_topic = f"bench-{self.tag}.llm.requests"
        self.reply_topic = f"bench-{self.tag}.llm.results"
        self.reader = ReplyReader()
        self.publisher = KafkaPublisher(bootstrap, client_id="ferryman-bench")
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        self._reader_task: asyncio.Task[None] | None = None
        self.worker: WorkerProcess | None = None
        self.process: psutil.Process | None = None
        body = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True}).encode()
        self._body = body
        self._common = {"type": LLM_CHAT_REQUESTED, "source": "/ferryman/bench",
                        "datacontenttype": "application/json",
                        EXT_REPLY_TO: self.reply_topic}  # fmt: skip

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        await ensure_topics(self.bootstrap, [self.req_topic, self.reply_topic],
                            partitions=self.partitions, replication_factor=1)  # fmt: skip
        self.worker = worker = start_worker(
            self.build, self.bootstrap, self.fake, self.tag,
            max_in_flight=self.max_in_flight, partitions=self.partitions,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while not ((await self.health()) or {}).get("ready"):
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.build.label} worker did not get ready; "
                                   f"see {worker.log}")  # fmt: skip
            await asyncio.sleep(0.2)
        self.process = psutil.Process(worker.proc.pid)
        await self.publisher.start()
        await self.consumer.start()
        await pin_to_end(self.consumer, self.reply_topic)
        self._reader_task = asyncio.create_task(self.reader.run(self.consumer))

    async def __aexit__(self, *_exc: object) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        for closing in (self.consumer.stop(), self.publisher.stop()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, 10)
        if self.worker is not None:
            await asyncio.to_thread(stop, self.worker.proc)

    @property
    def alive(self) -> bool:
        return self.worker is not None and self.worker.proc.poll() is None

    async def health(self) -> dict[str, Any]:
        """The worker's `/health` document ({} when it does not answer)."""
        assert self.worker is not None
        return (await asyncio.to_thread(http_json, self.worker.health_url)) or {}

    def cpu(self) -> float:
        """The worker's user + system CPU seconds so far."""
        assert self.process is not None
        return sum(self.process.cpu_times()[:2])

    def rss_mb(self) -> float:
        """The worker's resident set now, in MB."""
        assert self.process is not None
        return self.process.memory_info().rss / 2**20

    def encode(self, count: int) -> list[Item]:
        """`count` fresh requests (encoded before a phase, outside its timing)."""
        items: list[Item] = []
        for rid in (str(uuid.uuid4()) for _ in range(count)):
            headers, value = encode_binary({**self._common, "id": rid}, self._body)
            items.append((rid, value, headers))
        return items

    async def send(self, item: Item) -> tuple[Req, asyncio.Future[Any]]:
        """Publish one request; its `Req` stamps and the future of Kafka's ack."""
        rid, value, headers = item
        self.reader.reqs[rid] = req = Req(sent=time.monotonic())
        future = await self.publisher.send(self.req_topic, value, key=rid.encode(),
                                           headers=headers)  # fmt: skip
        return req, future

    async def wait_terminal(self, target: int, timeout: float) -> None:
        """Until `target` terminal events were seen in all, the worker died, or `timeout`."""
        end = time.monotonic() + timeout
        while self.reader.terminal < target and time.monotonic() < end and self.alive:
            await asyncio.sleep(0.05)
