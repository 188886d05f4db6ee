"""The mcp_worker's service: each request kind to its terminal reply, cancellable by a cancel
event, and audited."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from ferryman.contracts import ErrorCode, ErrorInfo, FerrymanError
from ferryman.contracts.mcp import (
    MCP_CATALOG_LIST_COMPLETED,
    MCP_PROMPT_GET_COMPLETED,
    MCP_RESOURCE_READ_COMPLETED,
    CallAudit,
    CatalogListCompleted,
    CatalogListRequest,
    PromptGetCompleted,
    PromptGetRequest,
    ResourceReadCompleted,
    ResourceReadRequest,
    ServerEntry,
    ToolCallRequest,
)
from ferryman.contracts.usage import UsageEvent
from ferryman.publisher import RecordTooLarge
from ferryman_runtime.cancellation import CancelledByRequest
from ferryman_runtime.job import Job
from mcp_worker.catalog.catalog import Status
from mcp_worker.execution.audit import Audited
from mcp_worker.execution.context import Answer, CallContext, Outcome, Runtime
from mcp_worker.execution.tool_calls import call_tool
from mcp_worker.metrics import McpMetrics
from mcp_worker.servers.supervisor import ServerSupervisor
from mcp_worker.servers.tool_session import ToolSession

logger = logging.getLogger(__name__)

T = TypeVar("T")

McpRequest = ToolCallRequest | ResourceReadRequest | PromptGetRequest | CatalogListRequest

CallStatus = Literal["completed", "tool_error", "failed", "denied", "cancelled"]

CATALOG_TARGET = "catalog"
"""The `target` of catalog listings (they span servers)."""


def server_status(supervisor: ServerSupervisor | None) -> Status:
    """A server's status as the catalog shows it."""
    if supervisor is None:
        return "unhealthy"
    if supervisor.state == "provisioning":
        return "provisioning"
    if supervisor.breaker.state == "open" or supervisor.state in ("failed", "stopped"):
        return "unhealthy"
    if supervisor.state in ("backoff", "starting") or supervisor.breaker.state == "half-open":
        return "degraded"
    return "healthy"


