"""Runs the tool calls of one step on the mcp_worker and turns their outcomes into what the
model reads: one `ToolCallFinished` per call, in the model's order.

Each call runs inside an `execute_tool {server}/{tool}` span, so the MCP request it
publishes carries the span's trace context (tool arguments and results stay off the span).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from opentelemetry import trace
from opentelemetry.trace import Tracer

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.errors import ErrorInfo
from ferryman.contracts.llm_tools import ToolCallFinished, ToolCallStarted, ToolExecution
from ferryman.contracts.mcp import CatalogListRequest, ToolCallCompleted, ToolCallRequest
from ferryman_runtime.telemetry.spans import mark_failed, traced_span
from llm_worker.metrics import LlmMetrics
from llm_worker.tool_loop.dispatch import ToolDispatcher
from llm_worker.tool_loop.journal import DispatchedCall, LoopJournal, ToolOutcome

HOP_GRACE = 5.0
"""Seconds waited for a result past the call's own timeout: the mcp_worker ends a call that
runs out of time with a `failed: timeout` reply, which has two Kafka hops to travel."""


@dataclass(frozen=True)
class StepCalls:
    """What one step's calls need besides the calls themselves."""

    step: int
    tenant: str | None
    execution: ToolExecution
    deadline: float | None
    """`clock()` time by which the request must be done."""
    traceparent: str | None = None
    cancel_requested: Callable[[], bool] = lambda: False
    """Whether a cancel event is cancelling the request (its pending calls are cancelled
    too; a worker that stops leaves them to finish, for the rerun to find)."""


class ToolRunner:
    """Dispatches calls, waits for their results in the journal, cancels what is abandoned.

    Args:
        dispatcher: publishes tool calls and cancels.
        journal: where results arrive.
        result_max_chars: characters of one result the model gets at most.
        metrics: where tool calls are counted.
        clock: the clock of request deadlines (the event loop's by default).
        tracer: where each call's span goes (default: the global tracer provider's).
    """

    def __init__(
        self,
        dispatcher: ToolDispatcher,
        journal: LoopJournal,
        *,
        result_max_chars: int,
        metrics: LlmMetrics,
        clock: Callable[[], float] | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._tracer = tracer or trace.get_tracer("llm_worker")
        self._metrics = metrics
        self._dispatcher = dispatcher
        self._journal = journal
        self._max_chars = result_max_chars
        self._clock = clock

    async def run(
        self,
        calls: list[DispatchedCall],
        context: StepCalls,
        *,
        resumed: bool,
        on_started: Callable[[ToolCallStarted], Awaitable[None]],
        on_finished: Callable[[ToolCallFinished], Awaitable[None]],
    ) -> list[ToolCallFinished]:
        """Run `calls` (concurrently unless the request says otherwise) and return their results
        in order. With `resumed`, a call whose result the journal holds is not made again, and
        a call that is not idempotent is never sent again: its result is awaited, or reported
        as unknown.

        Raises:
            FerrymanError: a call failed and the request says to fail (`on_tool_error: fail`).
            asyncio.CancelledError: the request was cancelled (pending calls are cancelled too).
        """

        async def one(call: DispatchedCall) -> ToolCallFinished:
            await on_started(
                ToolCallStarted(
                    step=context.step,
                    call_id=call.call_id,
                    name=call.function,
                    server=call.server,
                    tool=call.tool,
                    arguments=call.arguments,
                    tool_request_id=call.tool_request_id,
                )
            )
            finished = await self._traced(call, context, resumed)
            await on_finished(finished)
            return finished

        fail_fast = context.execution.on_tool_error == "fail"
        results: list[ToolCallFinished] = []
        tasks: list[asyncio.Task[ToolCallFinished]] = []
        try:
            if context.execution.parallel:
                tasks = [asyncio.create_task(one(call)) for call in calls]
                results = list(await asyncio.gather(*tasks))
            else:
                for call in calls:
                    results.append(await one(call))
                    if fail_fast and results[-1].is_error:
                        break  # the rest would run for a request that fails
        except BaseException:
            # A sibling still running would publish on a run that is over.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if context.cancel_requested():
                unanswered = [
                    c.tool_request_id
                    for c in calls
                    if self._journal.result(c.tool_request_id) is None
                ]
                if unanswered:
                    await asyncio.shield(
                        self._dispatcher.cancel(unanswered, "chat request cancelled")
                    )
            raise
        if fail_fast:
            for result in results:
                if result.is_error:
                    raise _failure(result)
        return results

    async def _traced(
        self, call: DispatchedCall, context: StepCalls, resumed: bool
    ) -> ToolCallFinished:
        """Run one call inside its span (`traced_span`: an exception's message may quote the
        tool's output, so only its type goes); count it."""
        with traced_span(
            self._tracer,
            f"execute_tool {call.server}/{call.tool}",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": call.tool,
                "gen_ai.tool.call.id": call.call_id,
                "ferryman.mcp.server": call.server,
            },
        ) as span:
            finished = await self._one(call, context, resumed)
            error_type = self._count(finished)
            if finished.replayed:
                span.set_attribute("ferryman.replayed", True)
            if error_type:
                mark_failed(span, error_type)
        return finished

    async def _one(
        self, call: DispatchedCall, context: StepCalls, resumed: bool
    ) -> ToolCallFinished:
        started = time.monotonic()
        outcome: ToolOutcome | None = self._journal.result(call.tool_request_id)
        replayed = outcome is not None
        if outcome is None:
            arguments = _arguments(call.arguments)
            if isinstance(arguments, ErrorInfo):
                return self._finished(call, context, ToolOutcome(failed=arguments), started)
            timeout = context.execution.tool_timeout
            remaining = self._remaining(context.deadline)
            if remaining < timeout:
                timeout = remaining
            if timeout <= 0:
                return self._finished(call, context, _timed_out(call, 0.0), started)
            if not resumed or call.idempotent:
                await self._dispatcher.send(
                    call.tool_request_id,
                    ToolCallRequest(
                        server=call.server,
                        tool=call.tool,
                        arguments=arguments,
                        timeout=timeout,
                        progress=False,
                    ),
                    tenant=context.tenant,
                    expires_in=timeout,
                    traceparent=context.traceparent,
                )
            wait = min(timeout + HOP_GRACE, max(self._remaining(context.deadline), timeout))
            outcome = await self._journal.wait_result(call.tool_request_id, wait)
            if outcome is None:
                await self._dispatcher.cancel([call.tool_request_id], "tool call timed out")
                outcome = (
                    _timed_out(call, timeout)
                    if not resumed or call.idempotent
                    else _unknown(call, timeout)
                )
        return self._finished(call, context, outcome, started, replayed=replayed)

    def _finished(
        self,
        call: DispatchedCall,
        context: StepCalls,
        outcome: ToolOutcome,
        started: float,
        *,
        replayed: bool = False,
    ) -> ToolCallFinished:
        done = outcome.completed
        error = None
        if done is not None:
            content, is_error, cached = result_text(done), done.is_error, done.cached
        else:
            error = outcome.failed or ErrorInfo(
                code=ErrorCode.INTERNAL, message="no outcome", retryable=False
            )
            content, is_error, cached = f"Error ({error.code}): {error.message}", True, False
        return ToolCallFinished(
            step=context.step,
            call_id=call.call_id,
            server=call.server,
            tool=call.tool,
            tool_request_id=call.tool_request_id,
            content=self._cut(content),
            is_error=is_error,
            error=error,
            duration_ms=round((time.monotonic() - started) * 1000.0, 3),
            cached=cached,
            replayed=replayed,
        )

    async def list_servers(self, servers: list[str], tenant: str | None, timeout: float) -> bool:
        """Ask the mcp_worker to list `servers` (it starts a lazy server to do so) and wait for
        its answer; return whether it answered in time."""
        request_id = f"tl-list-{uuid.uuid4().hex}"
        await self._dispatcher.send(
            request_id,
            CatalogListRequest(servers=servers, include_schemas=False),
            tenant=tenant,
            expires_in=timeout,
        )
        return await self._journal.wait_result(request_id, timeout + HOP_GRACE) is not None

    def _count(self, finished: ToolCallFinished) -> str:
        """Count a finished call; return its error type (empty: it completed)."""
        if finished.error is not None:
            error_type = str(finished.error.code)
        else:
            error_type = "tool_error" if finished.is_error else ""
        server = finished.server or "none"
        outcome = "replayed" if finished.replayed else error_type or "completed"
        self._metrics.tool_calls.labels(server=server, outcome=outcome).inc()
        if not finished.replayed:
            self._metrics.tool_duration.labels(server=server, error_type=error_type).observe(
                finished.duration_ms / 1000.0
            )
        return error_type

    def _cut(self, text: str) -> str:
        if len(text) <= self._max_chars:
            return text
        kept = text[: self._max_chars]
        return f"{kept}\n[cut: the result had {len(text)} characters, {self._max_chars} shown]"

    def _remaining(self, deadline: float | None) -> float:
        if deadline is None:
            return float("inf")
        now = self._clock() if self._clock else asyncio.get_running_loop().time()
        return deadline - now


