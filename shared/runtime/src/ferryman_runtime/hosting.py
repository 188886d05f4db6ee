"""Hosts a worker inside a FastStream ASGI app: lifecycle, `/metrics` and `/health`.

FastStream owns the process lifecycle (startup and shutdown hooks, run under
uvicorn, which turns SIGTERM into an orderly shutdown). The worker's Kafka I/O is
the `ParallelConsumer` and `KafkaPublisher`; the FastStream broker required by
the app is created `consumer_only` with no subscribers, so it opens no
connections of its own.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, Protocol

import uvicorn
from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry, make_asgi_app  # pyright: ignore[reportUnknownVariableType]

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
    extra_routes: dict[str, JsonEndpoint] | None = None,
) -> AsgiFastStream:
    """Build the FastStream app that runs `service` and serves `/metrics`, `/health` and
    `extra_routes` (path → JSON endpoint)."""
    broker = KafkaBroker(bootstrap_servers, consumer_only=True, logger=None)

    async def health() -> tuple[int, dict[str, Any]]:
        status = service.health()
        return (200 if status.get("ready") else 503), status

    routes: list[tuple[str, Any]] = [("/metrics", make_asgi_app(registry))]  # pyright: ignore[reportUnknownArgumentType]
    routes.append(("/health", json_route(health)))
    routes.extend((path, json_route(endpoint)) for path, endpoint in (extra_routes or {}).items())
    return AsgiFastStream(
        broker,
        asgi_routes=routes,
        on_startup=[service.start],
        on_shutdown=[service.stop],
        logger=None,
    )


class _DrainingServer(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises SIGTERM after shutdown (exit 143); a drained worker exits 0.
            self._captured_signals.remove(sig)  # pyright: ignore[reportPrivateUsage]


async def serve(app: AsgiFastStream, *, host: str, port: int) -> None:
    """Run `app` under uvicorn until SIGTERM or SIGINT, then shut it down in order.

    After SIGTERM the process exits 0 once in-flight work is drained.
    """
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", access_log=False
    )
    await _DrainingServer(config).serve()
