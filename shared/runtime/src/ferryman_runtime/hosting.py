"""Hosts a worker inside a FastStream ASGI app: lifecycle, `/metrics` and `/health`.

FastStream owns the process lifecycle (startup and shutdown hooks, run under
uvicorn, which turns SIGTERM into an orderly shutdown). The worker's Kafka I/O is
the `ParallelConsumer` and `KafkaPublisher`; the FastStream broker required by
the app is created `consumer_only` with no subscribers, so it opens no
connections of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, Protocol

import uvicorn
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker
from prometheus_client import (  # pyright: ignore[reportUnknownVariableType]
    CollectorRegistry,
    disable_created_metrics,
    make_asgi_app,  # pyright: ignore[reportUnknownVariableType]
)

from ferryman_runtime.service_label import service_registry

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HostedService(Protocol):
    """What a worker exposes to its host."""

    async def start(self) -> None:
        """Connect and start consuming."""
        ...

    async def stop(self) -> None:
        """Drain in-flight work within the grace period and disconnect."""
        ...

    def health(self) -> dict[str, Any]:
        """A JSON-able status; `ready` says whether it is consuming."""
        ...

    async def wait_failed(self) -> BaseException | None:
        """Return (only) when the service failed for good and the process must exit."""
        ...


class _FailureWatch:
    """Turns a service's fatal failure into an orderly shutdown and a non-zero exit."""

    def __init__(self) -> None:
        self.failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    def watch(self, service: HostedService) -> None:
        self.failure = None
        self._task = asyncio.create_task(self._run(service), name="ferryman-failure-watch")

    async def _run(self, service: HostedService) -> None:
        failure = await service.wait_failed()
        self.failure = failure or RuntimeError("the service failed")
        logger.critical("service failed, shutting down to be restarted: %r", self.failure)
        # uvicorn's own SIGTERM path drains the service, then `serve` reports the failure.
        signal.raise_signal(signal.SIGTERM)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


_WATCH = _FailureWatch()


JsonEndpoint = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]
"""An async callable returning (HTTP status, JSON-able body)."""


async def _send_json(send: Send, status: int, document: dict[str, Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(document).encode()})


def json_route(endpoint: JsonEndpoint) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Wrap `endpoint` as an ASGI app answering GET with its JSON."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status, document = await endpoint()
        await _send_json(send, status, document)

    return app


def create_host_app(
    service: HostedService,
    *,
    bootstrap_servers: str,
    registry: CollectorRegistry,
    service_name: str,
    extra_routes: dict[str, JsonEndpoint] | None = None,
) -> AsgiFastStream:
    """Build the FastStream app that runs `service` and serves `/metrics`, `/health` and
    `extra_routes` (path → JSON endpoint).

    `/metrics` serves `registry` with `service=<service_name>` on every sample, and no
    `_created` series (they would double every counter's series).

    Raises:
        ValueError: `service_name` is empty.
    """
    disable_created_metrics()
    served = service_registry(registry, service_name)
    broker = KafkaBroker(bootstrap_servers, consumer_only=True, logger=None)

    async def health() -> tuple[int, dict[str, Any]]:
        status = service.health()
        return (200 if status.get("ready") else 503), status

    routes: list[tuple[str, Any]] = [("/metrics", make_asgi_app(served))]  # pyright: ignore[reportUnknownArgumentType]
    routes.append(("/health", json_route(health)))
    routes.extend((path, json_route(endpoint)) for path, endpoint in (extra_routes or {}).items())

    async def start() -> None:
        await service.start()
        _WATCH.watch(service)

    async def stop() -> None:
        _WATCH.cancel()
        await service.stop()

    return AsgiFastStream(
        broker,
        asgi_routes=routes,
        on_startup=[start],
        on_shutdown=[stop],
        logger=None,
    )


class _DrainingServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises SIGTERM after shutdown (exit 143); a drained worker exits 0.
            self._captured_signals.remove(sig)  # pyright: ignore[reportPrivateUsage]


async def serve(app: AsgiFastStream, *, host: str, port: int) -> int:
    """Run `app` under uvicorn until SIGTERM or SIGINT, then shut it down in order.

    Returns:
        the process exit code: 0 after SIGTERM once in-flight work is drained, 1 when the
        service failed for good (its consumer died) and shut itself down.
    """
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", access_log=False
    )
    await _DrainingServer(config).serve()
    return 0 if _WATCH.failure is None else 1
