"""Processing pipelines end to end through the real Kafka, on the local backend: runs on
request (derived objects with lineage, facts, progress by step, reuse and `force`), a
failing step named with the source untouched, and runs on upload under a prefix (durable,
once per object version, never on their own outputs)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from ferryman.client import wait_for_partitions
from ferryman.codec import decode_event, header_value
from ferryman.contracts.storage import ObjectInfo
from storage_worker.pipelines.triggers import run_id
from tests.integration.conftest import read_topic
from tests.integration.storage_harness import Reply, StorageHarness, running_storage_worker
from tests.storage.documents import decoded_image, image_bytes, pdf_with_text

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PIPELINES = {
    "documents": {
        "version": "1",
        "steps": [
            {"step": "checksum"},
            {"step": "detect"},
            {"step": "extract_text"},
            {"step": "metadata"},
        ],
    },
    "images": {
        "version": "1",
        "steps": [
            {"step": "detect"},
            {"step": "thumbnail", "size": 64, "format": "webp"},
            {"step": "convert", "format": "png"},
            {"step": "metadata"},
        ],
    },
}


def policy(tmp_path: Path) -> dict[str, Any]:
    return {
        "backends": {"local": {"type": "local", "root": str(tmp_path / "storage")}},
        "tenants": {
            "acme": {
                "spaces": {"local": "acme/"},
                "on_upload": [{"prefix": "inbox/", "pipeline": "documents"}],
            }
        },
        "pipelines": PIPELINES,
    }


async def every_reply(harness: StorageHarness, request_id: str, *, runs: int = 1) -> list[Reply]:
    """Every reply to `request_id` (progress included) up to its `runs`-th terminal one."""

    def mine(record: Any) -> bool:
        return header_value(record.headers, "ce_correlationid") == request_id

    def terminal(record: Any) -> bool:
        kind = header_value(record.headers, "ce_type") or ""
        return mine(record) and (kind.endswith(".completed") or kind.endswith(".failed"))

    records = await read_topic(
        harness.bootstrap,
        harness.settings.default_reply_topic,
        until=lambda records: sum(1 for r in records if terminal(r)) >= runs,
        timeout=90,
    )
    events = [decode_event(list(r.headers), r.value) for r in records if mine(r)]
    return [Reply(type=event.type, data=event.data) for event in events]


async def process(harness: StorageHarness, **data: Any) -> tuple[Reply, list[dict[str, Any]]]:
    """A process request's terminal reply and its progress replies."""
    replies = await every_reply(harness, await harness.send("process", data))
    progress = [r.data for r in replies if r.type == "ferryman.storage.progress"]
    return replies[-1], progress


