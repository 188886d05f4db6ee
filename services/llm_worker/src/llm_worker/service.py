"""Executes one chat request: resolve the model, stream it, publish chunks and the result."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from llm_worker.capabilities import CapabilityTable
from llm_worker.ports import ChatModel
from llm_worker.providers import ModelRouter
from llm_worker.replies import ReplyStream
from llm_worker.routing import RoutingConfig
from llm_worker.stream_guard import StreamTimeouts, guard_stream
from llm_worker.streaming import CompletionBuilder, TextDelta, ToolCallFragment
from shared.contracts import (
    ChatChunk,
    ChatCompleted,
    ChatRequest,
    ChunkDelta,
    ErrorCode,
    FerrymanError,
    Latency,
    ToolCallDelta,
)
from shared.contracts.llm import AttemptInfo
from shared.runtime.resilience import Breakers, RetryPolicy

logger = logging.getLogger(__name__)


class LlmMetrics:
    """Request outcomes and latencies, labelled by provider (never by request)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "llm_worker_requests_total",
            "Chat requests by provider and outcome (completed, or the failure code).",
            ["provider", "outcome"],
            registry=registry,
        )
        self.chunks = Counter(
            "llm_worker_stream_chunks_total",
            "Chunk events published.",
            ["provider"],
            registry=registry,
        )
        self.first_token = Histogram(
            "llm_worker_time_to_first_token_seconds",
            "From the start of work to the first streamed token.",
            ["provider"],
            registry=registry,
        )
        self.duration = Histogram(
            "llm_worker_request_duration_seconds",
            "From the start of work to the terminal event.",
            ["provider"],
            registry=registry,
        )
        self.retries = Counter(
            "llm_worker_retries_total",
            "Provider calls retried after a retryable failure (before any chunk was published).",
            ["provider"],
            registry=registry,
        )
        self.failovers = Counter(
            "llm_worker_failovers_total",
            "Requests moved to another deployment after a retryable failure.",
            ["provider"],
            registry=registry,
        )
        self.tokens = Counter(
            "llm_worker_tokens_total",
            "Tokens reported by providers.",
            ["provider", "direction"],
            registry=registry,
        )


@dataclass(frozen=True)
class ChatJob:
    """One request to execute and where its results go."""

    request: ChatRequest
    replies: ReplyStream
    deadline: float | None = None
    """`loop.time()` by which the answer must be complete (the request's expiry), if any."""


