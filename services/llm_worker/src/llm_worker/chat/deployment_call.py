"""One call of one request to one deployment, and the bookkeeping around it.

`ChatService` decides which deployment to call and what happens after a failure;
`DeploymentCaller` makes the call: it applies the deployment's stream bounds and own
deadline, runs it under the deployment's circuit breaker, feeds the balancing stats,
charges the deployment's token quota, and logs the attempt (request log and metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from ferryman.contracts import ErrorCode, FerrymanError
from ferryman.contracts.llm import AttemptInfo
from llm_worker.chat.calls import Call, CallResult, run_call
from llm_worker.chat.job import RequestState, Resilience
from llm_worker.chat.stream_guard import StreamTimeouts
from llm_worker.metrics import LlmMetrics
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
        metrics: where attempts are counted.
        timeouts: worker-wide stream bounds (routes and deployments may override them).
        clock: the clock deadlines are measured on (default: the event loop's).
    """

    def __init__(
        self,
        resilience: Resilience,
        metrics: LlmMetrics,
        timeouts: StreamTimeouts,
        clock: Callable[[], float] | None,
    ) -> None:
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
        call = Call(client, deployment.model, label, call_timeouts, deadline, self._clock)
        stats = res.stats.get(label)  # direct requests: one board entry per provider
        group = deployment_group(state, name)
        breaker = res.breakers.get(name, group) if res.breakers is not None else None
        began = time.monotonic()
        stats.started()
        try:
            async with breaker.guard() if breaker is not None else contextlib.nullcontext():
                result = await run_call(
                    call, state.job.request, state.job.replies, state.progress,
                    self._metrics, state.started, state.job.step,
                )  # fmt: skip
        except FerrymanError as exc:
            if exc.upstream is None:
                exc.upstream = client.provider
            stats.finished(failed=exc.retryable)
            self._record(state, name, label, began, exc.code)
            raise
        except BaseException:
            stats.finished(failed=False)
            raise
        stats.finished(failed=False, latency=result.first_token)
        usage = result.completed.usage
        res.deployment_quotas.charge(name, usage.input_tokens + usage.output_tokens)
        self._record(state, name, label, began, None)
        return result

    def _record(
        self, state: RequestState, name: str, label: str, began: float, error: ErrorCode | None
    ) -> None:
        state.log.append(
            AttemptInfo(
                deployment=name,
                outcome="failed" if error else "completed",
                error_code=error,
                duration_ms=round((time.monotonic() - began) * 1000.0, 3),
            )
        )
        self._metrics.attempts.labels(deployment=label, outcome=error or "completed").inc()

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()
