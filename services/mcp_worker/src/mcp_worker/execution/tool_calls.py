"""One tool call from request to terminal reply: access, quarantine, argument checks, the
result cache, the timeout (never past the request's expiry), the concurrency slot, the call
with its progress, output checks, retries of read-only / idempotent tools on transport
failures, and the audit record."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import mcp_types as types

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.mcp import (
    MCP_PROGRESS,
    MCP_TOOL_CALL_COMPLETED,
    McpProgress,
    ToolCallCompleted,
    ToolCallRequest,
    ToolEntry,
)
from mcp_worker.catalog.definitions import may_cache, may_retry
from mcp_worker.execution.cache import cache_key
from mcp_worker.execution.context import Answer, CallContext, Outcome
from mcp_worker.execution.limits import bound_output, check_arguments, check_structured
from mcp_worker.execution.tool_span import tool_answered, tool_span
from mcp_worker.openapi.session import CACHED_META
from mcp_worker.servers.supervisor import ServerSupervisor

logger = logging.getLogger(__name__)


class _CallTimedOut(Exception):
    """Not a `FerrymanError`, so the breaker does not count it."""


_PROGRESS_INTERVAL = 0.05
"""At most 20 progress events a second per call: a flooding server cannot flood the topic."""


@dataclass
class _Progress:
    """Publishes the server's progress notifications as `progress` replies, in order, until
    the call returns (a late notification never follows the terminal reply)."""

    ctx: CallContext
    sequence: int = 0
    closed: bool = False
    last: float = float("-inf")

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        now = time.monotonic()
        if self.closed or now - self.last < _PROGRESS_INTERVAL:
            return
        self.last = now
        event = McpProgress(
            progress=progress,
            total=total,
            message=message[:2000] if message else None,
            sequence=self.sequence,
        )
        self.sequence += 1
        await self.ctx.job.replies.emit(MCP_PROGRESS, event)


def progress_done(progress: _Progress | None) -> None:
    """No progress event after the call returned."""
    if progress is not None:
        progress.closed = True


async def call_tool(ctx: CallContext, request: ToolCallRequest) -> Answer:
    """Run the tool call of `ctx` (publishing its progress); return its terminal reply.

    Raises:
        FerrymanError: the call failed (the caller publishes `failed`).
        aiokafka.errors.KafkaError: a progress event was not accepted.
    """
    supervisor, entry = await ctx.resolve_tool(request.server, request.tool)
    outcome = Outcome(definition_hash=entry.definition_hash)
    config = supervisor.config
    arguments: dict[str, Any] = request.arguments
    check_arguments(arguments, entry.input_schema, ctx.runtime.limits, request.tool)
    # An API caches HTTP responses itself (per tenant, as its headers say).
    cacheable = not config.is_api and may_cache(entry, config.cache.mode)
    key = cache_key(
        f"{request.server}#{supervisor.config_digest}",
        request.tool,
        entry.definition_hash,
        arguments,
        ctx.job.tenant,
    )
    if cacheable and request.use_cache:
        hit = ctx.runtime.cache.get(key)
        if hit is not None:
            outcome.cached = True
            outcome.tool_error = hit.is_error
            answer = hit.model_copy(update={"cached": True, "duration_ms": 0.0})
            return Answer(MCP_TOOL_CALL_COMPLETED, answer, outcome)
    bounds = [config.timeout, config.tool_timeouts.get(request.tool, config.timeout)]
    if request.timeout is not None:
        bounds.append(request.timeout)
    timeout = ctx.bounded(min(bounds))
    # An API's caller retries itself (idempotent methods, honouring Retry-After).
    attempts = 1 + (config.retries if may_retry(entry) and not config.is_api else 0)
    started = time.monotonic()
    async with ctx.runtime.rate_limits.admitted(request.server, ctx.job.tenant, timeout):
        remaining = max(timeout - (time.monotonic() - started), 0.01)
        result = await _with_retries(ctx, supervisor, entry, request, remaining, attempts)
    duration_ms = (time.monotonic() - started) * 1000
    content = [
        block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content
    ]
    structured = result.structured_content
    if not result.is_error and not config.is_api:  # an API's responses: see ApiCaller
        check_structured(structured, entry.output_schema, config.output_validation, request.tool)
    content, structured, truncated = bound_output(
        content, structured, ctx.runtime.limits, request.tool
    )
    completed = ToolCallCompleted(
        server=request.server,
        tool=request.tool,
        content=content,
        structured_content=structured,
        is_error=bool(result.is_error),
        protocol_version=supervisor.protocol_version or "",
        definition_hash=entry.definition_hash,
        duration_ms=duration_ms,
        truncated=truncated,
        cached=bool((result.meta or {}).get(CACHED_META)),
    )
    outcome.cached = completed.cached
    if cacheable:
        ctx.runtime.cache.put(key, completed, config.cache.ttl)
    outcome.tool_error = completed.is_error
    return Answer(MCP_TOOL_CALL_COMPLETED, completed, outcome)


async def _with_retries(
    ctx: CallContext,
    supervisor: ServerSupervisor,
    entry: ToolEntry,
    request: ToolCallRequest,
    timeout: float,
    attempts: int,
) -> types.CallToolResult:
    progress = _Progress(ctx) if request.progress else None
    try:
        return await _attempts(ctx, supervisor, entry, request, timeout, attempts, progress)
    finally:
        progress_done(progress)


async def _attempts(
    ctx: CallContext,
    supervisor: ServerSupervisor,
    entry: ToolEntry,
    request: ToolCallRequest,
    timeout: float,
    attempts: int,
    progress: _Progress | None,
) -> types.CallToolResult:
    deadline = time.monotonic() + timeout
    for attempt in range(1, attempts + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FerrymanError(
                ErrorCode.TIMEOUT,
                f"tool {request.tool!r} on {request.server!r} did not finish in {timeout:g} s",
                upstream=request.server,
            )
        try:
            return await _attempt(ctx, supervisor, request, remaining, progress)
        except FerrymanError as exc:
            # Only a transport failure is retried (the call may not have reached the tool);
            # a timeout may have run it: never repeated.
            if exc.code != ErrorCode.UNAVAILABLE or not exc.retryable or attempt == attempts:
                raise
            logger.info(
                "retrying %s/%s after a transport failure (attempt %d of %d)",
                request.server,
                entry.name,
                attempt + 1,
                attempts,
            )
    raise AssertionError("unreachable")


async def _attempt(
    ctx: CallContext,
    supervisor: ServerSupervisor,
    request: ToolCallRequest,
    timeout: float,
    progress: _Progress | None,
) -> types.CallToolResult:
    with tool_span(request.server, request.tool, supervisor.config) as span:
        result = await _attempt_call(ctx, supervisor, request, timeout, progress)
        tool_answered(span, is_error=bool(result.is_error))
        return result


async def _attempt_call(
    ctx: CallContext,
    supervisor: ServerSupervisor,
    request: ToolCallRequest,
    timeout: float,
    progress: _Progress | None,
) -> types.CallToolResult:
    started = time.monotonic()
    async with supervisor.slot(timeout):
        remaining = max(timeout - (time.monotonic() - started), 0.01)
        session = await supervisor.session(ctx.job.tenant, remaining)
        remaining = max(timeout - (time.monotonic() - started), 0.01)
        stats = supervisor.stats
        stats.started()
        failed = rejected = False
        try:
            async with supervisor.breaker.guard():
                try:
                    return_value = await asyncio.wait_for(
                        session.call_tool(
                            request.tool,
                            request.arguments,
                            timeout=remaining,
                            progress=progress,
                            use_cache=request.use_cache,
                        ),
                        remaining + 1.0,  # the SDK's own timeout fires first, politely
                    )
                except (TimeoutError, FerrymanError) as exc:
                    if isinstance(exc, FerrymanError) and exc.code != ErrorCode.TIMEOUT:
                        raise
                    # A call that outlasts the caller's timeout says nothing about the
                    # server: it must not open the circuit other tenants' calls go through.
                    raise _CallTimedOut from None
        except _CallTimedOut:
            failed = True
            raise FerrymanError(
                ErrorCode.TIMEOUT,
                f"tool {request.tool!r} on {request.server!r} did not finish in {timeout:g} s",
                upstream=request.server,
            ) from None
        except FerrymanError as exc:
            failed = exc.retryable
            rejected = not exc.retryable  # the server refused the call: the caller's fault
            raise
        finally:
            stats.finished(failed=failed, rejected=rejected, latency=time.monotonic() - started)
    supervisor.succeeded()
    return return_value
