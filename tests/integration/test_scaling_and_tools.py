"""Backpressure at the in-flight limit, a rebalance under load, and the `ferryman dlq` commands."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from ferryman.cli import main as ferryman
from ferryman.client import FerrymanClient
from ferryman.contracts import events as ev
from tests.integration.conftest import Topics, read_topic

pytestmark = pytest.mark.integration


def _request(text: str) -> dict[str, object]:
    return {"model": "mock/echo", "messages": [{"role": "user", "content": text}]}


async def test_the_worker_pauses_at_its_in_flight_limit_and_still_finishes_everything(
    worker_factory, client: FerrymanClient
) -> None:
    worker = worker_factory(LLM_WORKER_MAX_IN_FLIGHT="2", LLM_WORKER_MOCK_TOKEN_DELAY_MS="100")
    worker.start()
    await worker.wait_ready()
    observed: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            status = await asyncio.to_thread(worker.health)
            if status:
                observed.append(status["consumer"])
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(
        *(client.chat(_request(f"limit {i} one two three"), timeout=60) for i in range(6))
    )
    done.set()
    await watcher

    assert [r.content for r in results] == [f"You said: limit {i} one two three" for i in range(6)]
    assert max(s["in_flight"] for s in observed) == 2
    assert any(s["paused"] for s in observed)
    assert observed[-1]["peak_in_flight"] == 2


async def test_a_second_replica_joining_mid_load_loses_no_request(
    worker_factory, client: FerrymanClient
) -> None:
    first = worker_factory(LLM_WORKER_MOCK_TOKEN_DELAY_MS="50")
    first.start()
    await first.wait_ready()
    tasks = [
        asyncio.create_task(client.chat(_request(f"rebalance {i} a b c d e f"), timeout=90))
        for i in range(20)
    ]
    second = worker_factory(LLM_WORKER_MOCK_TOKEN_DELAY_MS="50")
    second.start()
    await second.wait_ready()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 90)

    assert [r.content for r in results] == [
        f"You said: rebalance {i} a b c d e f" for i in range(20)
    ]
    first_parts = set(first.health()["consumer"]["assigned"])  # type: ignore[index]
    second_parts = set(second.health()["consumer"]["assigned"])  # type: ignore[index]
    assert first_parts
    assert second_parts
    assert not first_parts & second_parts


async def test_dlq_list_show_and_replay_republish_the_original_record(
    worker_factory, kafka_bootstrap: str, topics: Topics, client: FerrymanClient, capsys
) -> None:
    worker = worker_factory()
    worker.start()
    await worker.wait_ready()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.requests, b"garbage", key=b"bad", headers=[("ce_id", b"g-1")], partition=1
        )
    finally:
        await producer.stop()
    [parked] = await read_topic(kafka_bootstrap, topics.dlq, until=1)
    args = ["--bootstrap-servers", kafka_bootstrap, "dlq"]

    assert await asyncio.to_thread(ferryman, [*args, "list", topics.dlq]) == 0
    listing = capsys.readouterr().out
    assert await asyncio.to_thread(ferryman, [*args, "show", topics.dlq, "--offset", "0"]) == 0
    shown = capsys.readouterr().out
    assert await asyncio.to_thread(ferryman, [*args, "replay", topics.dlq, "--all"]) == 0
    replayed = capsys.readouterr().out

    assert "decode" in listing
    assert "ce_id=g-1" in listing
    assert '"value": "garbage"' in shown
    assert f"-> {topics.requests}" in replayed
    # The replayed record is dead-lettered again (it is still garbage), carrying its history.
    letters = await read_topic(kafka_bootstrap, topics.dlq, until=2, timeout=30)
    again = next(r for r in letters if ev.DLQ_REPLAY_OF in dict(r.headers))
    assert again.value == b"garbage"
    location = f"{topics.dlq}/{parked.partition}/{parked.offset}"
    assert dict(again.headers)[ev.DLQ_REPLAY_OF] == location.encode()
    assert dict(again.headers)["ce_id"] == b"g-1"
