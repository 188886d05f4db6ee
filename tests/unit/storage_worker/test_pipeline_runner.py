"""Pipelines run on objects of the local backend: derived objects with lineage, facts,
progress by step, reuse of current outputs (and `force`), and failing steps named with the
source untouched and no output of theirs."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import BaseModel

from ferryman.codec import IncomingEvent
from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import (
    STORAGE_FAILED,
    STORAGE_PROCESS_COMPLETED,
    STORAGE_PROGRESS,
    Lineage,
    ObjectInfo,
    ProcessCompleted,
    ProcessRequest,
    PutRequest,
    StorageFailed,
    StorageProgress,
)
from ferryman_runtime.job import Job
from ferryman_runtime.replies import ReplyStream
from storage_worker.backends.port import ObjectStore
from storage_worker.events import ObjectEvents
from storage_worker.pipelines.runner import PipelineRunner, StepFailed
from storage_worker.policy import Policy, parse_policy
from storage_worker.service import StorageService
from storage_worker.stores import Stores
from tests.storage.documents import image_bytes, pdf_with_text

PIPELINES = {
    "documents": {
        "version": "1",
        "steps": [
            {"step": "checksum"},
            {"step": "detect"},
            {"step": "thumbnail", "size": 32, "format": "png"},
            {"step": "extract_text"},
            {"step": "metadata"},
        ],
    }
}


class Replies:
    """Records a job's replies (stands in for its `ReplyStream`)."""

    def __init__(self) -> None:
        self.progress: list[StorageProgress] = []
        self.terminal: list[tuple[str, BaseModel]] = []

    async def emit(self, event_type: str, payload: BaseModel) -> None:
        assert event_type == STORAGE_PROGRESS
        self.progress.append(cast(StorageProgress, payload))

    async def finish(self, event_type: str, payload: BaseModel) -> None:
        self.terminal.append((event_type, payload))

    async def fail(self, error: Any) -> None:
        self.terminal.append((STORAGE_FAILED, StorageFailed(error=error)))


class Events:
    """Records object events (stands in for `ObjectEvents`)."""

    def __init__(self) -> None:
        self.made: list[tuple[str, ObjectInfo, str]] = []

    async def created(self, tenant: str, info: ObjectInfo, cause: str, request: str) -> None:
        self.made.append((tenant, info, cause))


class Setup:
    def __init__(self, tmp_path: Path, pipelines: dict[str, Any]) -> None:
        self._root = tmp_path / "root"
        self.policy = self.policy_of(pipelines)
        self.stores = Stores()
        self.stores.configure(self.policy)
        self.recorded = Events()
        events = cast(ObjectEvents, self.recorded)
        self.runner = PipelineRunner(stores=self.stores, policy=lambda: self.policy, events=events)
        self.service = StorageService(
            stores=self.stores, policy=lambda: self.policy, events=events, inline_limit=65536
        )

    def policy_of(self, pipelines: dict[str, Any]) -> Policy:
        return parse_policy(
            json.dumps(
                {
                    "backends": {"local": {"type": "local", "root": str(self._root)}},
                    "tenants": {"*": {"spaces": {"local": "{tenant}/"}}},
                    "pipelines": pipelines,
                }
            ).encode()
        )

    async def store(self) -> ObjectStore:
        return await self.stores.get("local")

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> ObjectInfo:
        async def body() -> AsyncIterator[bytes]:
            yield data

        stored = await (await self.store()).put(
            f"acme/{key}",
            body(),
            content_type=content_type,
            metadata={},
            tags={},
            sha256=hashlib.sha256(data).hexdigest(),
        )
        return ObjectInfo(backend="local", key=key, size=stored.size, version=stored.version)

    async def read(self, key: str) -> bytes:
        _, body = await (await self.store()).get(f"acme/{key}")
        return b"".join([chunk async for chunk in body])

    async def exists(self, key: str) -> bool:
        try:
            await (await self.store()).head(f"acme/{key}")
        except FerrymanError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return False
            raise
        return True


def job_of(request: BaseModel, replies: Replies, request_id: str | None = None) -> Job[Any]:
    event = IncomingEvent(
        attributes={"id": request_id or uuid.uuid4().hex, "source": "/test", "type": "t"},
        data=None,
        mode="binary",
    )
    return Job(
        request=request,
        event=event,
        replies=cast(ReplyStream, replies),
        deadline=None,
        tenant="acme",
        tenant_share=1.0,
    )


