"""Serves an ASGI app on a real HTTP server (uvicorn) for a test, on a port of its own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import uvicorn
from faststream.asgi.types import ASGIApp, Receive, Scope, Send


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The test runner keeps its own signal handlers.
        yield


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 at a free port (connections queue until the
    server accepts them, so nobody waits for the server to start)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def base_url(sock: socket.socket) -> str:
    """The address of `sock` as an HTTP base URL."""
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


class Finished:
    """Wraps an app to tell when each request's handling ended (even after the client
    left): a test waits on that rather than on the clock."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.done: asyncio.Queue[str] = asyncio.Queue()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._app(scope, receive, send)
        finally:
            self.done.put_nowait(str(scope.get("method", "")))


@asynccontextmanager
async def serving(
    app: ASGIApp, sock: socket.socket | None = None, *, lifespan: bool = False
) -> AsyncIterator[str]:
    """Serve `app` on `sock` (default: a fresh one); yield its base URL. With `lifespan`,
    the app's startup runs before the first connection is accepted, and its shutdown after
    the last."""
    sock = sock or listening_socket()
    config = uvicorn.Config(
        app, lifespan="on" if lifespan else "off", log_level="warning", access_log=False
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield base_url(sock)
    finally:
        server.should_exit = True
        await task
        sock.close()
