"""How the worker reaches one server: stdio (optionally sandboxed), streamable HTTP or SSE,
with its credentials resolved from references at connect time (never stored resolved)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx2
from mcp import StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from mcp_worker.references import is_reference, resolve
from mcp_worker.registry import ServerConfig
from mcp_worker.servers.session import Connector, TransportFactory
from mcp_worker.servers.stderr_log import StderrTail


@dataclass(frozen=True)
class StdioLaunch:
    """The command line and environment a stdio server is started with."""

    command: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict[str, str])
    cwd: str | None = None


LaunchWrapper = Callable[[StdioLaunch], StdioLaunch]
"""Turns a launch into its sandboxed form (or refuses: raises)."""

_STREAM_HEADROOM = 8
"""HTTP connections beyond `max_concurrency`: the session's long-lived streams (the GET
stream, `subscriptions/listen`) and listings and probes, which take no call slot."""


def stdio_launch(
    config: ServerConfig,
    environ: Mapping[str, str],
    command: str | None = None,
) -> StdioLaunch:
    """The launch of a stdio server, with its environment's references resolved.

    Args:
        config: the server's registry entry.
        environ: where `env:` references are looked up (the worker's environment).
        command: the provisioned executable, for a server given by package.

    Raises:
        RegistryError: a credential reference cannot be resolved.
        ValueError: no command to run.
    """
    executable = command or config.command
    if executable is None:
        raise ValueError("a stdio server needs a command or a provisioned package")
    env = {name: resolve(value, environ).get_secret_value() for name, value in config.env.items()}
    return StdioLaunch(command=executable, args=list(config.args), env=env, cwd=config.cwd)


def open_stdio(server: str, launch: StdioLaunch, secrets: tuple[str, ...] = ()) -> Connector:
    """A connector that starts the process on each open (the SDK terminates the whole process
    tree on close) and collects its stderr into the worker's log."""
    tail = StderrTail(server, secrets)

    def factory():
        params = StdioServerParameters(
            command=launch.command, args=launch.args, env=launch.env or None, cwd=launch.cwd
        )
        return tail.around(lambda errlog: stdio_client(params, errlog=errlog))  # pyright: ignore[reportUnknownLambdaType]

    return Connector(open=factory, stderr=tail, secrets=secrets)


def open_http(config: ServerConfig, environ: Mapping[str, str]) -> TransportFactory:
    """A transport factory for a streamable HTTP or SSE server.

    Raises:
        RegistryError: a header's credential reference cannot be resolved (checked now, so a
            missing secret shows as the server's health at once).
    """
    url = config.url
    if url is None:
        raise ValueError("an HTTP server needs a url")
    # Resolved here to fail early; resolved again per connection so a rotated secret file
    # is picked up on reconnect.
    _resolved_headers(config, environ)

    def factory():
        headers = _resolved_headers(config, environ)
        if config.transport == "sse":
            return sse_client(url, headers=headers, timeout=config.connect_timeout)
        # httpx2's default pool (100 connections) would cap concurrent calls below
        # max_concurrency: each call holds one connection until its result. Idle
        # connections are dropped before common server keep-alive timeouts (uvicorn: 5 s):
        # reusing one the server is closing fails its POST with ReadError, which the SDK's
        # streamable HTTP client lets end the whole session (docs/benchmarks.md, MCP).
        pool = config.max_concurrency + _STREAM_HEADROOM
        limits = httpx2.Limits(
            max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=2.0
        )
        client = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(config.connect_timeout, read=max(config.timeout, 60.0)),
            limits=limits,
        )
        return _owning(streamable_http_client(url, http_client=client), client)

    return factory


def _resolved_headers(config: ServerConfig, environ: Mapping[str, str]) -> dict[str, str]:
    return {
        name: resolve(value, environ).get_secret_value() for name, value in config.headers.items()
    }


class _owning:
    """Closes the HTTP client the transport was given when the transport closes."""

    def __init__(self, inner, client: httpx2.AsyncClient) -> None:
        self._inner = inner
        self._client = client

    async def __aenter__(self):
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc: object) -> bool | None:
        try:
            return await self._inner.__aexit__(*exc)
        finally:
            await self._client.aclose()


def transport_for(
    server: str,
    config: ServerConfig,
    *,
    environ: Mapping[str, str] | None = None,
    command: str | None = None,
    wrap: LaunchWrapper | None = None,
) -> Connector:
    """How to reach a server.

    Args:
        server: its name.
        config: the registry entry.
        environ: where references resolve (default: the worker's environment).
        command: the provisioned executable of a package server.
        wrap: the sandbox for stdio servers (None: run as configured).

    Raises:
        RegistryError: a credential reference cannot be resolved.
        SandboxUnavailable: the sandbox is required and cannot be used.
    """
    env = os.environ if environ is None else environ
    if config.transport != "stdio":
        return Connector(open=open_http(config, env), secrets=_secrets(config, env))
    launch = stdio_launch(config, env, command)
    if wrap is not None:
        launch = wrap(launch)
    return open_stdio(server, launch, _secrets(config, env))


def _secrets(config: ServerConfig, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The values the server's credential references resolve to (to redact them)."""
    values: list[str] = []
    for value in [*config.env.values(), *config.headers.values()]:
        if is_reference(value):
            resolved = resolve(value, environ).get_secret_value()
            values.append(resolved)
            if resolved.lower().startswith("bearer "):
                values.append(resolved[7:])
    return tuple(v for v in values if len(v) >= 4)