class McpService:
    """Executes MCP requests.

    Args:
        runtime: the worker's servers, catalog, cache, cancels and auditor.
        metrics: where request counts and durations go.
        record_usage: takes one usage event per finished request (never raises, never
            blocks: `UsageRecorder.record`).
    """

    def __init__(
        self,
        runtime: Runtime,
        metrics: McpMetrics,
        record_usage: Callable[[UsageEvent], None] = lambda _event: None,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self._record_usage = record_usage

    async def execute(self, job: Job[McpRequest]) -> None:
        """Run one request to its terminal reply.

        Raises:
            aiokafka.errors.KafkaError: a reply was not acknowledged.
        """
        ctx = CallContext(self.runtime, job)
        request = job.request
        started = time.monotonic()
        if isinstance(request, CatalogListRequest):
            outcome = await self._catalog(ctx, request)
            seconds = time.monotonic() - started
            self.metrics.requests.observe("list", CATALOG_TARGET, outcome, seconds)
            self._usage(ctx, "list", None, None, None, outcome, seconds)
            return
        answer: Answer | None = None
        error: ErrorInfo | None = None
        status: CallStatus
        key = (job.event.source, job.event.id)
        try:
            answer = await self.runtime.board.run(key, self._run(ctx, request))
            status = "tool_error" if answer.outcome.tool_error else "completed"
        except CancelledByRequest as exc:
            error = ErrorInfo(
                code=ErrorCode.CANCELLED,
                message=f"cancelled by request{': ' + exc.reason if exc.reason else ''}"[:1000],
                retryable=False,
            )
            status = "cancelled"
        except FerrymanError as exc:
            error = exc.to_info()
            denied = exc.code in (ErrorCode.NOT_FOUND, ErrorCode.PERMISSION_DENIED)
            status = "denied" if denied else "failed"
        outcome = answer.outcome if answer is not None else Outcome()
        # The audit record is enqueued first, so it travels in the reply's produce request.
        audited = await self._audit(ctx, request, status, error, outcome, started)
        if answer is not None:
            await job.replies.finish(answer.event_type, answer.payload)
        elif error is not None:
            await job.replies.fail(error)
        await self.runtime.auditor.settle(audited)

    async def _run(
        self, ctx: CallContext, request: ToolCallRequest | ResourceReadRequest | PromptGetRequest
    ) -> Answer:
        if isinstance(request, ToolCallRequest):
            return await call_tool(ctx, request)
        if isinstance(request, ResourceReadRequest):
            return await self._read(ctx, request)
        return await self._prompt(ctx, request)

    async def _read(self, ctx: CallContext, request: ResourceReadRequest) -> Answer:
        started = time.monotonic()
        result, version = await _on_server(
            ctx,
            request.server,
            f"resource:{request.uri}",
            request.timeout,
            lambda s, t: s.read_resource(request.uri, t),
        )
        completed = ResourceReadCompleted(
            server=request.server,
            uri=request.uri,
            contents=[_as_json(c) for c in result.contents],
            protocol_version=version,
            duration_ms=(time.monotonic() - started) * 1000,
        )
        return Answer(MCP_RESOURCE_READ_COMPLETED, completed, Outcome())

    async def _prompt(self, ctx: CallContext, request: PromptGetRequest) -> Answer:
        started = time.monotonic()
        result, version = await _on_server(
            ctx,
            request.server,
            f"prompt:{request.prompt}",
            request.timeout,
            lambda s, t: s.get_prompt(request.prompt, request.arguments, t),
        )
        completed = PromptGetCompleted(
            server=request.server,
            prompt=request.prompt,
            description=result.description,
            messages=[_as_json(m) for m in result.messages],
            protocol_version=version,
            duration_ms=(time.monotonic() - started) * 1000,
        )
        return Answer(MCP_PROMPT_GET_COMPLETED, completed, Outcome())

    async def _catalog(self, ctx: CallContext, request: CatalogListRequest) -> str:
        """Reply with the catalog; return the request's outcome (`completed`, `too_large`)."""
        names = [
            name
            for name in self.runtime.catalog.servers()
            if (request.servers is None or name in request.servers) and ctx.visible(name)
        ]

        async def discover(name: str) -> None:
            supervisor = self.runtime.fleet.get(name)
            if supervisor is None:
                return
            try:
                await self.runtime.discovery.ensure(
                    name, ctx.bounded(supervisor.config.connect_timeout)
                )
            except FerrymanError as exc:
                logger.info("catalog: %s not listed: %s", name, exc.message)

        await asyncio.gather(*(discover(name) for name in names))
        entries: list[ServerEntry] = []
        for name in names:
            status = server_status(self.runtime.fleet.get(name))
            entry = self.runtime.catalog.entry(name, status, schemas=request.include_schemas)
            if entry is None:
                continue
            tools = [t for t in entry.tools if ctx.visible(name, t.name)]
            resources = [
                r for r in entry.resources if ctx.visible(name, f"resource:{r.get('uri', '')}")
            ]
            prompts = [p for p in entry.prompts if ctx.visible(name, f"prompt:{p.get('name', '')}")]
            update = {"tools": tools, "resources": resources, "prompts": prompts}
            entries.append(entry.model_copy(update=update))
        completed = CatalogListCompleted(
            servers=entries, catalog_version=self.runtime.catalog.version(names)
        )
        try:
            await ctx.job.replies.finish(MCP_CATALOG_LIST_COMPLETED, completed)
        except RecordTooLarge as exc:
            # Large APIs (hundreds of operations, megabytes of schemas) outgrow a reply
            # topic's limit; say what would fit rather than the kit's generic `too_large`.
            await ctx.job.replies.fail(_catalog_too_large(exc, request, len(entries)))
            return str(ErrorCode.TOO_LARGE)
        return "completed"

    async def _audit(
        self,
        ctx: CallContext,
        request: ToolCallRequest | ResourceReadRequest | PromptGetRequest,
        status: CallStatus,
        error: ErrorInfo | None,
        outcome: Outcome,
        started: float,
    ) -> Audited:
        arguments: dict[str, Any] | None
        if isinstance(request, ToolCallRequest):
            kind, target, arguments = "tool", request.tool, request.arguments
        elif isinstance(request, ResourceReadRequest):
            kind, target, arguments = "resource", request.uri, None
        else:
            kind, target, arguments = "prompt", request.prompt, dict(request.arguments)
        supervisor = self.runtime.fleet.get(request.server)
        extra = list(supervisor.config.redact) if supervisor is not None else []
        digest, recorded = self.runtime.auditor.arguments(arguments, extra)
        record = CallAudit(
            request_id=ctx.job.event.id,
            source=ctx.job.event.source,
            kind=kind,
            server=request.server,
            target=target[:2000],
            tenant=ctx.job.tenant,
            principal=request.principal,
            arguments_sha256=digest,
            arguments=recorded,
            outcome=status,
            error_code=str(error.code) if error is not None else None,
            cached=outcome.cached,
            definition_hash=outcome.definition_hash,
            duration_ms=(time.monotonic() - started) * 1000,
        )
        seconds = record.duration_ms / 1000
        # A tool's own error (`isError`) is a completed request: the tool answered.
        result = str(error.code) if error is not None else "completed"
        label = request.server if supervisor is not None else "unknown"
        self.metrics.requests.observe(kind, label, result, seconds)
        tool = f"{request.server}/{request.tool}" if isinstance(request, ToolCallRequest) else None
        self._usage(ctx, kind, request.server, tool, request.principal, result, seconds)
        return await self.runtime.auditor.call(record)

    def _usage(
        self,
        ctx: CallContext,
        operation: str,
        server: str | None,
        tool: str | None,
        user: str | None,
        outcome: str,
        seconds: float,
    ) -> None:
        """Record the request's usage event (who, which server and tool, how it ended)."""
        self._record_usage(
            UsageEvent(
                request_id=ctx.job.event.id[:256],
                service="mcp_worker",
                tenant=ctx.job.tenant[:256] if ctx.job.tenant else None,
                user=user,
                operation=operation,
                target=server[:256] if server else None,
                tool=tool[:256] if tool else None,
                latency_seconds=max(0.0, seconds),
                outcome=outcome,
                finished_at=datetime.now(UTC),
            )
        )


async def _on_server(
    ctx: CallContext,
    server: str,
    target: str,
    requested_timeout: float | None,
    work: Callable[[ToolSession, float], Awaitable[T]],
) -> tuple[T, str]:
    """Run one request on the tenant's session within the server's slot and timeouts;
    return its result and the negotiated protocol version.

    `target` is what the access rules see after `server/`: `resource:<uri>` or
    `prompt:<name>` (so `fs/*` allows them, an allow list of tools alone does not).
    """
    supervisor = ctx.server(server)
    if not ctx.visible(server, target):
        raise FerrymanError(ErrorCode.NOT_FOUND, f"no {target.split(':', 1)[0]} on {server!r}")
    bound = supervisor.config.timeout
    timeout = ctx.bounded(min(bound, requested_timeout) if requested_timeout else bound)
    async with supervisor.slot(timeout):
        session = await supervisor.session(ctx.job.tenant, timeout)
        result = await work(session, timeout)
    supervisor.succeeded()
    return result, session.protocol_version


def _catalog_too_large(exc: RecordTooLarge, request: CatalogListRequest, servers: int) -> ErrorInfo:
    """The `too_large` failure of a catalog listing: its size, and how to ask for less."""
    hints = ["include_schemas: false"] if request.include_schemas else []
    if servers > 1:
        hints.append("fewer servers in `servers`")
    advice = f"; ask with {' or '.join(hints)}" if hints else ""
    return ErrorInfo(
        code=ErrorCode.TOO_LARGE,
        message=(
            f"the catalog of {servers} server(s) is about {exc.size} bytes, more than reply"
            f" topic {exc.topic!r} accepts{advice}"
        )[:1000],
        retryable=False,
    )


def _as_json(model: BaseModel) -> dict[str, Any]:
    """An MCP result part as the server sent it (its wire names, nothing unset)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
