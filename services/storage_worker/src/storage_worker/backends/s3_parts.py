"""Parts in memory for S3 transfers: a body cut into parts, a part handed to the HTTP client
as a stream (no copy), and a bound on how many part transfers run at once."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Coroutine
from typing import Any

from storage_worker.backends.port import Body


class PartReader:
    """Cuts a body into parts of `part_size` bytes, holding at most one part and one chunk."""

    def __init__(self, body: Body, part_size: int) -> None:
        self._body = body
        self._part_size = part_size
        self._pending: memoryview | None = None
        self._ended = False
        self._held: bytearray | None = None

    @property
    def part_size(self) -> int:
        return self._part_size

    async def read_if_single(self) -> bytearray | None:
        """The whole body when it fits one part; else None, the first part kept for `read`."""
        part = await self.read()
        if not await self._fill():
            return part
        self._held = part
        return None

    async def read(self) -> bytearray:
        """The next part (shorter only at the end; empty once the body is exhausted)."""
        if self._held is not None:
            part, self._held = self._held, None
            return part
        part = bytearray(self._part_size)
        filled = 0
        while filled < self._part_size and await self._fill():
            assert self._pending is not None
            take = min(len(self._pending), self._part_size - filled)
            part[filled : filled + take] = self._pending[:take]
            filled += take
            self._pending = self._pending[take:] if take < len(self._pending) else None
        del part[filled:]
        return part

    async def _fill(self) -> bool:
        while self._pending is None and not self._ended:
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                self._ended = True
            else:
                if chunk:
                    self._pending = memoryview(chunk)
        return self._pending is not None


class PartBody(io.RawIOBase):
    """A part's bytes as a seekable stream, without copying them: the HTTP client reads it
    in small chunks (given the bytes whole, it joins them with the headers into a copy)."""

    def __init__(self, data: bytearray) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._position = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Drop the bytes (the HTTP client's objects may outlive the request until the next
        garbage collection; the part must not)."""
        self._view.release()
        self._view = memoryview(b"")
        super().close()

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        self._position = max(0, base[whence] + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        size = max(0, min(len(buffer), len(self._view) - self._position))
        buffer[:size] = self._view[self._position : self._position + size]
        self._position += size
        return size


class InFlight:
    """At most `limit` part transfers running; the first failure cancels the others."""

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> InFlight:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc is None:
                while self._tasks:
                    await self._reap(asyncio.FIRST_EXCEPTION)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()

    def start(self, transfer: Coroutine[Any, Any, None]) -> None:
        self._tasks.add(asyncio.create_task(transfer))

    async def wait_for_slot(self) -> None:
        """Return once fewer than `limit` transfers run (raising the first failure)."""
        while len(self._tasks) >= self._limit:
            await self._reap(asyncio.FIRST_COMPLETED)

    async def _reap(self, when: str) -> None:
        done, pending = await asyncio.wait(self._tasks, return_when=when)
        self._tasks = pending
        for task in done:
            task.result()
