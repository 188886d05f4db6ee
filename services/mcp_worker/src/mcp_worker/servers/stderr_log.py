"""A stdio server's stderr: every line goes to the worker's log under the server's name
(redacted, bounded), and the last lines are kept so a crash says why, not just "exited"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import IO, Any

from ferryman_runtime.redaction import redact

logger = logging.getLogger("mcp_worker.server_stderr")

_MAX_LINE = 1000


class StderrTail:
    """Collects one server process's stderr.

    Args:
        server: the server's name (the log lines' prefix).
        secrets: the server's resolved credentials, never logged or kept.
        keep: how many of the last lines are kept.
    """

    def __init__(self, server: str, secrets: Sequence[str] = (), keep: int = 20) -> None:
        self.server = server
        self._secrets = tuple(secrets)
        self._lines: deque[str] = deque(maxlen=keep)
        self._task: asyncio.Task[None] | None = None

    def last(self) -> list[str]:
        """The last lines the server wrote."""
        return list(self._lines)

    @asynccontextmanager
    async def around(self, open_transport: Any) -> AsyncIterator[Any]:
        """Run `open_transport(errlog)` (a transport context manager factory taking the
        file the process's stderr goes to) while this tail reads that file."""
        read_fd, write_fd = os.pipe()
        errlog: IO[str] = os.fdopen(write_fd, "w")
        reader = os.fdopen(read_fd, "rb", buffering=0)
        transport: AbstractAsyncContextManager[Any] = open_transport(errlog)
        try:
            try:
                streams = await transport.__aenter__()
            finally:
                errlog.close()  # the child holds its own copy: EOF comes when it exits
            self._task = asyncio.create_task(self._read(reader), name=f"stderr-{self.server}")
            try:
                yield streams
            except BaseException as exc:
                if not await transport.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                await transport.__aexit__(None, None, None)
        finally:
            if self._task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._task), 2.0)
                self._task.cancel()
            with contextlib.suppress(OSError):  # the pipe transport closed it
                reader.close()

    async def _read(self, reader: IO[bytes]) -> None:
        loop = asyncio.get_running_loop()
        stream = asyncio.StreamReader(limit=64 * 1024)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), reader
        )
        try:
            while True:
                try:
                    raw = await stream.readline()
                except ValueError:  # a line past the limit: keep what fits
                    raw = await stream.read(64 * 1024)
                if not raw:
                    return
                text = raw.decode("utf-8", "replace").rstrip()
                line = redact(text, self._secrets)[:_MAX_LINE]
                if line:
                    self._lines.append(line)
                    logger.info("[%s] %s", self.server, line)
        finally:
            transport.close()