async def process(
    setup: Setup, request_id: str | None = None, **fields: Any
) -> tuple[ProcessCompleted, Replies]:
    replies = Replies()
    request = ProcessRequest.model_validate(fields)
    kind, completed = await setup.runner.process(request, job_of(request, replies, request_id))
    assert kind == STORAGE_PROCESS_COMPLETED
    return cast(ProcessCompleted, completed), replies


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    made = Setup(tmp_path, PIPELINES)
    yield made
    await made.stores.close()


async def test_the_text_pipeline_stores_the_text_with_lineage(setup: Setup) -> None:
    pdf = pdf_with_text(["Hello Ferryman"], title="Q3")
    source = await setup.put("docs/q3.pdf", pdf, "application/pdf")

    completed, replies = await process(setup, key="docs/q3.pdf", pipeline="text")

    [text] = completed.outputs
    assert text.key == "docs/q3.pdf.derived/text/extract_text.txt"
    assert text.content_type == "text/plain; charset=utf-8"
    assert text.lineage == Lineage(
        source_key="docs/q3.pdf",
        source_version=source.version,
        pipeline="text",
        step="extract_text",
        pipeline_version="1",
    )
    assert text.metadata == {}  # the lineage's own metadata stays out of sight
    assert await setup.read(text.key) == b"Hello Ferryman"
    assert completed.facts == {
        "detect.content_type": "application/pdf",
        "extract_text.pages": "1",
        "extract_text.characters": "14",
    }
    assert completed.source.key == "docs/q3.pdf"
    assert completed.source.lineage is None
    assert completed.reused is False
    assert [(p.stage, p.bytes_done, p.sequence) for p in replies.progress] == [
        ("detect", 0, 0),
        ("detect", len(pdf), 1),
        ("extract_text", 0, 2),
        ("extract_text", len(pdf), 3),
    ]
    assert [(t, i.key, c) for t, i, c in setup.recorded.made] == [("acme", text.key, "process")]
    assert await setup.read("docs/q3.pdf") == pdf


async def test_a_pipeline_of_every_step_on_an_image(setup: Setup) -> None:
    png = image_bytes(64, 32, "PNG")
    await setup.put("photos/cat.png", png)

    with pytest.raises(StepFailed) as refused:
        await process(setup, key="photos/cat.png", pipeline="documents")

    # extract_text does not read images: the run fails there, after the thumbnail.
    failed = refused.value
    assert failed.step == "extract_text"
    assert failed.code == ErrorCode.INVALID_REQUEST
    assert "image/png" in failed.message
    assert await setup.exists("photos/cat.png.derived/documents/thumbnail.png")
    assert not await setup.exists("photos/cat.png.derived/documents/extract_text.txt")
    assert await setup.read("photos/cat.png") == png


async def test_facts_of_checksum_and_metadata(tmp_path: Path) -> None:
    setup = Setup(
        tmp_path,
        {"facts": {"steps": [{"step": "checksum"}, {"step": "metadata"}, {"step": "detect"}]}},
    )
    png = image_bytes(64, 32, "PNG")
    await setup.put("cat.png", png)

    completed, _ = await process(setup, key="cat.png", pipeline="facts")

    assert completed.outputs == []
    assert completed.reused is False
    assert completed.facts["checksum.sha256"] == hashlib.sha256(png).hexdigest()
    assert len(completed.facts["checksum.crc32c"]) == 8
    assert {k: v for k, v in completed.facts.items() if k.startswith("metadata.")} == {
        "metadata.width": "64",
        "metadata.height": "32",
        "metadata.format": "png",
    }
    await setup.stores.close()


async def test_a_second_run_reuses_current_outputs_unless_forced(setup: Setup) -> None:
    await setup.put("a.md", b"# Title\n\nBody *text*.\n", "text/markdown")
    first, _ = await process(setup, key="a.md", pipeline="text")

    again, replies = await process(setup, key="a.md", pipeline="text")
    forced, _ = await process(setup, key="a.md", pipeline="text", force=True)

    assert again.reused is True
    assert again.outputs == first.outputs
    assert again.facts == first.facts
    assert [p.stage for p in replies.progress] == ["detect"] * 2 + ["extract_text"] * 2
    assert forced.reused is False
    assert forced.outputs[0].version != first.outputs[0].version
    assert len(setup.recorded.made) == 2  # the first run's and the forced run's


