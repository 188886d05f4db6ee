"""The tool loop: ask the model, run the MCP tools it calls, give it the results, ask again.

Each turn is one routed call (retries and failover as for any request). Before a turn's
tool calls are sent, the turn is recorded in the journal; a rerun of the request (after a
crash, on any replica) replays the recorded turns instead of asking the model again, and
takes the results the journal holds instead of calling the tools again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from ferryman.contracts import ChatCompleted, ChatRequest, ErrorCode, FerrymanError
from ferryman.contracts.llm import (
    AttemptInfo,
    ChatChunk,
    ChunkDelta,
    CompletedToolCall,
    Latency,
    Message,
    StepInfo,
)
from ferryman.contracts.llm_tools import ToolCallFinished, ToolExecution
from ferryman_runtime.cancellation import CancelBoard
from llm_worker.chat.job import ChatJob
from llm_worker.metrics import LlmMetrics
from llm_worker.tool_loop.dispatch import request_digest, tool_request_id
from llm_worker.tool_loop.journal import DispatchedCall, LoopJournal, LoopStep
from llm_worker.tool_loop.offer import ToolCatalog, ToolOffer
from llm_worker.tool_loop.tool_runs import StepCalls, ToolRunner
from llm_worker.tool_loop.turns import (
    step_summaries,
    summed_usage,
    turn_messages,
    unknown_function,
    within_record_size,
)

logger = logging.getLogger(__name__)

Serve = Callable[[ChatJob], Awaitable[tuple[ChatCompleted, str]]]
"""Serves one model turn: routing, retries and failover; returns the answer and its
deployment's metrics label."""

SYNC_TIMEOUT = 30.0
"""Seconds a loop waits for the catalog and the journal to be read up to date before it
starts (then it fails `unavailable`: resuming blind could run a tool twice)."""


LIST_TIMEOUT = 30.0
"""Seconds the mcp_worker gets to start and list servers whose tools are not known yet."""


@dataclasses.dataclass(frozen=True)
class _Turn:
    info: StepInfo
    completed: ChatCompleted | None = None
    """The model's answer (None: the turn was replayed from `record`)."""
    record: LoopStep | None = None
    serving: str | None = None


