"""Progress of a long transfer as `ferryman.storage.progress` replies: at most one per
`PROGRESS_BYTES` moved and `PROGRESS_INTERVAL` seconds, so a fast copy cannot flood the
reply topic, and the last one always says everything was moved."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from ferryman.contracts.storage import STORAGE_PROGRESS, StorageProgress
from ferryman_runtime.replies import ReplyStream

PROGRESS_BYTES = 4 * 1024 * 1024
PROGRESS_INTERVAL = 0.25


async def reported(
    body: AsyncIterator[bytes],
    replies: ReplyStream,
    *,
    stage: str,
    total: int | None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[bytes]:
    """`body` as it is, with progress replies about it on the way.

    Raises:
        aiokafka.errors.KafkaError: a progress reply was not accepted.
    """
    done = 0
    sequence = 0
    reported_at = done
    last = clock()
    async for chunk in body:
        yield chunk
        done += len(chunk)
        now = clock()
        if done - reported_at >= PROGRESS_BYTES and now - last >= PROGRESS_INTERVAL:
            await replies.emit(
                STORAGE_PROGRESS,
                StorageProgress(stage=stage, bytes_done=done, bytes_total=total, sequence=sequence),
            )
            sequence += 1
            reported_at, last = done, now
    if sequence:
        await replies.emit(
            STORAGE_PROGRESS,
            StorageProgress(stage=stage, bytes_done=done, bytes_total=total, sequence=sequence),
        )
