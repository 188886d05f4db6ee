"""The worker kit end to end: the documented echo worker (docs/examples) on the real Kafka."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from ferryman.codec import encode_binary, header_value
from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics
from ferryman_runtime.worker import Worker
from tests.integration.conftest import read_topic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _example() -> ModuleType:
    path = ROOT / "docs" / "examples" / "echo_worker.py"
    spec = importlib.util.spec_from_file_location("echo_worker_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["echo_worker_example"] = module
    spec.loader.exec_module(module)
    return module


echo = _example()


@pytest.fixture
async def running(kafka_bootstrap: str, unique: str) -> AsyncIterator[tuple[Worker[Any], Any]]:
    settings = echo.EchoSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        request_topic=f"t-{unique}.echo.requests",
        default_reply_topic=f"t-{unique}.echo.results",
        group_id=f"g-{unique}",
        topic_partitions=2,
        instance_id=unique,
    )
    worker = Worker(
        settings,
        name="echo_worker",
        spec=echo.ECHO,
        service=echo.EchoService(),
        registry=echo.CollectorRegistry(),
    )
    await worker.start()
    publisher = KafkaPublisher(kafka_bootstrap, client_id="test")
    await publisher.start()
    try:
        yield worker, publisher
    finally:
        await publisher.stop()
        await worker.stop()


async def _send(publisher: KafkaPublisher, topic: str, request_id: str, data: Any, **ext: str):
    attributes = {
        "id": request_id,
        "type": "example.echo.requested",
        "source": "/test",
        "datacontenttype": "application/json",
        **ext,
    }
    headers, value = encode_binary(attributes, json.dumps(data).encode())
    await publisher.send_and_wait(topic, value, key=request_id.encode(), headers=headers)


async def test_the_documented_worker_streams_chunks_then_completed_with_one_run_id(
    running: tuple[Worker[Any], Any], kafka_bootstrap: str
) -> None:
    worker, publisher = running
    s = worker.settings

    await _send(publisher, s.request_topic, "e1", {"text": "one two three"}, replytoken="tok")

    records = await read_topic(kafka_bootstrap, s.default_reply_topic, until=4)
    types = [header_value(r.headers, "ce_type") for r in records]
    assert types == ["example.echo.chunk"] * 3 + ["example.echo.completed"]
    assert json.loads(records[-1].value) == {"text": "one two three", "words": 3}
    runs = {header_value(r.headers, "ce_runid") for r in records}
    assert len(runs) == 1
    assert {header_value(r.headers, "ce_correlationid") for r in records} == {"e1"}
    assert {header_value(r.headers, "ce_replytoken") for r in records} == {"tok"}
    assert worker.health()["ready"] is True


async def test_a_reply_topic_that_does_not_exist_is_dead_lettered_and_never_created(
    running: tuple[Worker[Any], Any], kafka_bootstrap: str, unique: str
) -> None:
    worker, publisher = running
    s = worker.settings
    missing = f"t-{unique}.nobody.results"

    await _send(publisher, s.request_topic, "e2", {"text": "x"}, replyto=missing)
    await _send(publisher, s.request_topic, "e3", {"text": "after"})

    [letter] = await read_topic(kafka_bootstrap, s.dlq_topic, until=1)
    assert header_value(letter.headers, "ce_id") == "e2"
    assert "does not exist" in (header_value(letter.headers, "dlq-error-message") or "")
    replies = await read_topic(kafka_bootstrap, s.default_reply_topic, until=2)
    assert json.loads(replies[-1].value) == {"text": "after", "words": 1}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert missing not in await admin.list_topics()
    finally:
        await admin.close()


async def test_invalid_data_gets_a_failed_reply_naming_the_field(
    running: tuple[Worker[Any], Any], kafka_bootstrap: str, unique: str
) -> None:
    worker, publisher = running
    s = worker.settings
    other = f"t-{unique}.other.results"
    await ensure_topics(kafka_bootstrap, [other], partitions=1, replication_factor=1)

    await _send(publisher, s.request_topic, "e4", {"txt": "typo"}, replyto=other)

    [failed] = await read_topic(kafka_bootstrap, other, until=1)
    assert header_value(failed.headers, "ce_type") == "example.echo.failed"
    error = json.loads(failed.value)["error"]
    assert error["code"] == "invalid_request"
    assert "invalid echo request" in error["message"]
    assert "txt" in error["message"]
