"""What every provider fake shares: lifecycle on 127.0.0.1, scenario control, recording.

A fake subclasses `FakeHttpServer`, sets `scenario_type`, and implements `_dispatch`
(which appends to `self.requests`). `run_standalone` runs one as a process, for the
benchmark and for manual experiments.

Every fake also counts the TCP connections it accepted (`connections`), and can answer
every request, before its own routes, with a redirect (`redirect_to`) or with an error
whose body echoes the request's headers, credentials included (`echo_headers_status`),
as a careless proxy would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar

from aiohttp import web
from aiohttp.typedefs import Handler


class FakeHttpServer:
    """An aiohttp server with `POST /_scenarios`, `GET /_requests` and a catch-all route.

    Args:
        default: the scenario for models without their own.
    """

    scenario_type: ClassVar[type[Any]]

    def __init__(self, default: Any = None) -> None:
        self.default = default if default is not None else self.scenario_type()
        self.scenarios: dict[str, Any] = {}
        self.requests: list[Any] = []
        self.port = 0
        self.peers: set[tuple[str, int]] = set()
        self.redirect_to: str | None = None
        """When set, every request is answered `307` to this base URL plus the request path."""
        self.echo_headers_status: int | None = None
        """When set, every request is answered with this status and its headers in the body."""
        self._runner: web.AppRunner | None = None
        app = web.Application(middlewares=[self._front])
        app.router.add_post("/_scenarios", self._set_scenarios)
        app.router.add_get("/_requests", self._get_requests)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._app = app

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (`port` 0 picks a free one)."""
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=2048)
        await site.start()
        server = site._server  # aiohttp has no public accessor for the bound port
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def connections(self) -> int:
        """TCP connections that carried at least one request so far."""
        return len(self.peers)

    @web.middleware
    async def _front(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            self.peers.add((str(peer[0]), int(peer[1])))
        if self.redirect_to is not None:
            raise web.HTTPTemporaryRedirect(self.redirect_to.rstrip("/") + request.path_qs)
        if self.echo_headers_status is not None:
            echoed = json.dumps(dict(request.headers))
            error = {
                "message": f"upstream proxy refused the request; it received {echoed}",
                "type": "invalid_request_error",
                "status": "INVALID_ARGUMENT",
                "code": self.echo_headers_status,
            }
            return web.json_response({"error": error}, status=self.echo_headers_status)
        return await handler(request)

    def scenario_for(self, model: str) -> Any:
        """The scenario registered for `model`, else the default."""
        return self.scenarios.get(model, self.default)

    async def _set_scenarios(self, request: web.Request) -> web.Response:
        payload = await request.json()
        for model, spec in payload.items():
            if model == "*":
                self.default = self.scenario_type(**spec)
            else:
                self.scenarios[model] = self.scenario_type(**spec)
        return web.json_response({"ok": True})

    async def _get_requests(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.requests])

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


def run_standalone(
    make: Callable[[Any], FakeHttpServer], scenario_type: type[Any], doc: str
) -> None:
    """Run a fake as a process; prints the bound port on stdout.

    `make(default_scenario)` builds the fake; the options set the default scenario.
    """
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()

    async def serve() -> None:
        default = scenario_type(
            tokens=args.tokens,
            first_token_delay=args.first_token_delay,
            token_delay=args.token_delay,
        )
        fake = make(default)
        await fake.start(args.port)
        print(fake.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())