async def records_on(bootstrap: str, topic: str) -> int:
    """How many records `topic` holds (its end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = await wait_for_partitions(consumer, topic, 30)
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def content(harness: StorageHarness, key: str) -> bytes:
    got = await harness.call("get", {"key": key, "delivery": "inline"})
    assert got.type == "ferryman.storage.get.completed", got.data
    return base64.b64decode(got.data["content_base64"])


@pytest.fixture
async def harness(kafka_bootstrap: str, unique: str, tmp_path: Path) -> Any:
    async with running_storage_worker(
        kafka_bootstrap, unique, tmp_path, policy=policy(tmp_path)
    ) as running:
        yield running


async def test_a_pdf_through_a_pipeline_on_request(harness: StorageHarness) -> None:
    pdf = pdf_with_text(["Quarterly figures", "Outlook for Q4"], title="Q3 report")
    put = await harness.put("reports/q3.pdf", pdf)
    source = put.data["object"]

    done, progress = await process(harness, key="reports/q3.pdf", pipeline="documents")

    assert done.type == "ferryman.storage.process.completed", done.data
    [text] = done.data["outputs"]
    assert text["key"] == "reports/q3.pdf.derived/documents/extract_text.txt"
    assert text["content_type"] == "text/plain; charset=utf-8"
    assert text["lineage"] == {
        "source_key": "reports/q3.pdf",
        "source_version": source["version"],
        "pipeline": "documents",
        "step": "extract_text",
        "pipeline_version": "1",
    }
    assert text["metadata"] == {}
    assert done.data["facts"] == {
        "checksum.sha256": hashlib.sha256(pdf).hexdigest(),
        "checksum.crc32c": google_crc32c.Checksum(pdf).digest().hex(),
        "detect.content_type": "application/pdf",
        "extract_text.pages": "2",
        "extract_text.characters": str(len("Quarterly figures\n\nOutlook for Q4")),
        "metadata.pages": "2",
        "metadata.title": "Q3 report",
    }
    assert done.data["reused"] is False
    assert done.data["source"]["version"] == source["version"]
    assert [(p["stage"], p["bytes_done"]) for p in progress] == [
        (stage, done_bytes)
        for stage in ("checksum", "detect", "extract_text", "metadata")
        for done_bytes in (0, len(pdf))
    ]
    assert [p["sequence"] for p in progress] == list(range(8))
    assert await content(harness, text["key"]) == b"Quarterly figures\n\nOutlook for Q4"
    head = await harness.call("head", {"key": text["key"]})
    assert head.data["object"]["lineage"] == text["lineage"]

    again, _ = await process(harness, key="reports/q3.pdf", pipeline="documents")
    forced, _ = await process(harness, key="reports/q3.pdf", pipeline="documents", force=True)

    assert again.data["reused"] is True
    assert again.data["outputs"][0]["version"] == text["version"]
    assert again.data["facts"] == done.data["facts"]
    assert forced.data["reused"] is False
    assert forced.data["outputs"][0]["version"] != text["version"]
    events = await harness.events(until=3)
    # Keyed by object: in order per object (the topic's partitions interleave objects).
    assert sorted((e.data["object"]["key"], e.data["cause"]) for e in events) == [
        ("reports/q3.pdf", "put"),
        (text["key"], "process"),
        (text["key"], "process"),
    ]
    derived = [e.data["object"] for e in events if e.data["cause"] == "process"]
    assert [o["version"] for o in derived] == [
        text["version"],
        forced.data["outputs"][0]["version"],
    ]
    assert all(o["lineage"] == text["lineage"] for o in derived)


async def test_thumbnails_and_conversions_of_a_real_image(harness: StorageHarness) -> None:
    jpeg = image_bytes(640, 480, "JPEG", color="navy")
    await harness.put("photos/boat.jpg", jpeg)

    done, _ = await process(harness, key="photos/boat.jpg", pipeline="images")
    builtin, _ = await process(harness, key="photos/boat.jpg", pipeline="thumbnail")

    assert done.type == "ferryman.storage.process.completed", done.data
    outputs = {o["lineage"]["step"]: o for o in done.data["outputs"]}
    assert outputs["thumbnail"]["key"] == "photos/boat.jpg.derived/images/thumbnail.webp"
    assert outputs["convert"]["key"] == "photos/boat.jpg.derived/images/convert.png"
    thumbnail = decoded_image(await content(harness, outputs["thumbnail"]["key"]))
    converted = decoded_image(await content(harness, outputs["convert"]["key"]))
    assert (thumbnail.format, thumbnail.size) == ("WEBP", (64, 48))
    assert (converted.format, converted.size) == ("PNG", (640, 480))
    assert done.data["facts"]["metadata.width"] == "640"
    assert done.data["facts"]["metadata.format"] == "jpeg"
    [builtin_thumbnail] = builtin.data["outputs"]
    assert builtin_thumbnail["key"] == "photos/boat.jpg.derived/thumbnail/thumbnail.webp"
    assert decoded_image(await content(harness, builtin_thumbnail["key"])).size == (256, 192)


async def test_a_failing_step_is_named_and_the_source_is_untouched(
    harness: StorageHarness,
) -> None:
    png = image_bytes(32, 32, "PNG")
    put = await harness.put("photos/cat.png", png)

    failed, progress = await process(harness, key="photos/cat.png", pipeline="text")
    unknown, _ = await process(harness, key="photos/cat.png", pipeline="no-such-pipeline")

    assert failed.type == "ferryman.storage.failed"
    assert failed.data["step"] == "extract_text"
    assert failed.data["error"]["code"] == "invalid_request"
    assert "image/png" in failed.data["error"]["message"]
    assert [p["stage"] for p in progress] == ["detect", "detect", "extract_text"]
    head = await harness.call("head", {"key": "photos/cat.png"})
    assert head.data["object"]["version"] == put.data["object"]["version"]
    assert await content(harness, "photos/cat.png") == png
    listed = await harness.call("list", {"prefix": "photos/"})
    assert [o["key"] for o in listed.data["objects"]] == ["photos/cat.png"]
    assert unknown.data["error"]["code"] == "invalid_request"
    assert "step" not in unknown.data


async def test_an_upload_under_a_prefix_runs_its_pipeline_once_per_version(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    pdf = pdf_with_text(["Invoice 42"])
    data = {"key": "inbox/invoice.pdf", "content_base64": base64.b64encode(pdf).decode()}
    async with running_storage_worker(
        kafka_bootstrap, unique, tmp_path, policy=policy(tmp_path)
    ) as first:
        put = await first.result(await first.send("put", data, request_id="put-1"))
        written = ObjectInfo.model_validate(put.data["object"])
        run = run_id("acme", written, "documents")
        [ran] = [r for r in await every_reply(first, run) if r.type.endswith(".completed")]
        outside = await first.put("outbox/invoice.pdf", pdf)
    # The put again, to a replica that does not remember it (as after a crash): the same
    # run is asked for, and answered with the outputs of the first.
    async with running_storage_worker(
        kafka_bootstrap, unique, tmp_path, policy=policy(tmp_path)
    ) as second:
        await second.send("put", data, request_id="put-1")
        replies = await every_reply(second, run, runs=2)

    assert ran.data["pipeline"] == "documents"
    assert ran.data["source"]["key"] == "inbox/invoice.pdf"
    [text] = ran.data["outputs"]
    assert text["key"] == "inbox/invoice.pdf.derived/documents/extract_text.txt"
    assert text["lineage"]["source_version"] == written.version
    rerun = [r for r in replies if r.type.endswith(".completed")][-1]
    assert rerun.data["reused"] is True
    assert rerun.data["outputs"] == ran.data["outputs"]
    assert outside.type == "ferryman.storage.put.completed"
    # Each write's event again with its redelivery (at least once, the same versions).
    events = await second.events(until=5)
    created = sorted((e.data["object"]["key"], e.data["cause"]) for e in events)
    assert created == [
        ("inbox/invoice.pdf", "put"),
        ("inbox/invoice.pdf", "put"),
        (text["key"], "process"),
        (text["key"], "process"),
        ("outbox/invoice.pdf", "put"),
    ]
    assert {e.data["object"]["version"] for e in events if e.data["cause"] == "process"} == {
        text["version"]
    }
    # Every request was acknowledged before the reply it led to: the topic holds them all,
    # the put twice, its run twice (one id), and the put outside the prefix. The derived
    # text is under inbox/ too, and asked for no run of its own.
    request_topic = second.settings.request_topic
    assert await records_on(kafka_bootstrap, request_topic) == 5
    requests = await read_topic(kafka_bootstrap, request_topic, until=5)
    kinds = [header_value(r.headers, "ce_type") for r in requests]
    assert kinds.count("ferryman.storage.process.requested") == 2
    assert {
        header_value(r.headers, "ce_id")
        for r in requests
        if header_value(r.headers, "ce_type") == "ferryman.storage.process.requested"
    } == {run}
