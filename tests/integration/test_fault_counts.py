"""The fault matrix, counted: 200 chat requests in flight through the real worker process
while it is SIGKILLed, SIGTERMed, cut off from its broker, or rebalanced.

The upstream is the fake OpenAI server answering every call differently ("call N: Echo: …"),
so a rerun's answer differs from its first run's and a reader splicing two runs shows.

For each fault: every request completes exactly once at the client (lost = 0), nothing is
dead-lettered, and the raw reply topic shows duplicates only as reruns a consumer can
recognise: each execution has its own `ce_runid`, its event ids `<runid>.<n>` count 0, 1, 2…,
its completed content equals its chunks, and the client's answer is one run's completed
content.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferryman.client import FerrymanClient
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.integration.conftest import Topics, WorkerProcess, open_client, read_topic
from tests.integration.fault_load import (
    ChatLoad,
    all_completed,
    audit_replies,
    record_count,
    wait_until,
)
from tests.kafka_brokers import private_broker

pytestmark = pytest.mark.integration

REQUESTS = 200
REQUEST_TIMEOUT = 150.0
OUTAGE = 15.0
"""Seconds the private broker stays down (from the stop until the restart begins)."""
MAX_OUTAGE_LOG_LINES = 500
MODEL = "gpt-fault"

WorkerFactory = Callable[..., WorkerProcess]


def _readiness(worker: WorkerProcess) -> bool | None:
    """`ready` of the worker's `/health` (served with 503 while not ready); None when the
    worker does not answer."""
    url = f"http://127.0.0.1:{worker.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(json.loads(response.read())["ready"])
    except urllib.error.HTTPError as refused:
        return bool(json.loads(refused.read())["ready"]) if refused.code == 503 else None
    except OSError:
        return None


def _in_flight(worker: WorkerProcess) -> int:
    """Requests the worker is executing right now (its `/health`); 0 when it does not say."""
    consumer = (worker.health() or {}).get("consumer")
    return int(consumer["in_flight"]) if isinstance(consumer, dict) else 0


async def _mid_load(worker: WorkerProcess, upstream: FakeOpenAI, calls: int) -> int:
    """Wait until the upstream has been called `calls` times and `worker` is executing
    requests; return how many it is executing.

    Waits on the worker's side, not on completions at the client: a client reading its
    replies late (a slow reply consumer in CI) would otherwise see the 40th completion only
    after the worker had finished everything, and the fault would hit an idle worker.
    """
    executing = 0

    def busy() -> bool:
        nonlocal executing
        if len(upstream.chat_requests()) < calls:
            return False
        executing = _in_flight(worker)
        return executing > 0

    await wait_until(busy, 60, f"{calls} upstream calls with requests in flight")
    return executing


def _log_lines(worker: WorkerProcess) -> int:
    return len(worker.log_path.read_bytes().splitlines())


async def _all_published(bootstrap: str, topic: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (published := await record_count(bootstrap, topic)) < count:
        assert time.monotonic() < deadline, f"only {published}/{count} requests published"
        await asyncio.sleep(0.1)


@dataclass
class Counts:
    """What a fault left behind, as counted by `_verify`."""

    text: str
    rerun_requests: int
    """Requests with more than one execution on the reply topic."""


async def _verify(
    load: ChatLoad, bootstrap: str, topics: Topics, upstream: FakeOpenAI, fault: str
) -> Counts:
    """Check the counts of `load` after `fault`; return them (for the fault's own checks)."""
    await load.finish(REQUEST_TIMEOUT)
    counts = f"{fault}: {load.summary()} upstream_calls={len(upstream.chat_requests())}"
    views = load.views
    assert load.completed == REQUESTS, counts
    assert all(view.completions == 1 and view.error is None for view in views.values()), counts
    wrong = {
        rid: view.shown
        for rid, view in views.items()
        if view.completed is None
        or not view.completed.content.endswith(f": Echo: {load.texts[rid]}")
        or view.shown != view.completed.content
    }
    assert not wrong, (
        f"{counts}; {len(wrong)} wrong or not what was shown: {list(wrong.items())[:5]}"
    )

    records = await read_topic(
        bootstrap, topics.replies, until=all_completed(set(load.texts)), timeout=60
    )
    audit = audit_replies(records)
    dead_letters = await record_count(bootstrap, topics.dlq)
    counts = f"{counts} {audit.summary()} dead_letters={dead_letters}"
    assert set(audit.runs) == set(load.texts), counts
    assert not audit.problems, f"{counts}; {audit.problems[:10]}"
    not_a_run = [
        rid
        for rid, view in views.items()
        if view.completed is None or view.completed.content not in audit.completed_contents(rid)
    ]
    assert not not_a_run, f"{counts}; the client's answer is no run's: {not_a_run[:10]}"
    assert dead_letters == 0, counts
    return Counts(counts, audit.rerun_requests)


async def _started(factory: WorkerFactory, **env: str) -> WorkerProcess:
    worker = factory(**env)
    worker.start()
    await worker.wait_ready(60)
    return worker


def _slow(upstream: FakeOpenAI, in_flight: int, token_delay: float) -> dict[str, str]:
    """Worker settings that keep the load going across the fault: streams of 13 tokens,
    `token_delay` seconds apart, at most `in_flight` of them at once per worker."""
    upstream.scenarios[MODEL] = Scenario(token_delay=token_delay, numbered=True)
    return {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "sk-fault-counts",
        "LLM_WORKER_MAX_IN_FLIGHT": str(in_flight),
        "LLM_WORKER_GRACE_PERIOD": "30",
    }


def _load(client: FerrymanClient) -> ChatLoad:
    return ChatLoad(client, REQUESTS, model=f"openai/{MODEL}", timeout=REQUEST_TIMEOUT)


async def test_sigkill_mid_load_then_a_restart_loses_nothing_and_reruns_are_recognisable(
    worker_factory: WorkerFactory,
    client: FerrymanClient,
    kafka_bootstrap: str,
    topics: Topics,
    fake_openai: FakeOpenAI,
) -> None:
    env = _slow(fake_openai, in_flight=50, token_delay=0.06)
    first = await _started(worker_factory, **env)
    load = _load(client)
    load.start()
    await _mid_load(first, fake_openai, calls=60)

    first.kill()
    assert not load.finished, load.summary()
    await _started(worker_factory, **env)
    counts = await _verify(load, kafka_bootstrap, topics, fake_openai, "SIGKILL")

    # Streams cut by the kill ran again: the test saw the duplicates it is about.
    assert counts.rerun_requests > 0, counts.text


async def test_sigterm_drains_then_a_new_worker_finishes_without_any_rerun(
    worker_factory: WorkerFactory,
    client: FerrymanClient,
    kafka_bootstrap: str,
    topics: Topics,
    fake_openai: FakeOpenAI,
) -> None:
    env = _slow(fake_openai, in_flight=50, token_delay=0.06)
    first = await _started(worker_factory, **env)
    load = _load(client)
    load.start()
    draining = await _mid_load(first, fake_openai, calls=60)
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(45) == 0
    assert not load.finished, load.summary()
    await _started(worker_factory, **env)
    counts = await _verify(
        load, kafka_bootstrap, topics, fake_openai, f"SIGTERM ({draining} in flight)"
    )

    # A drain finishes and commits what it started: nothing runs twice.
    assert draining > 0, counts.text
    assert counts.rerun_requests == 0, counts.text


async def test_a_broker_outage_mid_load_is_reported_logged_sparingly_and_loses_nothing(
    worker_factory: WorkerFactory, topics: Topics, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    with private_broker(tmp_path) as broker:
        bootstrap = await broker.start()
        async with open_client(bootstrap, topics, partitions=3) as client:
            env = {
                **_slow(fake_openai, in_flight=40, token_delay=0.1),
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            }
            worker = await _started(worker_factory, **env)
            load = _load(client)
            load.start()
            await _all_published(bootstrap, topics.requests, REQUESTS, 30)
            in_flight = await _mid_load(worker, fake_openai, calls=60)

            lines_before = _log_lines(worker)
            await broker.stop()
            down_at, completed_before = time.monotonic(), load.completed
            assert not load.finished, load.summary()
            await wait_until(lambda: _readiness(worker) is False, OUTAGE, "/health: not ready")
            await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))  # the outage
            assert _readiness(worker) is False
            await broker.start()
            outage = time.monotonic() - down_at
            await wait_until(lambda: _readiness(worker) is True, 90, "/health: ready again")
            outage_lines = _log_lines(worker) - lines_before
            fault = (
                f"outage of {outage:.0f}s ({completed_before} completed before it, "
                f"{in_flight} in flight, {outage_lines} log lines)"
            )

            counts = await _verify(load, bootstrap, topics, fake_openai, fault)
            assert worker.process is not None
            assert worker.process.poll() is None, "the worker exited during the outage"
    assert in_flight > 0, counts.text
    assert outage_lines < MAX_OUTAGE_LOG_LINES, (
        f"{counts.text}; {outage_lines} log lines during the outage:\n"
        + worker.log_path.read_text()[-3000:]
    )


