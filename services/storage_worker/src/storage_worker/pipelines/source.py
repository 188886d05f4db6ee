"""The source of a run, spooled once to a local file (bounded memory, off the event loop),
its SHA-256 and CRC32C computed on the way, with progress for a large one."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import google_crc32c

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.storage import STORAGE_PROGRESS, StorageProgress
from ferryman_runtime.replies import ReplyStream
from storage_worker.backends.port import ObjectStore, StoredObject
from storage_worker.pipelines.steps import Source
from storage_worker.progress import PROGRESS_BYTES, PROGRESS_INTERVAL

READ_STAGE = "read"
"""The progress stage of reading the source (before the first step)."""
_CHUNK = 1024 * 1024


class RunProgress:
    """A run's progress replies, numbered in order across its stages.

    Args:
        replies: the job's reply stream.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, replies: ReplyStream, clock: Callable[[], float] = time.monotonic) -> None:
        self._replies = replies
        self._clock = clock
        self._sequence = 0

    async def report(self, stage: str, done: int, total: int | None) -> None:
        """One progress reply.

        Raises:
            aiokafka.errors.KafkaError: the reply was not accepted.
        """
        await self._replies.emit(
            STORAGE_PROGRESS,
            StorageProgress(
                stage=stage, bytes_done=done, bytes_total=total, sequence=self._sequence
            ),
        )
        self._sequence += 1

    async def reading(self, body: AsyncIterator[bytes], total: int) -> AsyncIterator[bytes]:
        """`body`, with a `read` progress reply at most every few MiB and fraction of a
        second (none for a small source)."""
        done = reported_at = 0
        last = self._clock()
        async for chunk in body:
            yield chunk
            done += len(chunk)
            now = self._clock()
            if done - reported_at >= PROGRESS_BYTES and now - last >= PROGRESS_INTERVAL:
                await self.report(READ_STAGE, done, total)
                reported_at, last = done, now


async def spooled(
    store: ObjectStore, full_key: str, key: str, folder: Path, progress: RunProgress
) -> tuple[StoredObject, Source]:
    """The object at `full_key`, read into `folder/source`.

    Raises:
        FerrymanError: `not_found` and the backend's other errors; `precondition_failed`
            (retryable) when the bytes read are not those the object's checksum names.
    """
    stored, body = await store.get(full_key)
    path = folder / "source"
    sha256 = hashlib.sha256()
    crc32c = google_crc32c.Checksum()
    file = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in progress.reading(body, stored.size):
            await asyncio.to_thread(_write, file, chunk, sha256, crc32c)
    finally:
        await asyncio.to_thread(file.close)
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
    digest = sha256.hexdigest()
    if stored.sha256 is not None and stored.sha256 != digest:
        raise FerrymanError(
            ErrorCode.PRECONDITION_FAILED,
            f"the bytes of {key[:100]!r} read do not match its SHA-256 (was it replaced while"
            " read?)",
            retryable=True,
        )
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    source = Source(
        path=path,
        size=size,
        key=key,
        content_type=stored.content_type,
        sha256=digest,
        crc32c=bytes(crc32c.digest()).hex(),
    )
    return stored, source


async def file_body(path: Path) -> AsyncIterator[bytes]:
    """The bytes of a local file, in chunks read off the event loop."""
    file = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(file.read, _CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(file.close)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a local file (blocking: run it in a thread)."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _write(file: IO[bytes], chunk: bytes, sha256: Any, crc32c: google_crc32c.Checksum) -> None:
    file.write(chunk)
    sha256.update(chunk)
    crc32c.update(chunk)
