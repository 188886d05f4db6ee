"""Progress replies of long transfers: bounded in number, in order, the last one complete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from pydantic import BaseModel

from ferryman.contracts.storage import STORAGE_PROGRESS, StorageProgress
from ferryman_runtime.replies import ReplyStream
from storage_worker.progress import PROGRESS_BYTES, reported

MIB = 1024 * 1024


class Replies:
    """Records what a transfer emits (stands in for the job's `ReplyStream`)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, BaseModel]] = []

    async def emit(self, event_type: str, payload: BaseModel) -> None:
        self.events.append((event_type, payload))


class Clock:
    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def chunks(count: int, size: int = MIB) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * size


async def run(count: int, step: float) -> tuple[int, list[StorageProgress]]:
    replies = Replies()
    moved = 0
    body = reported(
        chunks(count),
        cast(ReplyStream, replies),
        stage="copy",
        total=count * MIB,
        clock=Clock(step),
    )
    async for chunk in body:
        moved += len(chunk)
    assert all(kind == STORAGE_PROGRESS for kind, _ in replies.events)
    return moved, [cast(StorageProgress, payload) for _, payload in replies.events]


async def test_progress_every_few_mebibytes_then_the_total() -> None:
    moved, progress = await run(count=20, step=1.0)

    assert moved == 20 * MIB
    assert [p.bytes_done for p in progress] == [
        4 * MIB,
        8 * MIB,
        12 * MIB,
        16 * MIB,
        20 * MIB,
        20 * MIB,
    ]
    assert [p.sequence for p in progress] == list(range(6))
    assert all(p.bytes_total == 20 * MIB and p.stage == "copy" for p in progress)


async def test_a_fast_transfer_is_reported_at_most_every_interval() -> None:
    _, progress = await run(count=20, step=1 / 32)  # 8 chunks (8 MiB) per 0.25 s

    steps: list[Any] = [p.bytes_done for p in progress]
    assert steps == [8 * MIB, 16 * MIB, 20 * MIB]


async def test_a_small_transfer_reports_nothing() -> None:
    _, progress = await run(count=PROGRESS_BYTES // MIB - 1, step=1.0)

    assert progress == []
