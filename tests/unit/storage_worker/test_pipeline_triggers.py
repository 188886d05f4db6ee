"""Pipelines asked for on upload: one durable `process` request per matching rule, with an id
derived from the object's version (a redelivered put asks for the same run), and none for
derived objects."""

from __future__ import annotations

from typing import Any, cast

from ferryman.codec import decode_event
from ferryman.contracts.storage import (
    STORAGE_PROCESS_REQUESTED,
    CopyCompleted,
    DeleteCompleted,
    Lineage,
    ObjectInfo,
    PutCompleted,
)
from ferryman.publisher import KafkaPublisher
from storage_worker.pipelines.triggers import TRIGGER_SOURCE, UploadTriggers
from storage_worker.policy import TenantRule


class Publisher:
    """Records what would go to Kafka (stands in for the worker's `KafkaPublisher`)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes, headers: Any) -> None:
        self.sent.append((topic, key, decode_event(headers, value)))


RULE = TenantRule.model_validate(
    {
        "spaces": {"local": "acme/"},
        "on_upload": [
            {"prefix": "inbox/", "pipeline": "documents"},
            {"prefix": "inbox/images/", "pipeline": "thumbnail"},
        ],
    }
)


def written(key: str, version: str = "v1", lineage: Lineage | None = None) -> ObjectInfo:
    return ObjectInfo(backend="local", key=key, size=3, version=version, lineage=lineage)


def triggers() -> tuple[UploadTriggers, Publisher]:
    publisher = Publisher()
    made = UploadTriggers(
        lambda: cast(KafkaPublisher, publisher), request_topic="requests", reply_topic="results"
    )
    return made, publisher


async def test_a_put_under_a_prefix_asks_for_its_pipelines() -> None:
    uploads, publisher = triggers()

    await uploads.written("acme", RULE, PutCompleted(object=written("inbox/images/a.png")))

    assert [(topic, event.data["pipeline"]) for topic, _, event in publisher.sent] == [
        ("requests", "documents"),
        ("requests", "thumbnail"),
    ]
    _, key, event = publisher.sent[0]
    assert event.type == STORAGE_PROCESS_REQUESTED
    assert event.source == TRIGGER_SOURCE
    assert key == event.id.encode()
    assert event.extension("tenant") == "acme"
    assert event.extension("replyto") == "results"
    assert event.data == {
        "key": "inbox/images/a.png",
        "backend": "local",
        "pipeline": "documents",
        "force": False,
    }
    assert uploads.requested == 2


async def test_the_same_version_asks_for_the_same_run_and_a_new_one_for_another() -> None:
    uploads, publisher = triggers()

    await uploads.written("acme", RULE, PutCompleted(object=written("inbox/a.pdf")))
    await uploads.written("acme", RULE, PutCompleted(object=written("inbox/a.pdf"), created=False))
    await uploads.written("acme", RULE, CopyCompleted(object=written("inbox/a.pdf", "v2")))
    await uploads.written("globex", RULE, PutCompleted(object=written("inbox/a.pdf")))

    ids = [event.id for _, _, event in publisher.sent]
    assert ids[0] == ids[1]
    assert len({ids[0], ids[2], ids[3]}) == 3


async def test_no_run_outside_the_prefixes_for_derived_objects_or_other_operations() -> None:
    uploads, publisher = triggers()
    derived = Lineage(source_key="inbox/a.pdf", pipeline="documents", step="extract_text")

    await uploads.written("acme", RULE, PutCompleted(object=written("outbox/a.pdf")))
    await uploads.written("acme", RULE, PutCompleted(object=written("inbox", "v1")))
    await uploads.written(
        "acme", RULE, CopyCompleted(object=written("inbox/a.pdf.derived/x.txt", lineage=derived))
    )
    await uploads.written(
        "acme", RULE, DeleteCompleted(backend="local", key="inbox/a.pdf", deleted=True)
    )
    await uploads.written(
        "acme",
        TenantRule.model_validate({"spaces": {"local": "acme/"}}),
        PutCompleted(object=written("inbox/a.pdf")),
    )

    assert publisher.sent == []


async def test_nothing_is_asked_before_the_worker_started() -> None:
    uploads = UploadTriggers(lambda: None, request_topic="requests", reply_topic="results")

    await uploads.written("acme", RULE, PutCompleted(object=written("inbox/a.pdf")))

    assert uploads.requested == 0