def _failure(result: ToolCallFinished) -> FerrymanError:
    """The request's failure for a call that failed (`on_tool_error: fail`)."""
    if result.error is None:
        return FerrymanError(
            ErrorCode.TOOL_ERROR,
            f"tool {result.server}/{result.tool} reported an error: {result.content[:500]}",
            retryable=False,
        )
    code = result.error.code
    return FerrymanError(
        code if isinstance(code, ErrorCode) else ErrorCode.INTERNAL,
        f"tool {result.server}/{result.tool} failed: {result.error.message}",
        retryable=False,
    )


def result_text(result: ToolCallCompleted) -> str:
    """A tool result as text for the model: text blocks as they are, other blocks as JSON,
    and the structured content when there is no text."""
    parts: list[str] = []
    for block in result.content:
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(cast(str, block["text"]))
        else:
            parts.append(json.dumps(block, separators=(",", ":"), ensure_ascii=False))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, separators=(",", ":")))
    text = "\n".join(parts)
    if result.truncated:
        text += "\n[cut by the tool worker's output limit]"
    return text


def _arguments(raw: str) -> dict[str, Any] | ErrorInfo:
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        return ErrorInfo(
            code=ErrorCode.INVALID_REQUEST,
            message=f"the arguments are not valid JSON ({exc.msg} at {exc.pos})",
            retryable=False,
        )
    if not isinstance(value, dict):
        return ErrorInfo(
            code=ErrorCode.INVALID_REQUEST,
            message="the arguments must be a JSON object",
            retryable=False,
        )
    return cast(dict[str, Any], value)


def _timed_out(call: DispatchedCall, timeout: float) -> ToolOutcome:
    return ToolOutcome(
        failed=ErrorInfo(
            code=ErrorCode.TIMEOUT,
            message=f"{call.server}/{call.tool} did not answer within {timeout:.1f}s",
            retryable=True,
        )
    )


def _unknown(call: DispatchedCall, timeout: float) -> ToolOutcome:
    return ToolOutcome(
        failed=ErrorInfo(
            code=ErrorCode.UNAVAILABLE,
            message=(
                f"{call.server}/{call.tool} was sent before the worker restarted and no result"
                f" came within {timeout:.1f}s; it is not idempotent, so it was not sent again"
            ),
            retryable=False,
        )
    )
