"""Fixtures running the LLM worker as a separate process against the real Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from ferryman.client import FerrymanClient, wait_for_partitions
from ferryman.topics import ensure_topics
from tests.fakes.openai_server import FakeOpenAI

pytestmark = pytest.mark.integration


def free_port() -> int:
    """Return a TCP port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Topics:
    """The per-test topics and group."""

    requests: str
    replies: str
    dlq: str
    group: str


@dataclass
class WorkerProcess:
    """`python -m llm_worker` in a subprocess, with its environment."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (HTTP port fixed per worker)."""
        env = {**os.environ, **self.env, "LLM_WORKER_HTTP_PORT": str(self.port)}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llm_worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def health(self) -> dict[str, Any] | None:
        """The `/health` document, or None if not reachable or not ready."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                return json.loads(r.read())
        except Exception:
            return None

    def metrics(self) -> str:
        """The `/metrics` text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the worker has partitions assigned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            status = await asyncio.to_thread(self.health)
            if status and status.get("ready"):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"worker not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}"
        )

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the worker."""
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit; return its code."""
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, timeout)

    def kill(self) -> None:
        """SIGKILL, if still running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def usage_topic(topics: Topics) -> str:
    """The usage topic of this test's workers."""
    return topics.requests.removesuffix(".llm.requests") + ".usage"


@pytest.fixture
def topics(unique: str) -> Topics:
    """Fresh topics and group for one test."""
    return Topics(
        requests=f"t-{unique}.llm.requests",
        replies=f"t-{unique}.llm.results",
        dlq=f"t-{unique}.llm.requests.dlq",
        group=f"g-{unique}",
    )


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """The fake OpenAI server, on this test's event loop."""
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def worker_factory(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[object]:
    """Build worker processes bound to this test's topics; all are killed at teardown."""
    workers: list[WorkerProcess] = []

    def make(**extra_env: str) -> WorkerProcess:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "LLM_WORKER_REQUEST_TOPIC": topics.requests,
            "LLM_WORKER_DEFAULT_REPLY_TOPIC": topics.replies,
            "LLM_WORKER_GROUP_ID": topics.group,
            "LLM_WORKER_USAGE_TOPIC": usage_topic(topics),
            "LLM_WORKER_TOPIC_PARTITIONS": "3",
            "LLM_WORKER_GRACE_PERIOD": "20",
            "LLM_WORKER_LOG_LEVEL": "INFO",
            **extra_env,
        }
        worker = WorkerProcess(env=env, log_path=tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.kill()


@contextlib.asynccontextmanager
async def open_client(
    bootstrap: str, topics: Topics, *, partitions: int
) -> AsyncIterator[FerrymanClient]:
    """Create the test's request, DLQ and reply topics, then a client of them."""
    await ensure_topics(
        bootstrap,
        [topics.requests, topics.dlq, topics.replies],
        partitions=partitions,
        replication_factor=1,
    )
    async with FerrymanClient(
        bootstrap, request_topic=topics.requests, reply_topic=topics.replies
    ) as c:
        yield c


@pytest.fixture
async def client(kafka_bootstrap: str, topics: Topics) -> AsyncIterator[FerrymanClient]:
    """A client publishing to this test's request topic and reading its reply topic."""
    async with open_client(kafka_bootstrap, topics, partitions=3) as c:
        yield c


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: int | Callable[[list[Any]], bool],
    timeout: float = 30.0,
) -> list[Any]:
    """Read `topic` from the beginning until `until` records arrived, or `until(records)` holds.

    Fails when that does not happen within `timeout` seconds.
    """
    done = until if callable(until) else (lambda records: len(records) >= until)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        partitions = await wait_for_partitions(consumer, topic, timeout)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        records: list[Any] = []
        while not done(records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {len(records)} records on {topic}; wanted {until}")
            batch = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()