async def test_a_redelivered_request_publishes_its_outputs_events_again(setup: Setup) -> None:
    await setup.put("a.txt", b"words\n")
    first, _ = await process(setup, request_id="run-1", key="a.txt", pipeline="text")

    redelivered, _ = await process(setup, request_id="run-1", key="a.txt", pipeline="text")

    # Its first run may have stopped before the event went out: at least once, same version.
    assert redelivered.reused is True
    assert [i.version for _, i, _ in setup.recorded.made] == [first.outputs[0].version] * 2


async def test_a_new_source_version_or_pipeline_version_runs_again(setup: Setup) -> None:
    await setup.put("a.txt", b"first words\n")
    first, _ = await process(setup, key="a.txt", pipeline="text")
    replaced = await setup.put("a.txt", b"second words\n")

    rerun, _ = await process(setup, key="a.txt", pipeline="text")
    setup.policy = setup.policy_of(
        {"text": {"version": "2", "steps": [{"step": "detect"}, {"step": "extract_text"}]}}
    )
    bumped, _ = await process(setup, key="a.txt", pipeline="text")

    assert rerun.reused is False
    assert rerun.outputs[0].lineage is not None
    assert rerun.outputs[0].lineage.source_version == replaced.version
    assert await setup.read(rerun.outputs[0].key) == b"second words\n"
    assert bumped.reused is False
    assert bumped.outputs[0].lineage is not None
    assert bumped.outputs[0].lineage.pipeline_version == "2"
    assert first.outputs[0].key == rerun.outputs[0].key == bumped.outputs[0].key


async def test_unknown_pipelines_and_missing_objects_are_refused(setup: Setup) -> None:
    await setup.put("a.txt", b"words\n")

    with pytest.raises(FerrymanError) as unknown:
        await process(setup, key="a.txt", pipeline="nope")
    with pytest.raises(FerrymanError) as missing:
        await process(setup, key="missing.txt", pipeline="text")

    assert unknown.value.code == ErrorCode.INVALID_REQUEST
    assert "documents, text, thumbnail" in unknown.value.message
    assert missing.value.code == ErrorCode.NOT_FOUND
    assert not isinstance(missing.value, StepFailed)


async def test_the_service_names_the_failing_step_in_its_failed_reply(setup: Setup) -> None:
    await setup.put("cat.png", image_bytes(8, 8, "PNG"))
    request = ProcessRequest(key="cat.png", pipeline="text")
    replies = Replies()

    await setup.service.execute(job_of(request, replies))

    [(kind, payload)] = replies.terminal
    assert kind == STORAGE_FAILED
    failed = cast(StorageFailed, payload)
    assert failed.step == "extract_text"
    assert failed.error.code == ErrorCode.INVALID_REQUEST
    assert not await setup.exists("cat.png.derived/text/extract_text.txt")


async def test_the_service_answers_a_process_request(setup: Setup) -> None:
    await setup.put("note.txt", b"a short note\n")
    replies = Replies()

    await setup.service.execute(job_of(ProcessRequest(key="note.txt", pipeline="text"), replies))

    [(kind, payload)] = replies.terminal
    assert kind == STORAGE_PROCESS_COMPLETED
    assert [o.key for o in cast(ProcessCompleted, payload).outputs] == [
        "note.txt.derived/text/extract_text.txt"
    ]


async def test_user_metadata_cannot_pass_for_lineage(setup: Setup) -> None:
    forged = PutRequest(
        key="forged.txt",
        content_base64="aGVsbG8=",
        metadata={"Ferryman-Lineage-Step": "extract_text"},
    )
    replies = Replies()

    await setup.service.execute(job_of(forged, replies))

    [(kind, payload)] = replies.terminal
    assert kind == STORAGE_FAILED
    assert cast(StorageFailed, payload).error.code == ErrorCode.INVALID_REQUEST
    assert not await setup.exists("forged.txt")
