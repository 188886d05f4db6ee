"""Object bytes moved through the worker: counted per backend (metrics) and per request (its
usage event), as the bytes stream, so an aborted transfer counts what actually moved."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from storage_worker.backends.port import Body, close_body


@dataclass
class RequestBytes:
    """Object bytes one request read and wrote, through every backend it used."""

    read: int = 0
    written: int = 0

    @property
    def total(self) -> int:
        return self.read + self.written


_current: ContextVar[RequestBytes | None] = ContextVar("storage_request_bytes", default=None)


@contextmanager
def tallied() -> Iterator[RequestBytes]:
    """Count the bytes the code run inside moves (in this task and the tasks it starts)."""
    tally = RequestBytes()
    token = _current.set(tally)
    try:
        yield tally
    finally:
        _current.reset(token)


def add_read(size: int) -> None:
    """Add bytes read to the current request's tally (none outside a request)."""
    tally = _current.get()
    if tally is not None:
        tally.read += size


def add_written(size: int) -> None:
    """Add bytes written to the current request's tally (none outside a request)."""
    tally = _current.get()
    if tally is not None:
        tally.written += size


class CountedBody:
    """`body`, calling `on_chunk` with the size of every chunk read from it; closing it
    closes `body` (read to its end or not)."""

    def __init__(self, body: Body, on_chunk: Callable[[int], None]) -> None:
        self._body = body
        self._on_chunk = on_chunk

    def __aiter__(self) -> CountedBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._body.__anext__()
        self._on_chunk(len(chunk))
        return chunk

    async def aclose(self) -> None:
        await close_body(self._body)