class ToolLoop:
    """Runs chat requests whose tools name MCP servers.

    Args:
        catalog: the MCP tools the model may be offered.
        journal: steps and tool results (the loop's memory across reruns).
        runner: runs one step's tool calls.
        metrics: where steps are counted.
    """

    def __init__(
        self,
        catalog: ToolCatalog,
        journal: LoopJournal,
        runner: ToolRunner,
        metrics: LlmMetrics,
        *,
        timeout: float,
        cancels: CancelBoard | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._catalog = catalog
        self._journal = journal
        self._runner = runner
        self._metrics = metrics
        self._timeout = timeout
        self._cancels = cancels
        self._clock = clock

    async def run(self, job: ChatJob, serve: Serve) -> tuple[ChatCompleted, str]:
        """Run `job` to its final answer (or to a turn that must go back to the producer).

        Raises:
            FerrymanError: a turn failed, the request is invalid for the catalog, a tool
                failed and the request says to fail, or the loop ran out of time.
        """
        request = job.request
        offer = await self._offer(job)
        base = offer.provider_request(request)
        execution = request.tool_execution
        if execution is None or execution.mode != "auto":
            return await serve(dataclasses.replace(job, request=base))
        # The whole loop is bounded, not only each provider call and each tool call.
        ends = [t for t in (job.deadline, self._now() + self._timeout) if t is not None]
        job = dataclasses.replace(job, deadline=min(ends))
        digest = request_digest(job.unresolved or request)
        recorded = await self._recorded(job, digest)
        started = time.monotonic()
        messages: list[Message] = list(request.messages)
        steps: list[StepInfo] = []
        attempts: list[AttemptInfo] = []
        chunks = 0
        first_token: float | None = None
        provider = serving = "replayed"
        for number in range(execution.max_steps):
            turn = await self._turn(job, base, messages, number, recorded.get(number), serve)
            info, completed = turn.info, turn.completed
            if info.replayed and info.content and request.stream:
                chunks += 1  # the replayed step's content, published as one chunk
            self._metrics.loop_steps.labels(kind="replayed" if info.replayed else "model").inc()
            job.tally.steps += 1
            if info.replayed:
                job.tally.add(info.usage)  # spent by the earlier run, which never reported it
            if completed is not None:
                chunks += completed.chunk_count
                attempts.extend(completed.attempts or [])
                provider, serving = completed.provider, turn.serving or serving
                if first_token is None and completed.latency_ms.first_token is not None:
                    first_token = completed.latency_ms.first_token
            calls = info.tool_calls
            unknown = [call for call in calls if not offer.knows(call.name)]
            runnable = [call for call in calls if offer.runnable(call.name) is not None]
            runnable += unknown  # answered at once: no such function was offered
            if not runnable or number == execution.max_steps - 1:
                reason = "max_steps" if runnable else info.finish_reason
                steps.append(info.model_copy(update={"finish_reason": reason}))
                break
            record = turn.record
            if record is None:
                record = LoopStep(
                    source=job.key[0],
                    request_id=job.key[1],
                    request_digest=digest,
                    step=number,
                    content=info.content,
                    tool_calls=calls,
                    finish_reason=info.finish_reason,
                    usage=info.usage,
                    deployment=info.deployment,
                    dispatched=self._dispatched(job, digest, number, calls, offer),
                )
                await self._journal.record(record)
            for dispatched in record.dispatched:
                job.tally.called(dispatched.server, dispatched.tool)
            results = await self._run_tools(job, record, execution, resumed=info.replayed)
            for call in unknown:
                results.append(unknown_function(number, call))
                await job.replies.tool_result(results[-1])
            back = len(runnable) < len(calls)
            steps.append(info.model_copy(update={"tool_results": step_summaries(results, back)}))
            if back:  # a plain function, or a tool the producer must confirm
                break
            messages.extend(turn_messages(info.content, calls, results))
        completed = self._completed(steps, attempts, chunks, first_token, started, job)
        return completed.model_copy(update={"provider": provider}), serving

    async def _offer(self, job: ChatJob) -> ToolOffer:
        """The MCP tools offered for `job`, from a catalog read up to date if need be.

        Raises:
            FerrymanError: the catalog cannot be read, or offers the tenant nothing asked for.
        """
        try:
            await asyncio.wait_for(self._catalog.ready.wait(), SYNC_TIMEOUT)
        except TimeoutError:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                "the MCP catalog topic could not be read; MCP tools cannot be offered yet",
                retryable=True,
            ) from None
        await self._list_unlisted(job)
        try:
            return ToolOffer(job.request, job.tenant, self._catalog)
        except FerrymanError:
            # A server listed a moment ago may not have been read yet: read up to date once.
            with contextlib.suppress(TimeoutError):
                await self._catalog.sync(SYNC_TIMEOUT)
            return ToolOffer(job.request, job.tenant, self._catalog)

    async def _recorded(self, job: ChatJob, digest: str) -> dict[int, LoopStep]:
        """The steps an earlier run of this very request recorded, contiguous from step 0.

        Raises:
            FerrymanError: the journal cannot be read up to date (resuming blind could run a
                tool twice).
        """
        try:
            await self._journal.sync(SYNC_TIMEOUT)
        except TimeoutError:
            raise FerrymanError(
                ErrorCode.UNAVAILABLE,
                "the tool-loop topic could not be read up to date; the loop did not start",
                retryable=True,
            ) from None
        found = self._journal.steps(*job.key)
        recorded: dict[int, LoopStep] = {}
        # A step of another request under the same id (a reused id) is not this one's; a gap
        # (a step forgotten) ends the replay: later steps followed the forgotten one.
        while (step := found.get(len(recorded))) is not None and step.request_digest == digest:
            recorded[step.step] = step
        if recorded:
            await job.replies.progress("resumed", 0, f"{len(recorded)} recorded step(s) found")
        return recorded

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def _list_unlisted(self, job: ChatJob) -> None:
        """Servers known to the catalog whose tools were never listed (a lazy server that has
        not run yet) are listed by the mcp_worker first, so their tools can be offered."""
        unlisted = [
            toolset.server
            for toolset in job.request.mcp_toolsets()
            if (record := self._catalog.record(toolset.server)) is not None
            and not record.entry.tools
        ]
        if not unlisted:
            return
        if await self._runner.list_servers(unlisted, job.tenant, LIST_TIMEOUT):
            try:
                await self._catalog.sync(SYNC_TIMEOUT)
            except TimeoutError:
                logger.warning("the catalog topic was not read up to date after a listing")

    async def _turn(
        self,
        job: ChatJob,
        base: ChatRequest,
        messages: list[Message],
        number: int,
        record: LoopStep | None,
        serve: Serve,
    ) -> _Turn:
        if record is not None:
            if record.content and job.request.stream:
                await job.replies.chunk(
                    ChatChunk(index=0, delta=ChunkDelta(content=record.content), step=number)
                )
            info = StepInfo(
                step=number,
                content=record.content,
                tool_calls=record.tool_calls,
                finish_reason=record.finish_reason,
                usage=record.usage,
                deployment=record.deployment,
                replayed=True,
            )
            return _Turn(info, record=record)
        await job.replies.progress("step_started", number, None)
        update: dict[str, object] = {"messages": messages}
        if number > 0 and base.tool_choice != "none":
            # A forced choice (`required`, a named function) holds for the first turn only:
            # forced on every turn, the model could never answer.
            update["tool_choice"] = None
        step_job = dataclasses.replace(job, request=base.model_copy(update=update), step=number)
        completed, serving = await serve(step_job)
        info = StepInfo(
            step=number,
            content=completed.content,
            tool_calls=completed.tool_calls,
            finish_reason=completed.finish_reason,
            usage=completed.usage,
            deployment=completed.deployment,
        )
        return _Turn(info, completed=completed, serving=serving)

    def _dispatched(
        self,
        job: ChatJob,
        digest: str,
        number: int,
        calls: list[CompletedToolCall],
        offer: ToolOffer,
    ) -> list[DispatchedCall]:
        source, request_id = job.key
        dispatched: list[DispatchedCall] = []
        for index, call in enumerate(calls):
            offered = offer.runnable(call.name)
            if offered is None:
                continue
            dispatched.append(
                DispatchedCall(
                    call_id=call.id,
                    function=call.name,
                    server=offered.server,
                    tool=offered.tool,
                    arguments=call.arguments,
                    tool_request_id=tool_request_id(
                        source, request_id, number, index, digest=digest, call=call
                    ),
                    idempotent=offered.idempotent,
                )
            )
        return dispatched

    async def _run_tools(
        self, job: ChatJob, record: LoopStep, execution: ToolExecution, *, resumed: bool
    ) -> list[ToolCallFinished]:
        await job.replies.progress(
            "waiting_tools", record.step, f"{len(record.dispatched)} tool call(s)"
        )
        return await self._runner.run(
            record.dispatched,
            StepCalls(
                step=record.step,
                tenant=job.tenant,
                execution=execution,
                deadline=job.deadline,
                traceparent=job.traceparent,
                cancel_requested=lambda: (
                    self._cancels is not None and self._cancels.requested(job.key)
                ),
            ),
            resumed=resumed,
            on_started=job.replies.tool_called,
            on_finished=job.replies.tool_result,
        )

    def _completed(
        self,
        steps: list[StepInfo],
        attempts: list[AttemptInfo],
        chunks: int,
        first_token: float | None,
        started: float,
        job: ChatJob,
    ) -> ChatCompleted:
        last = steps[-1]
        total = Latency(first_token=first_token, total=round((time.monotonic() - started) * 1e3, 3))
        completed = ChatCompleted(
            content=last.content,
            tool_calls=last.tool_calls,
            finish_reason=last.finish_reason,
            usage=summed_usage([step.usage for step in steps]),
            provider="",
            model=job.request.model,
            chunk_count=chunks,
            latency_ms=total,
            deployment=last.deployment,
            attempts=attempts or None,
            steps=steps,
        )
        return within_record_size(completed)
