"""Circuit breakers and retries read `retryable` and nothing else."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman_runtime.resilience import Breaker, Breakers, RetryPolicy
from llm_worker.chat.retry_rules import LEAVE, Allowance, FailedCall, NextStep, next_step
from llm_worker.chat.service import ChatJob, ChatService, LlmMetrics, Resilience
from llm_worker.chat.streaming import Completion, Finish, StreamEvent, TextDelta, UsageReport, fold
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.plan import Skip
from tests.unit.llm_worker.recording_replies import RecordingReplies


def _retryable() -> FerrymanError:
    return FerrymanError(ErrorCode.UNAVAILABLE, "down", retryable=True)


async def _call(breaker: Breaker, error: BaseException | None = None) -> None:
    async with breaker.guard():
        if error is not None:
            raise error


def test_retry_delays_use_full_jitter_and_never_undercut_retry_after() -> None:
    policy, rng = RetryPolicy(base_delay=0.5, max_delay=8.0), random.Random(7)

    delays = [policy.delay(attempt, None, rng) for attempt in (1, 2, 3, 10) for _ in range(50)]
    honoured = policy.delay(1, 2.0, rng)

    assert all(0 <= d <= 8.0 for d in delays)
    assert max(delays[:50]) <= 0.5
    assert honoured >= 2.0


async def test_the_circuit_opens_after_retryable_failures_only_and_then_fails_fast() -> None:
    breaker = Breaker("p/m", fail_max=2, reset_timeout=60)

    for _ in range(3):
        with pytest.raises(FerrymanError):
            await _call(breaker, FerrymanError(ErrorCode.INVALID_REQUEST, "bad", retryable=False))
    assert breaker.state == "closed"
    for _ in range(2):
        with pytest.raises(FerrymanError):
            await _call(breaker, _retryable())

    assert breaker.state == "open"
    assert not breaker.allows()
    with pytest.raises(FerrymanError) as failure:
        await _call(breaker)
    assert "circuit open" in failure.value.message
    assert failure.value.retryable


async def test_half_open_lets_exactly_one_probe_through_and_a_success_closes_it() -> None:
    now = [100.0]
    breaker = Breaker("p/m", fail_max=1, reset_timeout=5.0, clock=lambda: now[0])
    with pytest.raises(FerrymanError):
        await _call(breaker, _retryable())
    now[0] = 104.99
    assert not breaker.allows()
    now[0] = 105.0  # the reset timeout on the breaker's clock; the wall clock has not moved
    assert breaker.allows()
    probe_started, release = asyncio.Event(), asyncio.Event()

    async def slow_probe() -> None:
        async with breaker.guard():
            probe_started.set()
            await release.wait()

    probe = asyncio.create_task(slow_probe())
    await probe_started.wait()
    assert not breaker.allows()
    with pytest.raises(FerrymanError):
        await _call(breaker)
    release.set()
    await probe

    assert breaker.state == "closed"
    assert breaker.allows()


async def test_cancellation_does_not_count_as_a_failure() -> None:
    breaker = Breaker("p/m", fail_max=1, reset_timeout=60)

    with pytest.raises(asyncio.CancelledError):
        await _call(breaker, asyncio.CancelledError())

    assert breaker.state == "closed"


class FlakyModel:
    """Fails the first `failures` calls with `error`, or mid-stream after one token."""

    provider = "flaky"

    def __init__(self, failures: int, error: FerrymanError, *, after_token: bool = False) -> None:
        self.failures, self.error, self.after_token, self.calls = failures, error, after_token, 0

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        if self.calls <= self.failures:
            if self.after_token:
                yield TextDelta(text="partial")
            raise self.error
        yield TextDelta(text="fine")
        yield UsageReport(input_tokens=1, output_tokens=1)
        yield Finish(reason="stop")

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        return await fold(self.stream(request, model))

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None


async def _execute(
    model: FlakyModel, attempts: int = 3, *, restart: bool = True
) -> tuple[list[str], str]:
    registry, replies = CollectorRegistry(), RecordingReplies()
    service = ChatService(
        ModelResolver({"flaky": model}, {}),
        LlmMetrics(registry),
        resilience=Resilience(
            breakers=Breakers(registry, fail_max=10, reset_timeout=30),
            retry=RetryPolicy(max_attempts=attempts, base_delay=0.001, max_delay=0.002),
            restart_streams=restart,
        ),
    )
    request = ChatRequest.model_validate(
        {"model": "flaky/m", "messages": [{"role": "user", "content": "hi"}]}
    )
    await service.execute(ChatJob(request=request, replies=replies))  # type: ignore[arg-type]
    last = json.dumps(replies.events[-1][1], separators=(",", ":")) if replies.events else ""
    return replies.types(), last


async def test_a_retryable_failure_before_any_chunk_is_retried_and_succeeds() -> None:
    model = FlakyModel(2, FerrymanError(ErrorCode.RATE_LIMITED, "slow down", retry_after=0.01))

    types, last = await _execute(model)

    assert model.calls == 3
    assert types[-1] == "ferryman.llm.chat.completed"
    assert '"content":"fine"' in last


async def test_non_retryable_failures_and_unrestartable_mid_stream_failures_end_the_request() -> (
    None
):
    invalid = FlakyModel(1, FerrymanError(ErrorCode.CONTEXT_LENGTH, "too long", retryable=False))
    mid_stream = FlakyModel(1, _retryable(), after_token=True)

    invalid_types, _ = await _execute(invalid)
    mid_types, _ = await _execute(mid_stream, restart=False)

    assert invalid.calls == 1
    assert invalid_types == ["ferryman.llm.chat.failed"]
    assert mid_stream.calls == 1
    assert mid_types == ["ferryman.llm.chat.chunk", "ferryman.llm.chat.failed"]


async def test_a_stream_failing_after_a_chunk_is_restarted_and_announced() -> None:
    mid_stream = FlakyModel(1, _retryable(), after_token=True)

    types, last = await _execute(mid_stream)

    assert mid_stream.calls == 2
    assert types == [
        "ferryman.llm.chat.chunk",
        "ferryman.llm.chat.restarted",
        "ferryman.llm.chat.chunk",
        "ferryman.llm.chat.completed",
    ]
    assert '"content":"fine"' in last
    assert '"stream_attempt":2' in last


async def test_attempts_are_bounded() -> None:
    model = FlakyModel(10, _retryable())

    types, _ = await _execute(model, attempts=3)

    assert model.calls == 3
    assert types == ["ferryman.llm.chat.failed"]


def _failed(
    code: ErrorCode = ErrorCode.UNAVAILABLE,
    *,
    retry_after: float | None = None,
    calls: int = 1,
    published: bool = False,
    retryable: bool | None = None,
) -> FailedCall:
    error = FerrymanError(code, "x", retryable=retryable, retry_after=retry_after)
    return FailedCall(error, calls_here=calls, published=published)


def _allowed(
    *, remaining: float = math.inf, closed: bool = True, wait: float | None = None
) -> Allowance:
    return Allowance(
        per_deployment=3, circuit_closed=closed, remaining=remaining, wait_retry_after=wait
    )


@pytest.mark.parametrize(
    ("failure", "allowed", "expected"),
    [
        (_failed(ErrorCode.TIMEOUT), _allowed(), LEAVE),
        (_failed(ErrorCode.AUTH), _allowed(), LEAVE),
        (_failed(retryable=False), _allowed(), LEAVE),
        (_failed(calls=3), _allowed(), LEAVE),
        (_failed(), _allowed(), NextStep(retry_in=0.25)),
        (_failed(calls=2), _allowed(remaining=0.5), LEAVE),
        (_failed(), _allowed(closed=False), LEAVE),
        (_failed(published=True), _allowed(), NextStep(come_back=Skip("restart", 0.25))),
        (_failed(ErrorCode.TIMEOUT, published=True), _allowed(), LEAVE),
        (_failed(retry_after=1.0), _allowed(), NextStep(come_back=Skip("cooldown", 1.0))),
        (_failed(retry_after=1.0), _allowed(wait=2.0), NextStep(retry_in=1.0)),
        (_failed(retry_after=2.0), _allowed(wait=2.0), NextStep(retry_in=2.0)),
        (
            _failed(retry_after=3.0),
            _allowed(wait=2.0),
            NextStep(come_back=Skip("cooldown", 3.0)),
        ),
        (
            _failed(retry_after=1.0),
            _allowed(wait=2.0, remaining=1.0),
            NextStep(come_back=Skip("cooldown", 1.0)),
        ),
        (
            _failed(retry_after=1.0),
            _allowed(wait=2.0, closed=False),
            NextStep(come_back=Skip("cooldown", 1.0)),
        ),
        (_failed(retry_after=1.0, calls=3), _allowed(wait=2.0), LEAVE),
    ],
    ids=[
        "timeout-never-again",
        "not-retryable-code",
        "not-retryable-flag",
        "per-deployment-spent",
        "backoff",
        "backoff-past-the-deadline",
        "circuit-open",
        "mid-stream-restarts-elsewhere-first",
        "mid-stream-timeout",
        "retry-after-fails-over",
        "short-retry-after-waited-out",
        "retry-after-at-the-threshold",
        "retry-after-over-the-threshold",
        "retry-after-past-the-deadline",
        "retry-after-circuit-open",
        "retry-after-per-deployment-spent",
    ],
)
def test_what_a_request_does_with_a_deployment_after_a_failed_call(
    failure: FailedCall, allowed: Allowance, expected: NextStep
) -> None:
    assert next_step(failure, allowed, lambda calls: 0.25 * calls) == expected
