"""Executes one chat request: route it, call deployments until one serves, publish the result.

The request-level rules live here (see docs/llm-routing.md, "Retries and failover"): one
attempt budget and one deadline per request, and no call starts once
the deadline has passed; what happens to a deployment after a failed call is decided by
`retry_rules` (retry it, come back to it only if nothing else can serve, or leave it) in
`deployment_attempts`; `context_length` moves to the route's larger-context route;
`content_filter` ends the request unless the route says to fall back; a stream that fails
after chunks were published is restarted (announced by a `restarted` event) or failed; when
every deployment is at a quota or cooling down, the request waits (backpressure) until one
frees up or its deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from typing import Literal

from opentelemetry import trace
from opentelemetry.trace import Tracer

from ferryman.contracts import ChatCompleted, ErrorCode, FerrymanError
from ferryman_runtime.cancellation import CancelBoard, CancelledByRequest
from llm_worker.caching.response_cache import CacheTicket, ResponseCache
from llm_worker.chat.accounting import UsageSink, operation_of, usage_event
from llm_worker.chat.deployment_attempts import DeploymentAttempts
from llm_worker.chat.deployment_call import DeploymentCaller, deployment_label
from llm_worker.chat.job import ChatJob, RequestState, Resilience, over_quota_error
from llm_worker.chat.stream_guard import StreamTimeouts
from llm_worker.datarefs.delivery import resolve_job
from llm_worker.datarefs.port import DataRefResolver
from llm_worker.metrics import LlmMetrics
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.capabilities import CapabilityTable
from llm_worker.routing.plan import AttemptPlan, Skip
from llm_worker.routing.table import DIRECT_ALIAS, DirectTables, RoutingTable
from llm_worker.tool_loop.loop import ToolLoop

__all__ = ["ChatJob", "ChatService", "LlmMetrics", "Resilience"]

CANCELS_READY_TIMEOUT = 10.0
"""Seconds a request waits at most for the control topic to be read back after a start."""

_SKIP_REASONS = {
    "circuit_open": "circuit open",
    "cooldown": "cooling down after Retry-After",
    "quota": "at its quota",
    "restart": "its stream failed mid-answer",
}


class ChatService:
    """Runs chat requests against the configured deployments.

    Provider failures end in a `failed` event; publishing failures propagate (the
    caller must not commit the request's offset).

    Args:
        resolver: resolves `provider/model` requests and holds the providers.
        metrics: where outcomes are counted.
        capabilities: what each deployment can do (requests needing more skip it).
        timeouts: worker-wide bounds (routes and deployments may override them).
        resilience: breakers, retry policy, quotas, balancing state.
        routing: the initial routing table (None: only `provider/model` requests).
        clock: the clock deadlines and stream bounds are measured on (default: the
            event loop's); waits still take real time.
        tool_loop: runs requests whose tools name MCP servers (None: such requests are
            refused).
        cancels: where cancel events find running requests (None: no cancellation).
        cancels_ready: set once the control topic was read back (the first requests wait for
            it, up to `CANCELS_READY_TIMEOUT`, so a cancel published before a restart still
            applies).
        datarefs: resolves the dataref parts of requests before any deployment is called
            (None: such requests are refused).
        usage: where one usage event per finished request goes (None: nowhere).
        tracer: where provider-call spans go (default: the global tracer provider's).
        response_cache: the exact-match response cache (None: no caching).
        prompt_cache_auto: auto-mode prompt-cache breakpoints for direct `provider/model`
            requests (`LLM_WORKER_PROMPT_CACHE_AUTO`; routes say it themselves).
    """

    def __init__(
        self,
        resolver: ModelResolver,
        metrics: LlmMetrics,
        capabilities: CapabilityTable | None = None,
        timeouts: StreamTimeouts | None = None,
        resilience: Resilience | None = None,
        routing: RoutingTable | None = None,
        clock: Callable[[], float] | None = None,
        tool_loop: ToolLoop | None = None,
        cancels: CancelBoard | None = None,
        cancels_ready: asyncio.Event | None = None,
        datarefs: DataRefResolver | None = None,
        usage: UsageSink | None = None,
        tracer: Tracer | None = None,
        response_cache: ResponseCache | None = None,
        prompt_cache_auto: bool = False,
    ) -> None:
        self._metrics = metrics
        self._cache = response_cache
        self._usage = usage
        self._datarefs = datarefs
        self._tool_loop = tool_loop
        self._cancels = cancels
        self._cancels_ready = cancels_ready
        self._capabilities = capabilities or CapabilityTable({})
        self._timeouts = timeouts or StreamTimeouts()
        self._res = resilience or Resilience()
        self._direct = DirectTables(resolver)
        self.routing = routing
        self._rng = random.Random()
        self._clock = clock
        caller = DeploymentCaller(
            self._res,
            metrics,
            self._timeouts,
            clock,
            tracer or trace.get_tracer("llm_worker"),
            usage=usage,
            prompt_cache_auto=prompt_cache_auto,
        )
        self._attempts = DeploymentAttempts(
            self._res, metrics, caller, self._capabilities, self._remaining
        )

    @property
    def resilience(self) -> Resilience:
        """The shared breakers, quotas and stats."""
        return self._res

    def apply_routing(self, table: RoutingTable) -> None:
        """Serve `table` from now on; requests in flight finish with the table they began with."""
        self.routing = table
        self._res.deployment_quotas.set_limits(table.config.deployment_quotas())
        named, default = table.config.tenant_quotas()
        self._res.tenant_quotas.set_limits(named, default)

    async def execute(self, job: ChatJob) -> None:
        """Execute `job`, publishing its chunks (when streaming) and exactly one terminal event.

        Raises:
            aiokafka.errors.KafkaError: a result event could not be published.
        """
        alias = "unknown"
        operation = operation_of(job.request)
        started = time.monotonic()
        ticket = CacheTicket()
        try:
            state = self._begin(job)
            alias = state.alias
            ready = self._cancels_ready
            if ready is not None and not ready.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), CANCELS_READY_TIMEOUT)
                self._cancels_ready = None  # waited once: a reader that is down delays no more
            work = self._work(state, ticket)
            if self._cancels is not None:
                completed, _ = await self._cancels.run(job.key, work)
            else:
                completed, _ = await work
        except CancelledByRequest as exc:
            error = FerrymanError(
                ErrorCode.CANCELLED, f"cancelled: {exc.reason or 'by request'}", retryable=False
            )
            await job.replies.failed(error.to_info())
            self._finished(job, operation, alias, "cancelled", started)
            return
        except FerrymanError as exc:
            await job.replies.failed(exc.to_info())
            self._finished(job, operation, alias, str(exc.code), started)
            return
        usage = completed.usage
        if job.tenant is not None:
            self._res.tenant_quotas.charge(job.tenant, usage.input_tokens + usage.output_tokens)
        await job.replies.completed(completed)
        if self._cache is not None:
            self._cache.keep(state.job, ticket, completed)
        self._finished(job, operation, alias, "completed", started, ticket.outcome)

    def _finished(
        self,
        job: ChatJob,
        operation: str,
        target: str,
        outcome: str,
        started: float,
        response_cache: Literal["hit", "stored"] | None = None,
    ) -> None:
        """Count a request whose terminal event was published, and record its usage."""
        seconds = time.monotonic() - started
        self._metrics.requests.observe(operation, target, outcome, seconds)
        if self._usage is not None:
            event = usage_event(
                job, operation=operation, target=target, outcome=outcome, seconds=seconds
            )
            if response_cache is not None:
                event = event.model_copy(update={"response_cache": response_cache})
            self._usage.record(event)

    async def _work(self, state: RequestState, ticket: CacheTicket) -> tuple[ChatCompleted, str]:
        """Admit the request's tenant, then serve it: one turn, or a tool loop of turns.

        Raises:
            FerrymanError: the request failed.
        """
        job = state.job
        tenant = job.tenant
        if tenant is not None:
            await self._admit_tenant(state, tenant)
        try:
            job = state.job = await resolve_job(
                self._datarefs, job, state.table, self._remaining(state.deadline)
            )
            if not job.request.mcp_toolsets():
                if self._cache is not None:
                    hit = await self._cache.answer(state, ticket)
                    if hit is not None:
                        return hit, hit.deployment or "response-cache"
                return await self._serve(state, ticket)
            if self._tool_loop is None:
                raise FerrymanError(
                    ErrorCode.INVALID_REQUEST,
                    "this worker is not connected to an MCP catalog; MCP tools cannot be offered",
                    retryable=False,
                )
            return await self._tool_loop.run(job, self._serve_turn)
        finally:
            if tenant is not None:
                self._res.tenant_quotas.release(tenant)

    async def _serve_turn(self, job: ChatJob) -> tuple[ChatCompleted, str]:
        """Serve one model turn of a tool loop (routing, retries and failover as for a request).

        Raises:
            FerrymanError: the turn failed.
        """
        return await self._serve(self._begin(job))

    def _begin(self, job: ChatJob) -> RequestState:
        table = self.routing
        model = job.request.model
        routed = table is not None and model in table.config.routes
        if not routed:
            table = self._direct.get(model)  # raises invalid_request for unknown models
        assert table is not None
        route = table.config.routes[model]
        total = route.timeouts.total or self._timeouts.total
        ends = [t for t in (job.deadline, self._now() + total if total else None) if t]
        plan = AttemptPlan(table.config, model, self._res.stats, self._gate, self._rng)
        state = RequestState(
            job=job,
            table=table,
            plan=plan,
            alias=model if routed else DIRECT_ALIAS,
            deadline=min(ends) if ends else None,
            budget=route.retry.max_attempts or self._res.attempt_budget,
        )
        return state

    def _gate(self, name: str) -> Skip | None:
        res = self._res
        if res.breakers is not None and not res.breakers.allows(name):
            return Skip("circuit_open", math.inf)
        cooling = res.cooldowns.remaining(name)
        if cooling > 0:
            return Skip("cooldown", cooling)
        wait = res.deployment_quotas.try_acquire(name, res.share())
        if wait > 0:
            return Skip("quota", wait)
        return None

    async def _admit_tenant(self, state: RequestState, tenant: str) -> None:
        book = self._res.tenant_quotas
        counted = False
        while (wait := book.try_acquire(tenant, state.job.tenant_share)) > 0:
            if not counted:
                self._metrics.quota_wait({"tenant"})
            remaining = self._remaining(state.deadline)
            if wait == math.inf or remaining <= wait:
                self._quota_rejected("tenant", state)
                raise over_quota_error(f"tenant {tenant!r} is over its quota", wait)
            if not counted:
                counted = state.waiting_announced = True
                await state.job.replies.progress(
                    "waiting_quota",
                    state.job.step or 0,
                    f"the tenant is over its quota for {wait:.1f}s",
                )
            await book.changed(min(wait, remaining))

    async def _serve(
        self, state: RequestState, ticket: CacheTicket | None = None
    ) -> tuple[ChatCompleted, str]:
        plan = state.plan
        while True:
            candidate = plan.next()
            if candidate is None:
                await self._exhausted(state)
                continue
            if state.left is not None and state.left != candidate.name:
                reason = state.last_error.code if state.last_error else "unknown"
                self._metrics.failovers.labels(
                    upstream=deployment_label(state, state.left), reason=reason
                ).inc()
                state.left = None
            result = await self._attempts.attempt(state, candidate)
            if result is not None:
                completed = result.completed.model_copy(
                    update={
                        "deployment": candidate.name,
                        "attempts": list(state.log),
                        "degraded": True if state.degraded else None,
                    }
                )
                if ticket is not None:
                    deployment = candidate.deployment
                    ticket.served = (deployment.provider, deployment.model, deployment.endpoint)
                    ticket.chunks = result.chunks
                return completed, deployment_label(state, candidate.name)

    async def _exhausted(self, state: RequestState) -> None:
        """Nothing can be tried now: wait for a deployment (backpressure), degrade, or fail.

        Raises:
            FerrymanError: nothing will be able to serve before the deadline.
        """
        plan = state.plan
        skipped = dict(plan.skipped)
        wait = plan.reopen()
        remaining = self._remaining(state.deadline)
        if wait < remaining and state.calls.total() < state.budget:
            reasons = {s.reason for s in skipped.values() if s.retry_in == wait}
            if waits := reasons - {"restart"}:  # a restart's backoff is no quota wait
                why = "/".join(sorted(reasons))
                self._metrics.quota_wait(waits)
                if not state.waiting_announced:
                    state.waiting_announced = True
                    await state.job.replies.progress(
                        "waiting_quota", state.job.step or 0, f"every deployment waits ({why})"
                    )
            await self._res.deployment_quotas.changed(wait)
            return
        route = plan.config.routes[plan.alias]
        if route.degraded is not None and not state.degraded:
            state.degraded = True
            plan.divert(route.degraded)
            return
        if state.last_error is not None:
            raise state.last_error
        if skipped and all(skip.reason == "quota" for skip in skipped.values()):
            self._quota_rejected("deployment", state)
            raise over_quota_error(f"every deployment of {plan.alias!r} is at its quota", wait)
        why = "; ".join(
            f"{name}: {_SKIP_REASONS.get(skip.reason, skip.reason)}"
            for name, skip in sorted(skipped.items())
        )
        raise FerrymanError(
            ErrorCode.UNAVAILABLE,
            f"no deployment of {plan.alias!r} can serve before the request's deadline"
            f" ({why or 'none left to try'})",
            retryable=True,
        )

    def _quota_rejected(self, scope: str, state: RequestState) -> None:
        """Count a request failed by one of the worker's own quotas (not a provider's)."""
        metrics = self._metrics
        metrics.quota_rejections.rejected(scope, metrics.tenants(state.job.tenant))

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def _remaining(self, deadline: float | None) -> float:
        """Seconds until `deadline` (`math.inf` for none)."""
        return math.inf if deadline is None else deadline - self._now()
