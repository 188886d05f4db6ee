"""What one request does at one deployment: call it, retry it, or leave it.

`ChatService` picks the deployment (routing, balancing, waiting, failing over);
`DeploymentAttempts` works one candidate: it checks the deployment can serve the request,
keeps within the request's attempt budget and deadline, announces a restarted stream, calls
it through `DeploymentCaller`, and after a failure decides with `retry_rules` whether to
retry it (after a backoff), come back to it later, move to a larger-context route, or fail
the request (see docs/llm-routing.md, "Retries and failover").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ferryman.contracts import ChatRequest, ChatRestarted, ErrorCode, FerrymanError
from llm_worker.chat.calls import CallResult
from llm_worker.chat.deployment_call import DeploymentCaller, deployment_group, deployment_label
from llm_worker.chat.job import RequestState, Resilience, budget_error, deadline_error
from llm_worker.chat.retry_rules import Allowance, FailedCall, next_step
from llm_worker.metrics import LlmMetrics
from llm_worker.routing.capabilities import CapabilityTable
from llm_worker.routing.plan import Candidate, Skip
from llm_worker.routing.table import DIRECT_ALIAS

# The retry and failover lines keep the logger they had before this module was split off.
logger = logging.getLogger("llm_worker.chat.service")


class DeploymentAttempts:
    """Calls one candidate deployment of a request, retrying it when that is right.

    Args:
        resilience: breakers, retry policy, quotas and cooldowns (shared with the service).
        metrics: where retries and restarts are counted.
        caller: makes each call.
        capabilities: what each deployment can do (requests needing more skip it).
        remaining: seconds left until a request's deadline (`math.inf` for none).
    """

    def __init__(
        self,
        resilience: Resilience,
        metrics: LlmMetrics,
        caller: DeploymentCaller,
        capabilities: CapabilityTable,
        remaining: Callable[[float | None], float],
    ) -> None:
        self._res = resilience
        self._metrics = metrics
        self._caller = caller
        self._capabilities = capabilities
        self._remaining = remaining

    async def attempt(self, state: RequestState, candidate: Candidate) -> CallResult | None:
        """Call `candidate` (retrying it when that is right); None means fail over.

        The gate already holds one quota slot of the deployment for the first call.

        Raises:
            FerrymanError: the request must fail now.
        """
        res = self._res
        name = candidate.name
        label = deployment_label(state, name)
        per_deployment = candidate.route_config.retry.per_deployment or res.retry.max_attempts
        held = True
        try:
            self._check_capabilities(state.job.request, candidate)
        except FerrymanError as exc:
            res.deployment_quotas.release(name)
            state.last_error = exc  # route around a deployment that cannot serve this request
            return None
        while True:
            if not held:
                wait = res.deployment_quotas.try_acquire(name, res.share())
                if wait > 0:
                    state.plan.skipped[name] = Skip("quota", wait)
                    return None
            held = False
            if state.calls.total() >= state.budget or self._remaining(state.deadline) <= 0:
                # Outside the `try`: a spent budget or deadline ends the request, it is no
                # failure of this deployment to retry (that would spin until the deadline).
                res.deployment_quotas.release(name)
                if state.calls.total() >= state.budget:
                    raise state.last_error or budget_error(state)
                raise deadline_error(state, name)
            try:
                await self._announce_restart(state, candidate)
                if state.calls[name]:
                    self._metrics.retries.labels(upstream=label).inc()
                state.calls[name] += 1
                return await self._caller.call(state, candidate)
            except FerrymanError as failure:
                state.last_error = exc = failure
                if not self._may_continue(state, candidate, exc):
                    raise
            finally:
                res.deployment_quotas.release(name)
            if exc.retry_after is not None:
                # For every request of the replica.
                res.cooldowns.hold(name, exc.retry_after, deployment_group(state, name))
            step = next_step(
                FailedCall(exc, state.calls[name], published=state.progress.published > 0),
                Allowance(
                    per_deployment=per_deployment,
                    circuit_closed=res.breakers is None or res.breakers.allows(name),
                    remaining=self._remaining(state.deadline),
                    wait_retry_after=candidate.route_config.retry.wait_retry_after,
                ),
                lambda calls: res.retry.delay(calls, None),
            )
            if step.retry_in is not None:
                calls = state.calls[name]
                logger.info(
                    "retrying %s in %.2fs after %s (call %d)", name, step.retry_in, exc.code, calls
                )
                await asyncio.sleep(step.retry_in)
                continue
            if step.come_back is not None:
                state.plan.skipped[name] = step.come_back  # tried again only by `_exhausted`
            state.left = name
            logger.info("leaving %s after %s", name, exc.code)
            return None

    def _check_capabilities(self, request: ChatRequest, candidate: Candidate) -> None:
        deployment = candidate.deployment
        if deployment.capabilities is not None:
            self._capabilities.check_against(request, deployment.capabilities, deployment.target)
        else:
            self._capabilities.check(request, deployment.provider, deployment.model)

    def _may_continue(self, state: RequestState, candidate: Candidate, exc: FerrymanError) -> bool:
        """Whether the request may go on after `exc` (False: it fails with `exc`)."""
        route = candidate.route_config
        if state.progress.published and not self._restarts(state, candidate):
            return False  # fail cleanly rather than splice two answers together
        if exc.code is ErrorCode.CONTEXT_LENGTH:
            state.plan.exclude(candidate.name)
            target = route.larger_context
            if target is None or state.plan.alias == target:
                return False
            state.plan.divert(target)
            return True
        if exc.code is ErrorCode.CONTENT_FILTER:
            return route.content_filter == "fallback"
        return exc.retryable

    def _restarts(self, state: RequestState, candidate: Candidate) -> bool:
        if state.alias == DIRECT_ALIAS:
            return self._res.restart_streams
        return candidate.route_config.restart_streams

    async def _announce_restart(self, state: RequestState, candidate: Candidate) -> None:
        progress = state.progress
        if not progress.published:
            return
        error = state.last_error
        assert error is not None
        await state.job.replies.restarted(
            ChatRestarted(
                attempt=progress.attempt + 1,
                discarded_chunks=progress.published,
                reason=error.to_info(),
                deployment=candidate.name,
                step=state.job.step,
            )
        )
        self._metrics.restarts.labels(upstream=deployment_label(state, candidate.name)).inc()
        progress.attempt += 1
        progress.published = 0