class ChatService:
    """Runs chat requests against the configured providers.

    Provider failures end in a `failed` event; publishing failures propagate
    (the caller must not commit the request's offset).

    Args:
        router: resolves the request's `model`.
        metrics: where outcomes are counted.
        capabilities: what each deployment can do (requests needing more fail early).
        timeouts: bounds on every provider call (first token, idle gaps, total).
        breakers: one circuit breaker per `provider/model`; an open one fails fast.
        retry: attempts on the same `provider/model` for retryable failures that happen
            before any chunk was published (waiting at least the upstream's Retry-After).
        routing: routes (alias → weighted deployments + fallbacks); a retryable failure
            before the first chunk fails over to the next deployment.
    """

    def __init__(
        self,
        router: ModelRouter,
        metrics: LlmMetrics,
        capabilities: CapabilityTable | None = None,
        timeouts: StreamTimeouts | None = None,
        breakers: Breakers | None = None,
        retry: RetryPolicy | None = None,
        routing: RoutingConfig | None = None,
    ) -> None:
        self._router = router
        self._metrics = metrics
        self._capabilities = capabilities or CapabilityTable({})
        self._timeouts = timeouts or StreamTimeouts()
        self._breakers = breakers
        self._retry = retry or RetryPolicy(max_attempts=1)
        self._routing = routing

    async def execute(self, job: ChatJob) -> None:
        """Execute `job`, publishing its chunks (when streaming) and exactly one terminal event.

        Raises:
            aiokafka.errors.KafkaError: a result event could not be published.
        """
        started = time.monotonic()
        provider_name = "unknown"
        loop = asyncio.get_running_loop()
        budget = self._timeouts.total
        ends = [t for t in (job.deadline, loop.time() + budget if budget else None) if t]
        job = dataclasses.replace(job, deadline=min(ends) if ends else None)
        attempts: list[AttemptInfo] = []
        try:
            last: FerrymanError | None = None
            for key, provider, model in self._candidates(job.request):
                provider_name = provider.provider
                try:
                    self._capabilities.check(job.request, provider.provider, model)
                except FerrymanError as exc:
                    last = exc  # route around a deployment that cannot serve this request
                    continue
                try:
                    completed = await self._attempts(job, provider, model, started, key, attempts)
                    completed = completed.model_copy(
                        update={"deployment": key, "attempts": list(attempts)}
                    )
                    break
                except FerrymanError as exc:
                    last = exc
                    if not exc.retryable or job.replies.chunk_count > 0:
                        raise
                    self._metrics.failovers.labels(provider=provider.provider).inc()
                    logger.info("failing over from %s after %s", key, exc.code.value)
            else:
                raise last or FerrymanError(
                    ErrorCode.UNAVAILABLE,
                    f"no deployment of {job.request.model!r} is available (all circuits open)",
                    retryable=True,
                )
        except FerrymanError as exc:
            if exc.provider is None and provider_name != "unknown":
                exc.provider = provider_name
            await job.replies.failed(exc.to_info())
            self._metrics.requests.labels(provider=provider_name, outcome=exc.code.value).inc()
            return
        await job.replies.completed(completed)
        self._metrics.requests.labels(provider=provider_name, outcome="completed").inc()
        self._metrics.duration.labels(provider=provider_name).observe(time.monotonic() - started)
        usage = completed.usage
        self._metrics.tokens.labels(provider=provider_name, direction="input").inc(
            usage.input_tokens
        )
        self._metrics.tokens.labels(provider=provider_name, direction="output").inc(
            usage.output_tokens
        )

    def _candidates(self, request: ChatRequest) -> Iterator[tuple[str, ChatModel, str]]:
        """(breaker key, provider, model) to try, best first.

        Raises:
            FerrymanError: `invalid_request` when the model names nothing configured.
        """
        routing = self._routing
        if routing is None or request.model not in routing.routes:
            provider, model = self._router.resolve(request.model)
            yield f"{provider.provider}/{model}", provider, model
            return

        def allowed(name: str) -> bool:
            return self._breakers is None or self._breakers.get(name).allows()

        for name, deployment in routing.candidates(request.model, allowed=allowed):
            provider, model = self._router.resolve(f"{deployment.provider}/{deployment.model}")
            yield name, provider, model

    async def _attempts(
        self,
        job: ChatJob,
        provider: ChatModel,
        model: str,
        started: float,
        key: str,
        log: list[AttemptInfo],
    ) -> ChatCompleted:
        loop = asyncio.get_running_loop()
        breaker = self._breakers.get(key) if self._breakers else None
        attempt = 1
        while True:
            began = loop.time()
            try:
                if breaker is not None and not breaker.allows():
                    raise FerrymanError(
                        ErrorCode.UNAVAILABLE,
                        f"circuit open for {key}",
                        retryable=True,
                        provider=provider.provider,
                    )
                async with breaker.guard() if breaker else contextlib.nullcontext():
                    result = await self._attempt(job, provider, model, started)
                log.append(_attempt_info(key, began, loop.time()))
                return result
            except FerrymanError as exc:
                log.append(_attempt_info(key, began, loop.time(), exc.code))
                delay = self._retry.delay(attempt, exc.retry_after)
                retry = (
                    exc.retryable
                    and attempt < self._retry.max_attempts
                    and job.replies.chunk_count == 0  # never splice two answers together
                    and (breaker is None or breaker.allows())
                    and (job.deadline is None or loop.time() + delay < job.deadline)
                )
                if not retry:
                    raise
                self._metrics.retries.labels(provider=provider.provider).inc()
                logger.info(
                    "retrying %s/%s in %.2fs after %s (attempt %d)",
                    provider.provider, model, delay, exc.code.value, attempt,
                )  # fmt: skip
                await asyncio.sleep(delay)
                attempt += 1

    async def _attempt(
        self, job: ChatJob, provider: ChatModel, model: str, started: float
    ) -> ChatCompleted:
        if job.request.stream:
            return await self._stream(job, provider, model, started)
        return await self._generate(job, provider, model, started)

    async def _generate(
        self, job: ChatJob, provider: ChatModel, model: str, started: float
    ) -> ChatCompleted:
        try:
            async with asyncio.timeout_at(job.deadline):
                result = await provider.generate(job.request, model)
        except TimeoutError as exc:
            raise FerrymanError(
                ErrorCode.TIMEOUT,
                f"{provider.provider} did not answer within the request's time budget",
                retryable=True,
                provider=provider.provider,
            ) from exc
        return ChatCompleted(
            content=result.content,
            tool_calls=result.tool_calls,
            finish_reason=result.finish_reason,
            usage=result.usage,
            provider=provider.provider,
            model=result.model or model,
            chunk_count=0,
            latency_ms=Latency(first_token=None, total=_ms_since(started)),
            filtered_categories=result.filtered_categories,
        )

    async def _stream(
        self, job: ChatJob, provider: ChatModel, model: str, started: float
    ) -> ChatCompleted:
        builder = CompletionBuilder()
        first_token: float | None = None
        index = 0
        events = guard_stream(
            provider.stream(job.request, model),
            dataclasses.replace(self._timeouts, total=None),  # job.deadline carries the budget
            provider=provider.provider,
            deadline=job.deadline,
        )
        async for event in events:
            builder.add(event)
            if isinstance(event, TextDelta):
                delta = ChunkDelta(content=event.text)
            elif isinstance(event, ToolCallFragment):
                fragment = ToolCallDelta(
                    index=event.index, id=event.id, name=event.name, arguments=event.arguments
                )
                delta = ChunkDelta(tool_calls=[fragment])
            else:
                continue
            if first_token is None:
                first_token = _ms_since(started)
                self._metrics.first_token.labels(provider=provider.provider).observe(
                    first_token / 1000.0
                )
            await job.replies.chunk(ChatChunk(index=index, delta=delta))
            index += 1
        result = builder.result()
        self._metrics.chunks.labels(provider=provider.provider).inc(index)
        return ChatCompleted(
            content=result.content,
            tool_calls=result.tool_calls,
            finish_reason=result.finish_reason,
            usage=result.usage,
            provider=provider.provider,
            model=result.model or model,
            chunk_count=index,
            latency_ms=Latency(first_token=first_token, total=_ms_since(started)),
            filtered_categories=result.filtered_categories,
        )


def _attempt_info(
    key: str, began: float, ended: float, error: ErrorCode | None = None
) -> AttemptInfo:
    return AttemptInfo(
        deployment=key,
        outcome="failed" if error else "completed",
        error_code=error,
        duration_ms=round((ended - began) * 1000.0, 3),
    )


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000.0, 3)
