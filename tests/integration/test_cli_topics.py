"""`ferryman tail`, `ferryman health` and `ferryman dlq` against the real Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from ferryman.cli import main as ferryman
from ferryman.codec import Headers, encode_binary
from ferryman.contracts import HEALTH_REPORTED, HealthReport, UpstreamHealth
from ferryman.contracts import events as ev
from ferryman.publisher import KafkaPublisher
from ferryman.topics import ensure_topics
from tests.integration.conftest import read_topic

pytestmark = pytest.mark.integration


async def publish(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes, Headers]]
) -> None:
    publisher = KafkaPublisher(bootstrap, client_id="test")
    await publisher.start()
    try:
        for key, value, headers in records:
            await publisher.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await publisher.stop()


def event(event_id: str, data: str, **extensions: str) -> tuple[bytes, bytes, Headers]:
    attributes = {
        "id": event_id,
        "type": "demo.happened",
        "source": "/t",
        "datacontenttype": "application/json",
        **extensions,
    }
    headers, value = encode_binary(attributes, data.encode())
    return b"same-key", value, headers


async def run(args: list[str]) -> int:
    return await asyncio.to_thread(ferryman, args)


async def test_tail_prints_old_events_then_follows_new_ones(
    kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"t-{unique}.tail"
    await ensure_topics(kafka_bootstrap, [topic], partitions=2, replication_factor=1)
    await publish(
        kafka_bootstrap,
        topic,
        [event(f"e-{i}", f'{{"n":{i}}}', correlationid="req-1", runid="r-1") for i in range(3)]
        + [(b"same-key", b"\xffnot json", [])],
    )
    base = ["tail", topic, "-b", kafka_bootstrap]

    assert await run([*base, "--from-beginning"]) == 0
    everything = capsys.readouterr().out.splitlines()
    assert await run([*base, "-n", "1"]) == 0
    last = capsys.readouterr().out.splitlines()
    following = asyncio.create_task(run([*base, "--from-beginning", "-f", "--max-events", "6"]))
    await publish(kafka_bootstrap, topic, [event("e-new", '{"n":9}'), event("e-new2", "{}")])
    assert await asyncio.wait_for(following, 30) == 0
    followed = capsys.readouterr().out.splitlines()

    assert len(everything) == 4
    assert 'demo.happened\tid=e-0\tcorr=req-1\trun=r-1\t{"n":0}' in everything[0]
    assert everything[3].endswith("(not a CloudEvent, 9 bytes)")
    assert last == everything[-1:]
    assert len(followed) == 6
    assert "id=e-new2" in followed[-1]


async def test_health_shows_the_latest_report_of_each_instance(
    kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"t-{unique}.health"
    await ensure_topics(kafka_bootstrap, [topic], partitions=1, replication_factor=1)

    def report(instance: str, second: int, status: str) -> tuple[bytes, bytes, Headers]:
        data = HealthReport(
            service="llm-worker",
            instance=instance,
            reported_at=datetime(2030, 1, 1, 0, 0, second, tzinfo=UTC),
            config_version="abcdef0123456789",
            upstreams=[
                UpstreamHealth(
                    name="main",
                    kind="llm",
                    labels={"provider": "openai", "model": "gpt"},
                    status=status,  # type: ignore[arg-type]
                    circuit="closed",
                    in_flight=0,
                    recent_calls=3,
                    error_rate=0.0,
                )
            ],
        )
        attributes = {
            "id": f"h-{instance}-{second}",
            "type": HEALTH_REPORTED,
            "source": "/w",
            "datacontenttype": "application/json",
        }
        headers, value = encode_binary(attributes, data.model_dump_json().encode())
        return instance.encode(), value, headers

    await publish(
        kafka_bootstrap,
        topic,
        [report("w-1", 1, "unhealthy"), report("w-2", 1, "degraded"), report("w-1", 2, "healthy")],
    )

    assert await run(["health", "--topic", topic, "-b", kafka_bootstrap]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert lines[0].split() == ["SERVICE", "INSTANCE", "REPORTED", "AT", "STATUS", "UPSTREAMS"]
    assert lines[1].split()[:4] == ["llm-worker", "w-1", "2030-01-01T00:00:02Z", "healthy"]
    assert lines[2].split()[:4] == ["llm-worker", "w-2", "2030-01-01T00:00:01Z", "degraded"]
    assert "config abcdef012345" in lines[1]
    assert len(lines) == 3


async def test_dlq_replay_needs_all_and_dry_run_publishes_nothing(
    kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    original, dlq = f"t-{unique}.requests", f"t-{unique}.requests.dlq"
    await ensure_topics(kafka_bootstrap, [original, dlq], partitions=1, replication_factor=1)
    letters = [
        (
            f"k{i}".encode(),
            f"bad {i}".encode(),
            [
                ("ce_id", f"id-{i}".encode()),
                (ev.DLQ_ORIGINAL_TOPIC, original.encode()),
                (ev.DLQ_ORIGINAL_PARTITION, b"0"),
                (ev.DLQ_ORIGINAL_OFFSET, str(i).encode()),
                (ev.DLQ_REASON, b"decode"),
            ],
        )
        for i in range(2)
    ]
    await publish(kafka_bootstrap, dlq, letters)
    base = ["dlq", "replay", dlq, "-b", kafka_bootstrap]

    assert await run(base) == 2
    refused = capsys.readouterr().err
    assert await run([*base, "--all", "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert await run([*base, "--offset", "1"]) == 0
    one = capsys.readouterr().out
    replayed = await read_topic(kafka_bootstrap, original, until=1, timeout=10)

    assert "--all" in refused
    assert dry == [f"would replay {dlq}/0/{i} -> {original}" for i in range(2)]
    assert one.strip() == f"replayed {dlq}/0/1 -> {original}"
    assert [(r.key, r.value) for r in replayed] == [(b"k1", b"bad 1")]
    assert dict(replayed[0].headers)[ev.DLQ_REPLAY_OF] == f"{dlq}/0/1".encode()
    assert ev.DLQ_REASON not in dict(replayed[0].headers)

    assert await run([*base, "--all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert len(await read_topic(kafka_bootstrap, original, until=3, timeout=10)) == 3
