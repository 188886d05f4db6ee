"""One call of one request to one deployment, and the bookkeeping around it.

`ChatService` decides which deployment to call and what happens after a failure;
`DeploymentCaller` makes the call: it applies the deployment's stream bounds and own
deadline, runs it under the deployment's circuit breaker inside a `chat {model}` span,
feeds the balancing stats, charges the deployment's token quota, and logs the attempt
(request log, GenAI metrics, the request's usage tally).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from opentelemetry.trace import Tracer

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.llm import AttemptInfo
from llm_worker.caching.prompt_prep import prepare_request
from llm_worker.chat.accounting import UsageSink
from llm_worker.chat.call_telemetry import CallLabels, ObservedCall, genai_provider, server_address
from llm_worker.chat.calls import Call, CallResult, run_call
from llm_worker.chat.job import RequestState, Resilience
from llm_worker.chat.stream_guard import StreamTimeouts
from llm_worker.metrics import LlmMetrics
from llm_worker.providers.call_context import CallContext, call_context
from llm_worker.routing.config import RoutePromptCache
from llm_worker.routing.plan import Candidate
from llm_worker.routing.table import DIRECT_ALIAS


def deployment_group(state: RequestState, name: str) -> str | None:
    """`provider/*` for a direct request's deployment (named by the producer, so its
    per-deployment state is bounded), None for a configured one."""
    if state.alias == DIRECT_ALIAS:
        return name.partition("/")[0] + "/*"
    return None


def deployment_label(state: RequestState, name: str) -> str:
    """The metrics label of deployment `name` (direct requests: `provider/*`)."""
    return deployment_group(state, name) or name


class DeploymentCaller:
    """Calls deployments for `ChatService`, one call at a time per request.

    Args:
        resilience: breakers, quotas and stats shared with the service.
        metrics: where calls are measured.
        timeouts: worker-wide stream bounds (routes and deployments may override them).
        clock: the clock deadlines are measured on (default: the event loop's).
        tracer: where each call's CLIENT span goes.
        usage: where usage events made by adapters later go (`CallContext.usage`).
        prompt_cache_auto: auto-mode prompt-cache breakpoints for direct `provider/model`
            requests (routes say it in their `prompt_cache`).
    """

    def __init__(
        self,
        resilience: Resilience,
        metrics: LlmMetrics,
        timeouts: StreamTimeouts,
        clock: Callable[[], float] | None,
        tracer: Tracer,
        usage: UsageSink | None = None,
        prompt_cache_auto: bool = False,
    ) -> None:
        self._usage = usage
        self._direct_prompt_cache = RoutePromptCache(auto=prompt_cache_auto)
        self._tracer = tracer
        self._res = resilience
        self._metrics = metrics
        self._timeouts = timeouts
        self._clock = clock

    async def call(self, state: RequestState, candidate: Candidate) -> CallResult:
        """Call `candidate` once for `state`'s request and record the attempt.

        Raises:
            FerrymanError: the call failed (its `upstream` set to the provider if unset).
        """
        res = self._res
        client = state.table.clients[candidate.name]
        name = candidate.name
        label = deployment_label(state, name)
        deployment, route = candidate.deployment, candidate.route_config
        call_timeouts = StreamTimeouts(
            first_token=deployment.timeouts.first_token
            or route.timeouts.first_token
            or self._timeouts.first_token,
            idle=deployment.timeouts.stream_idle
            or route.timeouts.stream_idle
            or self._timeouts.idle,
            total=None,
        )
        deadline = state.deadline
        if deployment.timeouts.total is not None:
            own = self._now() + deployment.timeouts.total
            deadline = own if deadline is None else min(deadline, own)
        labels = CallLabels(
            provider=genai_provider(deployment.provider),
            model=self._metrics.model_label(
                deployment.provider, deployment.model, direct=state.alias == DIRECT_ALIAS
            ),
            upstream=label,
        )
        call = Call(client, deployment.model, labels, call_timeouts, deadline, self._clock)
        stats = res.stats.get(label)  # direct requests: one board entry per provider
        group = deployment_group(state, name)
        breaker = res.breakers.get(name, group) if res.breakers is not None else None
        began = time.monotonic()
        stats.started()
        address = server_address(client, deployment.model)
        job = state.job
        request = prepare_request(
            job.request,
            tenant=job.tenant,
            deployment=deployment,
            route=self._direct_prompt_cache if state.alias == DIRECT_ALIAS else route.prompt_cache,
        )
        context = CallContext(
            job.tenant,
            job.key[1],
            self._usage,
            call_timeouts.first_token,
            deployment.prompt_cache.min_tokens,
        )
        try:
            with ObservedCall(
                self._tracer, self._metrics, labels, deployment.model, address
            ) as seen:
                async with breaker.guard() if breaker is not None else contextlib.nullcontext():
                    with call_context(context):
                        result = await run_call(
                            call, request, job.replies, state.progress,
                            self._metrics, state.started, job.step, record=state.record,
                        )  # fmt: skip
                seen.completed(result.completed)
        except FerrymanError as exc:
            if exc.upstream is None:
                exc.upstream = client.provider
            stats.finished(failed=exc.retryable)
            self._record(state, name, began, exc.code)
            raise
        except BaseException:
            stats.finished(failed=False)
            raise
        stats.finished(failed=False, latency=result.first_token)
        completed = result.completed
        usage = completed.usage
        res.deployment_quotas.charge(name, usage.input_tokens + usage.output_tokens)
        state.job.tally.answered(f"{completed.provider}/{completed.model}", usage)
        self._record(state, name, began, None)
        return result

    def _record(
        self, state: RequestState, name: str, began: float, error: ErrorCode | None
    ) -> None:
        state.log.append(
            AttemptInfo(
                deployment=name,
                outcome="failed" if error else "completed",
                error_code=error,
                duration_ms=round((time.monotonic() - began) * 1000.0, 3),
            )
        )

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()
