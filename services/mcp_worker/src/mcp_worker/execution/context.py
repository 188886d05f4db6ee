"""What each request runs with: the worker's shared parts (`Runtime`) and the job, with the
access checks and the deadline arithmetic every kind of request needs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.mcp import ToolEntry, tenant_may_use
from ferryman_runtime.cancellation import CancelBoard
from ferryman_runtime.job import Job
from mcp_worker.catalog.catalog import Catalog
from mcp_worker.catalog.discovery import Discovery
from mcp_worker.execution.audit import Auditor
from mcp_worker.execution.cache import ResultCache
from mcp_worker.execution.limits import Limits
from mcp_worker.execution.rate_limits import RateLimits
from mcp_worker.servers.fleet import Fleet
from mcp_worker.servers.supervisor import ServerSupervisor


@dataclass
class Runtime:
    """The worker's parts a request uses."""

    fleet: Fleet
    catalog: Catalog
    discovery: Discovery
    cache: ResultCache
    limits: Limits
    board: CancelBoard
    auditor: Auditor
    rate_limits: RateLimits = field(default_factory=RateLimits)


@dataclass
class Outcome:
    """How a request ended, for its audit record."""

    definition_hash: str | None = None
    cached: bool = False
    tool_error: bool = False


@dataclass(frozen=True)
class Answer:
    """A request's terminal reply, published by the service together with its audit record
    (one produce request to Kafka for both)."""

    event_type: str
    payload: BaseModel
    outcome: Outcome


class CallContext:
    """One request's view of the worker.

    Args:
        runtime: the worker's parts.
        job: the request.
    """

    def __init__(self, runtime: Runtime, job: Job[Any]) -> None:
        self.runtime = runtime
        self.job = job

    def visible(self, server: str, tool: str | None = None) -> bool:
        """Whether the request's tenant may see the server (and tool)."""
        supervisor = self.runtime.fleet.get(server)
        if supervisor is None:
            return False
        return tenant_may_use(
            self.job.tenant,
            server,
            tool,
            list(supervisor.config.tenants),
            self.runtime.catalog.access,
        )

    def server(self, server: str) -> ServerSupervisor:
        """The server, if the tenant may use it.

        Raises:
            FerrymanError: `not_found` for an unknown server and for one the tenant may not
                see (the same answer: a denied server is invisible).
        """
        supervisor = self.runtime.fleet.get(server)
        if supervisor is None or not self.visible(server):
            raise FerrymanError(ErrorCode.NOT_FOUND, f"no MCP server {server!r}")
        return supervisor

    async def resolve_tool(self, server: str, tool: str) -> tuple[ServerSupervisor, ToolEntry]:
        """The server and the tool's catalog entry (discovering the server if needed).

        Raises:
            FerrymanError: `not_found` (unknown or invisible server or tool),
                `permission_denied` (quarantined after a definition change), or the
                server's failure to start.
        """
        supervisor = self.server(server)
        if not self.visible(server, tool) or not supervisor.config.tools.permits(tool):
            raise FerrymanError(ErrorCode.NOT_FOUND, f"no tool {tool!r} on MCP server {server!r}")
        await self.runtime.discovery.ensure(server, self.bounded(supervisor.config.connect_timeout))
        known = self.runtime.catalog.get(server)
        entry = known.tools.get(tool) if known is not None else None
        if entry is None:
            raise FerrymanError(ErrorCode.NOT_FOUND, f"no tool {tool!r} on MCP server {server!r}")
        if entry.state == "quarantined":
            raise FerrymanError(
                ErrorCode.PERMISSION_DENIED,
                f"tool {tool!r} on {server!r} changed its definition (now"
                f" {entry.definition_hash[:12]}) and is quarantined until an operator approves it",
            )
        return supervisor, entry

    def bounded(self, seconds: float) -> float:
        """`seconds`, cut to what is left before the request's expiry.

        Raises:
            FerrymanError: `expired` when nothing is left.
        """
        if self.job.deadline is None:
            return seconds
        left = self.job.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise FerrymanError(ErrorCode.EXPIRED, "the request expired before the call")
        return min(seconds, left)
