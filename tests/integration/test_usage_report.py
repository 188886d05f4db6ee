"""Usage events recorded through UsageRecorder on the real Kafka, then `ferryman usage report`
over them: totals, cost from the packaged price table, the time window and the chart."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer  # pyright: ignore[reportMissingTypeStubs]
from prometheus_client import CollectorRegistry

from ferryman.cli import main as ferryman
from ferryman.codec import encode_binary
from ferryman.contracts.usage import USAGE_RECORDED, UsageEvent
from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics
from ferryman_runtime.pricing import PriceTable
from ferryman_runtime.usage import UsageRecorder

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)


def usage_events() -> list[UsageEvent]:
    """A small day of traffic: two tenants, three models, a tool-loop chat and MCP calls."""

    def event(n: int, **fields: Any) -> UsageEvent:
        base: dict[str, Any] = {
            "request_id": f"req-{n}",
            "service": "llm_worker",
            "tenant": "acme",
            "user": "alice",
            "operation": "chat",
            "target": "default",
            "model": "openai/gpt-4o-2024-08-06",
            "input_tokens": 1000,
            "output_tokens": 200,
            "latency_seconds": 0.5 + n / 10,
            "outcome": "completed",
            "finished_at": NOW - timedelta(minutes=n),
        }
        return UsageEvent(**(base | fields))

    return [
        *(event(n) for n in range(6)),
        event(6, user="bob", outcome="upstream_error", output_tokens=0),
        event(
            7,
            user="bob",
            operation="tool_loop",
            steps=3,
            tools=["search/web", "files/read"],
            input_tokens=5000,
            output_tokens=800,
        ),
        event(8, tenant="beta", user="carol", model="anthropic/claude-haiku-4-5-20251001"),
        event(9, tenant="beta", user="carol", model="anthropic/claude-haiku-4-5-20251001"),
        event(10, tenant="beta", user="dave", model="gemini/gemini-2.5-flash"),
        event(
            11,
            service="mcp_worker",
            tenant="beta",
            user="carol",
            operation="tool",
            target="search",
            model=None,
            tool="search/web",
            input_tokens=0,
            output_tokens=0,
        ),
        event(
            12,
            service="mcp_worker",
            tenant="beta",
            user="carol",
            operation="tool",
            target="search",
            model=None,
            tool="search/web",
            input_tokens=0,
            output_tokens=0,
            outcome="timeout",
        ),
    ]


async def publish_before_the_window(bootstrap: str, topic: str) -> None:
    """A usage event and a foreign record, both stamped three days ago (before `--since`)."""
    old = NOW - timedelta(days=3)
    stale = UsageEvent(
        request_id="old",
        service="llm_worker",
        tenant="acme",
        operation="chat",
        model="openai/gpt-4o",
        input_tokens=10**6,
        latency_seconds=1,
        outcome="completed",
        finished_at=old,
    )
    attributes = {"id": "old", "type": USAGE_RECORDED, "source": "/t", "time": old}
    headers, value = encode_binary(attributes, stale.model_dump_json().encode())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        stamp = int(old.timestamp() * 1000)
        for partition in range(2):
            await producer.send_and_wait(
                topic, value, partition=partition, headers=list(headers), timestamp_ms=stamp
            )
            await producer.send_and_wait(
                topic, b"not an event", partition=partition, timestamp_ms=stamp
            )
    finally:
        await producer.stop()


async def record(bootstrap: str, topic: str, events: list[UsageEvent]) -> CollectorRegistry:
    registry = CollectorRegistry()
    publisher = KafkaPublisher(bootstrap, client_id="usage-test")
    await publisher.start()
    recorder = UsageRecorder(
        lambda: publisher,
        topic=topic,
        source="/ferryman/test/r1",
        service="llm_worker",
        registry=registry,
        prices=PriceTable.load(),
    )
    try:
        await recorder.start()
        for event in events:
            recorder.record(event)
        await recorder.stop()
    finally:
        await publisher.stop()
    return registry


async def run(args: list[str]) -> int:
    return await asyncio.to_thread(ferryman, args)


async def test_the_report_totals_what_the_recorder_published(
    kafka_bootstrap: str, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"t-{unique}.usage"
    await ensure_topics(kafka_bootstrap, [topic], partitions=2, replication_factor=1)
    await publish_before_the_window(kafka_bootstrap, topic)
    events = usage_events()
    registry = await record(kafka_bootstrap, topic, events)
    assert registry.get_sample_value("ferryman_usage_events_total", {"outcome": "published"}) == 13
    base = ["usage", "report", "-b", kafka_bootstrap, "--topic", topic, "--since", "24h"]

    assert await run([*base, "--by", "tenant,model", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    chart = tmp_path / "trend.png"
    assert await run([*base, "--by", "tenant", "--chart", str(chart)]) == 0
    table = capsys.readouterr().out

    groups = {(g["tenant"], g["model"]): g for g in document["groups"]}
    prices = PriceTable.load()
    acme = groups["acme", "openai/gpt-4o-2024-08-06"]
    assert (acme["requests"], acme["errors"]) == (8, 1)
    assert (acme["input_tokens"], acme["output_tokens"]) == (7 * 1000 + 5000, 6 * 200 + 800)
    assert acme["cost_usd"] == pytest.approx(prices.cost("openai/gpt-4o", 12_000, 2_000), rel=1e-6)
    assert acme["top_users"] == [{"user": "alice", "requests": 6}, {"user": "bob", "requests": 2}]
    assert {t["tool"] for t in acme["top_tools"]} == {"search/web", "files/read"}
    haiku = groups["beta", "anthropic/claude-haiku-4-5-20251001"]
    assert haiku["cost_usd"] == pytest.approx(2 * (1000 * 1e-6 + 200 * 5e-6), rel=1e-6)
    mcp = groups["beta", "-"]
    assert (mcp["requests"], mcp["errors"], mcp["cost_usd"]) == (2, 1, 0)
    assert mcp["top_tools"] == [{"tool": "search/web", "calls": 2}]
    total = document["total"]
    assert (total["requests"], total["errors"]) == (13, 2)
    assert document["skipped"] == 0  # the records before the window were not read at all
    assert document["price_table_versions"] == [prices.version]
    assert table.splitlines()[1].split()[:3] == ["tenant", "requests", "errors"]
    assert next(line for line in table.splitlines() if line.startswith("total")).split()[1] == "13"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_report_reads_the_whole_topic_with_a_wide_window(
    kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"t-{unique}.usage"
    await ensure_topics(kafka_bootstrap, [topic], partitions=2, replication_factor=1)
    await publish_before_the_window(kafka_bootstrap, topic)

    base = ["usage", "report", "-b", kafka_bootstrap, "--topic", topic, "--since", "7d"]
    code = await run([*base, "--by", "service", "--format", "json"])

    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["total"]["requests"] == 2  # the stale usage event, on each partition
    assert document["total"]["input_tokens"] == 2 * 10**6
    assert document["skipped"] == 2  # the foreign records


async def test_a_missing_topic_is_reported_clearly(
    kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run(["usage", "report", "-b", kafka_bootstrap, "--topic", f"t-{unique}.none"])

    assert code == 1
    assert f"t-{unique}.none" in capsys.readouterr().err
