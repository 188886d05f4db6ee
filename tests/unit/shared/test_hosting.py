"""The host: a service that fails for good is drained and the process exits non-zero."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from prometheus_client import CollectorRegistry

from ferryman_runtime.hosting import create_host_app, serve


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _DyingService:
    """Starts, then its consumer 'dies'; records that it was stopped (drained)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.die = asyncio.Event()
        self.stopped = False

    async def start(self) -> None:
        self.started.set()

    async def stop(self) -> None:
        self.stopped = True

    def health(self) -> dict[str, Any]:
        return {"ready": not self.die.is_set()}

    async def wait_failed(self) -> BaseException | None:
        await self.die.wait()
        return RuntimeError("fetch loop died")


async def test_a_failed_service_is_stopped_and_serve_returns_exit_code_1() -> None:
    service = _DyingService()
    app = create_host_app(
        service, bootstrap_servers="127.0.0.1:1", registry=CollectorRegistry(), service_name="t"
    )
    serving = asyncio.create_task(serve(app, host="127.0.0.1", port=_free_port()))
    await asyncio.wait_for(service.started.wait(), 10)

    service.die.set()
    code = await asyncio.wait_for(serving, 10)

    assert code == 1
    assert service.stopped is True