async def test_replicas_joining_and_leaving_mid_load_lose_nothing(
    worker_factory: WorkerFactory,
    client: FerrymanClient,
    kafka_bootstrap: str,
    topics: Topics,
    fake_openai: FakeOpenAI,
) -> None:
    env = _slow(fake_openai, in_flight=8, token_delay=0.08)
    first = await _started(worker_factory, **env)
    load = _load(client)
    load.start()
    await load.wait_completed(20, 60)

    second, third = worker_factory(**env), worker_factory(**env)
    second.start()
    third.start()
    await asyncio.gather(second.wait_ready(60), third.wait_ready(60))
    assert not load.finished, load.summary()
    await load.wait_completed(min(load.completed + 20, REQUESTS - 40), 60)
    leaving = _in_flight(second)
    second.signal(signal.SIGTERM)
    assert not load.finished, load.summary()
    assert await second.wait_exit(45) == 0
    fault = f"2 replicas joining, then one leaving with {leaving} in flight"
    counts = await _verify(load, kafka_bootstrap, topics, fake_openai, fault)

    def partitions(worker: WorkerProcess) -> set[str]:
        status = worker.health() or {}
        consumer = status.get("consumer")
        return set(consumer["assigned"]) if isinstance(consumer, dict) else set()

    everything = {f"{topics.requests}:{p}" for p in range(3)}
    await wait_until(
        lambda: (
            partitions(first) | partitions(third) == everything
            and not partitions(first) & partitions(third)
        ),
        30,
        f"the two remaining replicas to share the partitions ({counts.text})",
    )
