"""The fault matrix: every upstream fault, through the real OpenAI SDK adapter and `ChatService`.

Each test routes requests to deployments that are models of the in-process fake OpenAI
server (one scenario per model) and checks the terminal event, how many calls each
deployment received, and how long the request took (time bounds are the behaviour here:
cooldowns, backoff, timeouts). Every test runs on virtual time (`tests.virtual_time`), and
every clock involved is the loop's, so those bounds are exact and hold on a loaded machine.
Each test also records one line for the issue's closing note, written to
`fault_matrix.txt` when the module ends (see `tests.notes` for where).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ferryman.contracts import (
    LLM_CHAT_CHUNK,
    LLM_CHAT_COMPLETED,
    LLM_CHAT_FAILED,
    LLM_CHAT_PROGRESS,
    LLM_CHAT_RESTARTED,
    ChatRequest,
)
from ferryman_runtime.resilience import Breakers, RetryPolicy
from ferryman_runtime.upstreams.cooldowns import Cooldowns
from ferryman_runtime.upstreams.quotas import QuotaBook
from ferryman_runtime.upstreams.stats import StatsBoard
from llm_worker.chat.service import ChatJob, ChatService, LlmMetrics, Resilience
from llm_worker.chat.stream_guard import StreamTimeouts
from llm_worker.providers.openai import OpenAIChatModel, create_client
from llm_worker.providers.port import ChatModel
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.config import RoutingConfig
from llm_worker.routing.table import build_table
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.notes import note_path
from tests.unit.llm_worker.recording_replies import RecordingReplies
from tests.virtual_time import on_virtual_time

FIRST_TOKEN = 0.5
IDLE = 0.5
AT_ONCE = 0.001
"""Virtual seconds below which no timer ran: the request waited for nothing."""
RETRY = RetryPolicy(max_attempts=2, base_delay=0.05, max_delay=0.1)
"""Two calls per deployment unless a route says otherwise."""
MESSAGES = [{"role": "user", "content": "hello there"}]
PROMPT_TOKENS = 2
"""What the fake counts for `MESSAGES` (words of every message)."""
ANSWER = "one two three four five"
FALLBACK_ANSWER = "served by the fallback"
HEALTHY = Scenario(answer=FALLBACK_ANSWER)
"""What every model without a scenario of its own answers."""


def _usage(answer: str) -> dict[str, int]:
    return {"input_tokens": PROMPT_TOKENS, "output_tokens": len(answer.split(" "))}


class Matrix:
    """Lines of `fault | calls per deployment | elapsed seconds | final event`."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def record(self, fault: str, calls: Mapping[str, int], elapsed: float, final: str) -> None:
        per_deployment = ", ".join(f"{name}={n}" for name, n in sorted(calls.items())) or "none"
        self.lines.append(f"{fault} | {per_deployment} | {elapsed:.2f} | {final}")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    matrix = Matrix()
    yield matrix
    notes = note_path(tmp_path_factory, "fault_matrix.txt")
    notes.write_text("".join(f"{line}\n" for line in matrix.lines))


@dataclass
class Upstream:
    """A fake OpenAI server and the real adapter pointed at it."""

    fake: FakeOpenAI
    model: OpenAIChatModel

    def calls(self) -> Counter[str]:
        """Chat calls per model (= per deployment: every deployment has its own model)."""
        return Counter(r.body["model"] for r in self.fake.chat_requests())

    def times(self, model: str) -> list[float]:
        """`loop.time()` of each call to `model`."""
        return [r.received_at for r in self.fake.chat_requests() if r.body["model"] == model]


@contextlib.asynccontextmanager
async def _upstream(provider: str = "openai") -> AsyncIterator[Upstream]:
    fake = FakeOpenAI(HEALTHY)
    await fake.start()
    client = create_client(
        api_key="test", base_url=fake.base_url, timeout=10.0, connect_timeout=5.0
    )
    model = OpenAIChatModel(client, provider=provider)
    try:
        yield Upstream(fake, model)
    finally:
        await model.aclose()
        await fake.stop()


def _dep(model: str, provider: str = "openai", **fields: Any) -> dict[str, Any]:
    return {"provider": provider, "model": model, **fields}


def _routing(deployments: dict[str, Any], **routes: Any) -> dict[str, Any]:
    """Deployments given as name → extra fields; each deployment's model is its name."""
    return {
        "deployments": {name: _dep(name, **extra) for name, extra in deployments.items()},
        "routes": routes,
    }


def _single(name: str) -> dict[str, Any]:
    """Route `chat` to deployment `name` only."""
    return _routing({name: {}}, chat={"deployments": [name]})


def _with_fallback(
    faulty: str, faulty_fields: dict[str, Any] | None = None, **route: Any
) -> dict[str, Any]:
    """Route `chat` to deployment `faulty`, falling back to route `spare` (`fallback`)."""
    return _routing(
        {faulty: faulty_fields or {}, "fallback": {}},
        chat={"deployments": [faulty], "fallbacks": ["spare"], **route},
        spare={"deployments": ["fallback"]},
    )


def _service(
    providers: Mapping[str, ChatModel],
    config: dict[str, Any],
    *,
    fail_max: int = 10,
    reset_timeout: float = 30.0,
    registry: CollectorRegistry | None = None,
) -> ChatService:
    registry = registry or CollectorRegistry()
    resolver = ModelResolver(providers, {})
    clock = asyncio.get_running_loop().time  # every component on the same (virtual) clock
    breakers = Breakers(registry, fail_max=fail_max, reset_timeout=reset_timeout, clock=clock)
    resilience = Resilience(
        breakers=breakers,
        retry=RETRY,
        deployment_quotas=QuotaBook(clock),
        tenant_quotas=QuotaBook(clock),
        stats=StatsBoard(clock=clock),
        cooldowns=Cooldowns(clock),
    )
    service = ChatService(
        resolver,
        LlmMetrics(registry),
        timeouts=StreamTimeouts(first_token=FIRST_TOKEN, idle=IDLE, total=10.0),
        resilience=resilience,
        clock=clock,
    )
    table = build_table(RoutingConfig.model_validate(config), resolver, lambda _: None)
    service.apply_routing(table)
    return service


@dataclass
class Outcome:
    """The events one request published, and how long `execute` took (loop seconds)."""

    events: list[tuple[str, dict[str, Any]]]
    elapsed: float
    kind: str = field(init=False)
    """`completed` or `failed`."""
    data: dict[str, Any] = field(init=False)
    """The terminal event's data."""

    def __post_init__(self) -> None:
        terminal, self.data = self.events[-1]
        self.kind = terminal.rpartition(".")[2]
        assert terminal in (LLM_CHAT_COMPLETED, LLM_CHAT_FAILED)
        assert all(
            t in (LLM_CHAT_CHUNK, LLM_CHAT_RESTARTED, LLM_CHAT_PROGRESS)
            for t, _ in self.events[:-1]
        )

    def progress(self) -> list[str]:
        return [d["stage"] for t, d in self.events if t == LLM_CHAT_PROGRESS]

    def chunks(self, attempt: int = 1) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == LLM_CHAT_CHUNK and d["attempt"] == attempt]

    def restarts(self) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == LLM_CHAT_RESTARTED]

    def attempts(self) -> list[tuple[str, str | None]]:
        return [(a["deployment"], a.get("error_code")) for a in self.data["attempts"]]

    def summary(self) -> str:
        data = self.data
        if self.kind == "failed":
            error = data["error"]
            return f"failed {error['code']} (retryable={error['retryable']})"
        calls = " → ".join(f"{name}:{code or 'ok'}" for name, code in self.attempts())
        extra = "".join(
            [
                f", stream attempt {data['stream_attempt']}" if "stream_attempt" in data else "",
                ", degraded" if data.get("degraded") else "",
            ]
        )
        return f"completed by {data['deployment']} [{calls}]{extra}"


async def _send(
    service: ChatService,
    alias: str = "chat",
    *,
    tenant: str | None = None,
    deadline_in: float | None = None,
) -> Outcome:
    replies = RecordingReplies()
    request = ChatRequest.model_validate({"model": alias, "messages": MESSAGES})
    loop = asyncio.get_running_loop()
    deadline = None if deadline_in is None else loop.time() + deadline_in
    started = loop.time()
    async with asyncio.timeout(15):
        job = ChatJob(request, replies, deadline=deadline, tenant=tenant)  # type: ignore[arg-type]
        await service.execute(job)
    elapsed = loop.time() - started
    events = replies.events
    return Outcome(events, elapsed)


def _assert_served(
    outcome: Outcome, deployment: str, answer: str, provider: str = "openai"
) -> None:
    assert outcome.kind == "completed", outcome.data
    data = outcome.data
    served = (data["deployment"], data["provider"], data["model"])
    assert served == (deployment, provider, deployment)
    assert data["content"] == answer
    assert data["usage"] == _usage(answer)
    assert data["attempts"][-1]["outcome"] == "completed"


def _assert_failed(outcome: Outcome, code: str, *, retryable: bool, says: str) -> None:
    assert outcome.kind == "failed"
    error = outcome.data["error"]
    assert (error["code"], error["retryable"]) == (code, retryable)
    assert says in error["message"]


@on_virtual_time
async def test_a_429_with_retry_after_on_the_only_deployment_is_called_again_after_it(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["only"] = Scenario(
            status=429, fail_first=1, headers={"retry-after": "2"}, answer="after the wait"
        )
        service = _service({"openai": upstream.model}, _single("only"))

        outcome = await _send(service)

        _assert_served(outcome, "only", "after the wait")
        assert outcome.attempts() == [("only", "rate_limited"), ("only", None)]
        assert upstream.calls() == {"only": 2}
        first, second = upstream.times("only")
        assert second - first == pytest.approx(2.0)  # exactly the Retry-After
        assert outcome.elapsed == pytest.approx(2.0)
        matrix.record(
            "429 Retry-After: 2, one deployment",
            upstream.calls(),
            outcome.elapsed,
            outcome.summary(),
        )


@on_virtual_time
async def test_a_429_with_retry_after_fails_over_at_once_when_another_deployment_can_serve(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["primary"] = Scenario(status=429, headers={"retry-after": "2"})
        config = _with_fallback("primary")
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        _assert_served(outcome, "fallback", FALLBACK_ANSWER)
        assert outcome.attempts() == [("primary", "rate_limited"), ("fallback", None)]
        assert upstream.calls() == {"primary": 1, "fallback": 1}
        assert outcome.elapsed < AT_ONCE
        assert service.resilience.cooldowns.remaining("primary") > 1.0
        matrix.record(
            "429 Retry-After: 2, with fallback",
            upstream.calls(),
            outcome.elapsed,
            outcome.summary(),
        )


@on_virtual_time
async def test_a_short_retry_after_is_waited_out_on_the_same_deployment_when_the_route_says_so(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["primary"] = Scenario(
            status=429, fail_first=1, headers={"retry-after": "1"}, answer="after the wait"
        )
        config = _with_fallback("primary", retry={"wait_retry_after": 2})
        service = _service({"openai": upstream.model}, config)

        waiting = asyncio.create_task(_send(service))
        async with asyncio.timeout(5):
            while not upstream.calls():  # the 429 came back: `waiting` now waits it out
                await asyncio.sleep(0.005)
        other = await _send(service)
        outcome = await waiting

        _assert_served(outcome, "primary", "after the wait")
        assert outcome.attempts() == [("primary", "rate_limited"), ("primary", None)]
        first, second = upstream.times("primary")
        assert second - first == pytest.approx(1.0)
        # The cooldown still holds for every other request: they fail over meanwhile.
        _assert_served(other, "fallback", FALLBACK_ANSWER)
        assert other.attempts() == [("fallback", None)]
        assert other.elapsed < AT_ONCE
        assert upstream.calls() == {"primary": 2, "fallback": 1}
        matrix.record(
            "429 Retry-After: 1, with fallback, wait_retry_after: 2",
            upstream.calls(),
            outcome.elapsed,
            f"{outcome.summary()}; a concurrent request: {other.summary()}",
        )


@pytest.mark.parametrize(
    ("retry_after", "wait_up_to", "deadline_in"),
    [("2", 1.0, None), ("1", 5.0, 0.8)],
    ids=["longer-than-the-route-waits", "past-the-deadline"],
)
@on_virtual_time
async def test_a_retry_after_the_route_will_not_wait_out_fails_over_at_once(
    retry_after: str, wait_up_to: float, deadline_in: float | None
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["primary"] = Scenario(
            status=429, headers={"retry-after": retry_after}
        )
        config = _with_fallback("primary", retry={"wait_retry_after": wait_up_to})
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service, deadline_in=deadline_in)

        _assert_served(outcome, "fallback", FALLBACK_ANSWER)
        assert outcome.attempts() == [("primary", "rate_limited"), ("fallback", None)]
        assert upstream.calls() == {"primary": 1, "fallback": 1}
        assert outcome.elapsed < AT_ONCE


@on_virtual_time
async def test_a_persistent_429_without_retry_after_backs_off_per_deployment_then_fails_over(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["primary"] = Scenario(status=429)
        config = _with_fallback("primary", retry={"per_deployment": 3})
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        _assert_served(outcome, "fallback", FALLBACK_ANSWER)
        assert outcome.attempts() == [("primary", "rate_limited")] * 3 + [("fallback", None)]
        assert upstream.calls() == {"primary": 3, "fallback": 1}
        times = upstream.times("primary")
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        ceilings = [RETRY.base_delay, RETRY.max_delay]  # full jitter below base·2^(n-1)
        assert all(0 <= gap <= ceiling for gap, ceiling in zip(gaps, ceilings, strict=True))
        assert outcome.elapsed == pytest.approx(sum(gaps))  # the backoffs and nothing else
        matrix.record(
            "persistent 429, no Retry-After", upstream.calls(), outcome.elapsed, outcome.summary()
        )


@on_virtual_time
async def test_one_500_then_healthy_is_retried_on_the_same_deployment(matrix: Matrix) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["flaky"] = Scenario(
            status=500, fail_first=1, answer="second time lucky"
        )
        service = _service({"openai": upstream.model}, _single("flaky"))

        outcome = await _send(service)

        _assert_served(outcome, "flaky", "second time lucky")
        assert outcome.attempts() == [("flaky", "unavailable"), ("flaky", None)]
        assert upstream.calls() == {"flaky": 2}
        first, second = upstream.times("flaky")
        assert 0 <= second - first <= RETRY.base_delay
        assert outcome.elapsed == pytest.approx(second - first)
        matrix.record("one 500, then healthy", upstream.calls(), outcome.elapsed, outcome.summary())


def _three_tier(max_attempts: int) -> dict[str, Any]:
    return _routing(
        {"a": {}, "b": {}, "c": {}},
        chat={
            "deployments": ["a"],
            "fallbacks": ["second", "third"],
            "retry": {"max_attempts": max_attempts, "per_deployment": 2},
        },
        second={"deployments": ["b"]},
        third={"deployments": ["c"]},
    )


@on_virtual_time
async def test_a_persistent_503_fails_over_and_the_request_stops_at_its_attempt_budget(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["a"] = upstream.fake.scenarios["b"] = Scenario(status=503)
        service = _service({"openai": upstream.model}, _three_tier(max_attempts=3))

        outcome = await _send(service)

        _assert_failed(outcome, "unavailable", retryable=True, says="OpenAI returned 503")
        assert upstream.calls() == {"a": 2, "b": 1}
        assert upstream.calls().total() == 3
        # One backoff on a; b's backoff is slept before the spent budget ends the request.
        assert outcome.elapsed <= 2 * RETRY.base_delay
        matrix.record(
            "persistent 503, budget 3", upstream.calls(), outcome.elapsed, outcome.summary()
        )


@on_virtual_time
async def test_a_persistent_503_fails_over_until_a_deployment_serves_within_the_budget(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["a"] = upstream.fake.scenarios["b"] = Scenario(status=503)
        service = _service({"openai": upstream.model}, _three_tier(max_attempts=5))

        outcome = await _send(service)

        _assert_served(outcome, "c", FALLBACK_ANSWER)
        failed = [("a", "unavailable")] * 2 + [("b", "unavailable")] * 2
        assert outcome.attempts() == [*failed, ("c", None)]
        assert upstream.calls() == {"a": 2, "b": 2, "c": 1}
        assert outcome.elapsed <= 2 * RETRY.base_delay  # one backoff on a, one on b
        matrix.record(
            "persistent 503, budget 5", upstream.calls(), outcome.elapsed, outcome.summary()
        )


@on_virtual_time
async def test_a_connection_reset_before_headers_is_retried_then_fails_over(matrix: Matrix) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["reset"] = Scenario(reset_before_headers=True)
        config = _with_fallback("reset")
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        _assert_served(outcome, "fallback", FALLBACK_ANSWER)
        failed = [("reset", "unavailable")] * 2
        assert outcome.attempts() == [*failed, ("fallback", None)]
        assert upstream.calls() == {"reset": 2, "fallback": 1}
        assert outcome.elapsed <= RETRY.base_delay  # one backoff, none to fail over
        matrix.record(
            "connection reset before headers", upstream.calls(), outcome.elapsed, outcome.summary()
        )


@on_virtual_time
async def test_a_silent_deployment_is_bounded_by_its_total_timeout_and_not_called_twice(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["silent"] = Scenario(delay_before_headers=3600)
        # Only the deployment's own total bounds the wait (the route's first-token bound is long).
        config = _with_fallback("silent", {"timeouts": {"total": 0.5}}, timeouts={"first_token": 5})
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        _assert_served(outcome, "fallback", FALLBACK_ANSWER)
        assert outcome.attempts() == [("silent", "timeout"), ("fallback", None)]
        assert upstream.calls() == {"silent": 1, "fallback": 1}
        assert outcome.elapsed == pytest.approx(0.5)  # its total, then the fallback at once
        matrix.record("no response at all", upstream.calls(), outcome.elapsed, outcome.summary())


@on_virtual_time
async def test_no_call_starts_after_the_request_deadline_not_even_on_a_fallback(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["silent"] = Scenario(delay_before_headers=3600)
        config = _with_fallback("silent", timeouts={"first_token": 5})  # the deadline comes first
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service, deadline_in=0.5)

        assert upstream.calls() == {"silent": 1}
        _assert_failed(outcome, "timeout", retryable=True, says="deadline passed before fallback")
        assert "request's time budget" in outcome.data["error"]["message"]  # what used it up
        assert outcome.elapsed == pytest.approx(0.5)
        matrix.record(
            "no response, deadline 0.5 s, with fallback",
            upstream.calls(),
            outcome.elapsed,
            outcome.summary(),
        )


@on_virtual_time
async def test_a_slow_first_token_fails_over_after_the_first_token_timeout(matrix: Matrix) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["slow"] = Scenario(first_token_delay=3.0)
        config = _with_fallback("slow")
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        _assert_served(outcome, "fallback", FALLBACK_ANSWER)
        assert outcome.attempts() == [("slow", "timeout"), ("fallback", None)]
        assert outcome.restarts() == []  # `slow` published nothing: a transparent failover
        assert "stream_attempt" not in outcome.data
        assert upstream.calls() == {"slow": 1, "fallback": 1}
        assert outcome.elapsed == pytest.approx(FIRST_TOKEN)
        matrix.record("slow first token", upstream.calls(), outcome.elapsed, outcome.summary())


@on_virtual_time
async def test_a_cut_stream_without_restarts_fails_after_its_chunks_never_truncated(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["faulty"] = Scenario(answer=ANSWER, cut_after=2)
        config = _with_fallback("faulty", restart_streams=False)
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        # Says what happened to the stream, not that OpenAI cannot be reached.
        _assert_failed(outcome, "unavailable", retryable=True, says="stream was cut after 2 chunks")
        assert outcome.data["error"]["message"].startswith("openai stream was cut after 2 chunks")
        assert [t for t, _ in outcome.events] == [LLM_CHAT_CHUNK] * 2 + [LLM_CHAT_FAILED]
        assert [c["delta"]["content"] for c in outcome.chunks()] == ["one", " two"]
        assert upstream.calls() == {"faulty": 1}
        assert outcome.elapsed < AT_ONCE
        matrix.record(
            "stream cut, restart_streams: false",
            upstream.calls(),
            outcome.elapsed,
            outcome.summary(),
        )


def _assert_restarted_on_fallback(outcome: Outcome, reason: str, discarded: int = 2) -> None:
    [restart] = outcome.restarts()
    assert restart["attempt"] == 2
    assert restart["discarded_chunks"] == discarded
    assert restart["deployment"] == "fallback"
    assert restart["reason"]["code"] == reason
    _assert_served(outcome, "fallback", FALLBACK_ANSWER)
    second = outcome.chunks(2)
    assert [c["index"] for c in second] == list(range(len(second)))
    assert "".join(c["delta"]["content"] for c in second) == outcome.data["content"]
    assert outcome.data["stream_attempt"] == 2
    assert outcome.data["chunk_count"] == len(second)
    types = [t for t, _ in outcome.events]
    assert types.index(LLM_CHAT_RESTARTED) == discarded  # after the first attempt's chunks


@on_virtual_time
async def test_a_cut_stream_restarts_on_the_next_deployment_from_index_zero(matrix: Matrix) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["faulty"] = Scenario(answer=ANSWER, cut_after=2)
        config = _with_fallback("faulty", retry={"per_deployment": 1})  # restart on the next one
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        _assert_restarted_on_fallback(outcome, "unavailable")
        assert [c["delta"]["content"] for c in outcome.chunks(1)] == ["one", " two"]
        assert outcome.attempts() == [("faulty", "unavailable"), ("fallback", None)]
        assert upstream.calls() == {"faulty": 1, "fallback": 1}
        assert outcome.elapsed < AT_ONCE
        matrix.record(
            "stream cut, restart on", upstream.calls(), outcome.elapsed, outcome.summary()
        )


@on_virtual_time
async def test_a_stalled_stream_restarts_on_the_fallback_after_the_idle_timeout(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["faulty"] = Scenario(answer=ANSWER, stall_after=2)
        service = _service({"openai": upstream.model}, _with_fallback("faulty"))

        outcome = await _send(service)

        _assert_restarted_on_fallback(outcome, "timeout")
        assert outcome.attempts() == [("faulty", "timeout"), ("fallback", None)]
        assert upstream.calls() == {"faulty": 1, "fallback": 1}  # a timeout is not retried there
        assert outcome.elapsed == pytest.approx(IDLE)
        matrix.record("stream stall", upstream.calls(), outcome.elapsed, outcome.summary())


@on_virtual_time
async def test_a_malformed_event_restarts_the_stream_once_on_the_fallback_not_the_same_deployment(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["faulty"] = Scenario(answer=ANSWER, malformed_after=2)
        config = _with_fallback("faulty", retry={"per_deployment": 3})
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        # Retryable, and `faulty` has calls left, but another deployment can serve: the
        # answer is published twice (2 discarded chunks + the fallback's), not four times.
        _assert_restarted_on_fallback(outcome, "unavailable")
        assert "stream was cut after 2 chunks" in outcome.restarts()[0]["reason"]["message"]
        assert outcome.attempts() == [("faulty", "unavailable"), ("fallback", None)]
        assert upstream.calls() == {"faulty": 1, "fallback": 1}
        chunk_events = [t for t, _ in outcome.events].count(LLM_CHAT_CHUNK)
        assert chunk_events == 2 + len(FALLBACK_ANSWER.split(" "))
        assert outcome.elapsed < AT_ONCE
        matrix.record(
            "malformed event mid-stream", upstream.calls(), outcome.elapsed, outcome.summary()
        )


@on_virtual_time
async def test_a_stream_cut_with_nothing_else_to_serve_restarts_on_the_same_deployment(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["only"] = Scenario(answer=ANSWER, cut_after=2)
        service = _service({"openai": upstream.model}, _single("only"))

        outcome = await _send(service)

        # RETRY allows two calls on `only`; both are cut, each restart is announced.
        restarts = [
            (r["attempt"], r["deployment"], r["discarded_chunks"]) for r in outcome.restarts()
        ]
        assert restarts == [(2, "only", 2)]
        _assert_failed(outcome, "unavailable", retryable=True, says="stream was cut after 2 chunks")
        assert [len(outcome.chunks(1)), len(outcome.chunks(2))] == [2, 2]
        assert upstream.calls() == {"only": 2}
        assert outcome.elapsed <= RETRY.base_delay  # one backoff before the restart
        matrix.record(
            "stream cut, one deployment", upstream.calls(), outcome.elapsed, outcome.summary()
        )


@on_virtual_time
async def test_a_stream_that_stalls_then_is_closed_fails_over_as_a_timeout(matrix: Matrix) -> None:
    async with _upstream() as upstream:
        # 0.35 s of silence (over half the 0.5 s idle bound), then the connection is closed.
        upstream.fake.scenarios["faulty"] = Scenario(answer=ANSWER, token_delay=0.35, cut_after=2)
        config = _with_fallback("faulty", retry={"per_deployment": 3})
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        _assert_restarted_on_fallback(outcome, "timeout")
        reason = outcome.restarts()[0]["reason"]["message"]
        assert "went silent for" in reason
        assert "after 2 chunks, then was closed" in reason
        assert outcome.attempts() == [("faulty", "timeout"), ("fallback", None)]
        assert upstream.calls() == {"faulty": 1, "fallback": 1}  # not called again: a timeout
        assert outcome.elapsed == pytest.approx(2 * 0.35)  # two tokens, then the close
        matrix.record(
            "stream stall, then closed", upstream.calls(), outcome.elapsed, outcome.summary()
        )


@on_virtual_time
async def test_a_stall_then_close_on_the_only_deployment_is_not_called_again(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["only"] = Scenario(answer=ANSWER, token_delay=0.35, cut_after=2)
        config = _routing(
            {"only": {}}, chat={"deployments": ["only"], "retry": {"per_deployment": 3}}
        )
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        _assert_failed(outcome, "timeout", retryable=True, says="then was closed")
        assert outcome.restarts() == []
        assert upstream.calls() == {"only": 1}
        assert outcome.elapsed == pytest.approx(2 * 0.35)  # not held until the idle bound
        matrix.record(
            "stream stall then closed, one deployment",
            upstream.calls(),
            outcome.elapsed,
            outcome.summary(),
        )


@on_virtual_time
async def test_a_stream_without_done_completes_with_usage_well_before_the_idle_timeout(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["nodone"] = Scenario(answer=ANSWER, send_done=False)
        service = _service({"openai": upstream.model}, _single("nodone"))

        outcome = await _send(service)

        _assert_served(outcome, "nodone", ANSWER)
        assert outcome.data["finish_reason"] == "stop"
        assert outcome.data["chunk_count"] == len(ANSWER.split(" "))
        assert outcome.attempts() == [("nodone", None)]
        assert upstream.calls() == {"nodone": 1}
        assert outcome.elapsed < AT_ONCE
        matrix.record("stream without [DONE]", upstream.calls(), outcome.elapsed, outcome.summary())


@on_virtual_time
async def test_context_length_exceeded_calls_that_model_once_then_the_larger_context_route(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["small"] = Scenario(
            status=400, error_code="context_length_exceeded"
        )
        upstream.fake.scenarios["big"] = Scenario(answer="long answer")
        config = _routing(
            {"small": {}, "big": {}, "fallback": {}},
            chat={"deployments": ["small"], "larger_context": "long", "fallbacks": ["spare"]},
            long={"deployments": ["big"]},
            spare={"deployments": ["fallback"]},
        )
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        _assert_served(outcome, "big", "long answer")
        assert outcome.attempts() == [("small", "context_length"), ("big", None)]
        assert upstream.calls() == {"small": 1, "big": 1}
        assert outcome.elapsed < AT_ONCE
        matrix.record(
            "context length exceeded", upstream.calls(), outcome.elapsed, outcome.summary()
        )


FILTERED = Scenario(
    status=400,
    error_body={
        "error": {
            "message": "The response was filtered due to the prompt triggering content policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {
                    "hate": {"filtered": True, "severity": "high"},
                    "violence": {"filtered": False, "severity": "safe"},
                },
            },
        }
    },
)


@pytest.mark.parametrize("on_filter", ["fail", "fallback"])
@on_virtual_time
async def test_a_content_filter_refusal_fails_with_the_reason_or_falls_back_when_routed_so(
    matrix: Matrix, on_filter: str
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["filtered"] = FILTERED
        config = _with_fallback("filtered", content_filter=on_filter)
        service = _service({"openai": upstream.model}, config)

        outcome = await _send(service)

        if on_filter == "fail":
            _assert_failed(
                outcome, "content_filter", retryable=False, says="triggering content policy"
            )
            assert "(filtered: hate=high)" in outcome.data["error"]["message"]
            assert outcome.data["error"]["status"] == 400
            assert upstream.calls() == {"filtered": 1}
        else:
            _assert_served(outcome, "fallback", FALLBACK_ANSWER)
            assert outcome.attempts() == [("filtered", "content_filter"), ("fallback", None)]
            assert upstream.calls() == {"filtered": 1, "fallback": 1}
        assert outcome.elapsed < AT_ONCE
        matrix.record(
            f"content filter, content_filter: {on_filter}",
            upstream.calls(),
            outcome.elapsed,
            outcome.summary(),
        )


@on_virtual_time
async def test_a_primary_down_then_healthy_opens_its_circuit_then_one_probe_closes_it(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        reset_timeout = 0.5
        upstream.fake.scenarios["primary"] = Scenario(status=503)
        config = _with_fallback("primary", {"weight": 100})
        service = _service(
            {"openai": upstream.model}, config, fail_max=2, reset_timeout=reset_timeout
        )
        breakers = service.resilience.breakers
        assert breakers is not None
        loop = asyncio.get_running_loop()
        started = loop.time()

        tripping = await _send(service)

        _assert_served(tripping, "fallback", FALLBACK_ANSWER)
        assert tripping.attempts() == [("primary", "unavailable")] * 2 + [("fallback", None)]
        assert breakers.get("primary").state == "open"
        opened_after = upstream.times("primary")[-1]
        upstream.fake.scenarios["primary"] = Scenario(answer="primary is back")
        while_open = [await _send(service) for _ in range(3)]
        await asyncio.sleep(opened_after + reset_timeout * 0.9 - loop.time())  # moves the clock
        while_open += [await _send(service) for _ in range(2)]
        await asyncio.sleep(opened_after + reset_timeout + 0.001 - loop.time())
        probe = await _send(service)

        assert all(o.attempts() == [("fallback", None)] for o in while_open)
        _assert_served(probe, "primary", "primary is back")
        assert probe.attempts() == [("primary", None)]
        assert breakers.get("primary").state == "closed"
        [_, _, probe_at] = upstream.times("primary")
        assert reset_timeout <= probe_at - opened_after < reset_timeout + 0.01
        after = [await _send(service) for _ in range(5)]
        assert all(o.attempts() == [("primary", None)] for o in after)
        assert upstream.calls() == {"primary": 2 + 1 + 5, "fallback": 1 + len(while_open)}
        elapsed = loop.time() - started
        matrix.record(
            "primary down then healthy (breaker 2/0.5 s)",
            upstream.calls(),
            elapsed,
            f"{len(while_open)} requests served by fallback while open (0 primary calls),"
            f" probe at +{probe_at - opened_after:.2f} s closed it, then primary",
        )


@on_virtual_time
async def test_failover_reports_only_the_serving_deployment_its_provider_model_and_usage(
    matrix: Matrix,
) -> None:
    registry = CollectorRegistry()
    async with _upstream("openai") as first, _upstream("compat") as second:
        first.fake.scenarios["primary"] = Scenario(answer="a b c d e f g h", cut_after=3)
        second.fake.scenarios["fallback-model"] = Scenario(answer="x y")
        config = {
            "deployments": {
                "primary": _dep("primary"),
                "fallback": _dep("fallback-model", "compat"),
            },
            "routes": {
                "chat": {
                    "deployments": ["primary"],
                    "fallbacks": ["spare"],
                    "retry": {"per_deployment": 1},
                },
                "spare": {"deployments": ["fallback"]},
            },
        }
        service = _service(
            {"openai": first.model, "compat": second.model}, config, registry=registry
        )

        outcome = await _send(service)

        data = outcome.data
        assert outcome.kind == "completed"
        served = (data["deployment"], data["provider"], data["model"])
        assert served == ("fallback", "compat", "fallback-model")
        assert data["content"] == "x y"
        assert data["usage"] == {"input_tokens": PROMPT_TOKENS, "output_tokens": 2}  # not 3 + 2
        assert (data["chunk_count"], data["stream_attempt"]) == (2, 2)
        assert len(outcome.chunks(1)) == 3
        assert outcome.attempts() == [("primary", "unavailable"), ("fallback", None)]
        tokens = {
            (model, kind): registry.get_sample_value(
                "gen_ai_client_token_usage_sum",
                {
                    "gen_ai_operation_name": "chat",
                    "gen_ai_provider_name": provider,
                    "gen_ai_request_model": model,
                    "gen_ai_token_type": kind,
                },
            )
            for provider, model in (("openai", "primary"), ("compat", "fallback-model"))
            for kind in ("input", "output")
        }
        assert tokens == {
            ("primary", "input"): None,
            ("primary", "output"): None,
            ("fallback-model", "input"): float(PROMPT_TOKENS),
            ("fallback-model", "output"): 2.0,
        }
        calls = first.calls() + second.calls()
        assert calls == {"primary": 1, "fallback-model": 1}
        assert outcome.elapsed < AT_ONCE
    matrix.record("failover accounting (two providers)", calls, outcome.elapsed, outcome.summary())


@on_virtual_time
async def test_a_deployment_at_its_rpm_is_routed_around(matrix: Matrix) -> None:
    async with _upstream() as upstream:
        config = _with_fallback("limited", {"limits": {"rpm": 1}})
        service = _service({"openai": upstream.model}, config)

        first = await _send(service)
        second = await _send(service)

        assert first.attempts() == [("limited", None)]
        _assert_served(second, "fallback", FALLBACK_ANSWER)
        assert second.attempts() == [("fallback", None)]
        assert upstream.calls() == {"limited": 1, "fallback": 1}
        assert second.elapsed < AT_ONCE
        matrix.record(
            "deployment at rpm 1",
            upstream.calls(),
            first.elapsed + second.elapsed,
            f"2nd {second.summary()}",
        )


@on_virtual_time
async def test_a_deployment_at_its_quota_makes_requests_wait_or_fail_rate_limited(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        config = _single("limited")
        config["deployments"]["limited"]["limits"] = {"max_concurrent": 1}
        service = _service({"openai": upstream.model}, config)
        upstream.fake.scenarios["limited"] = Scenario(tokens=5, token_delay=0.1)
        first_call = asyncio.create_task(_send(service))
        async with asyncio.timeout(5):
            while not upstream.calls():  # the first request holds the only slot
                await asyncio.sleep(0.005)

        waiting, hurried = await asyncio.gather(_send(service), _send(service, deadline_in=0.2))
        slow = await first_call

        assert (slow.kind, waiting.kind) == ("completed", "completed")
        assert (slow.progress(), waiting.progress()) == ([], ["waiting_quota"])
        _assert_failed(hurried, "rate_limited", retryable=True, says="at its quota")
        assert hurried.elapsed < AT_ONCE
        first, second = upstream.times("limited")
        assert second - first == pytest.approx(slow.elapsed)  # the 2nd call began as the 1st ended
        assert upstream.calls() == {"limited": 2}
        matrix.record(
            "deployment at max_concurrent 1",
            upstream.calls(),
            max(slow.elapsed, waiting.elapsed),
            f"2nd waited {second - first:.2f} s; 0.2 s deadline: {hurried.summary()}",
        )


@on_virtual_time
async def test_a_tenant_over_its_quota_waits_and_fails_rate_limited_past_its_deadline(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        config = _single("only")
        config["tenants"] = {"*": {"requests": 1, "window": 1}}
        service = _service({"openai": upstream.model}, config)
        loop = asyncio.get_running_loop()
        started = loop.time()

        first = await _send(service, tenant="acme")
        second = await _send(service, tenant="acme")
        hurried = await _send(service, tenant="acme", deadline_in=0.3)
        other = await _send(service, tenant="globex")

        assert [first.kind, second.kind, other.kind] == ["completed"] * 3
        assert [first.progress(), second.progress(), hurried.progress()] == [
            [],
            ["waiting_quota"],
            [],  # it fails at once: nothing to wait for
        ]
        admitted_first, admitted_second, _ = upstream.times("only")
        assert admitted_second - started == pytest.approx(
            1.0
        )  # backpressure: waited for the window
        assert admitted_second - admitted_first == pytest.approx(1.0)
        _assert_failed(hurried, "rate_limited", retryable=True, says="'acme' is over its quota")
        assert hurried.elapsed < AT_ONCE  # the wait would pass its deadline: it fails at once
        assert other.elapsed < AT_ONCE  # another tenant has its own budget
        assert upstream.calls() == {"only": 3}
        elapsed = loop.time() - started
        matrix.record(
            "tenant quota 1 req/s",
            upstream.calls(),
            elapsed,
            f"2nd waited {second.elapsed:.2f} s, then completed;"
            f" 0.3 s deadline: {hurried.summary()}",
        )


@on_virtual_time
async def test_when_every_deployment_fails_or_is_open_the_degraded_route_serves(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["a"] = upstream.fake.scenarios["b"] = Scenario(status=503)
        upstream.fake.scenarios["canned"] = Scenario(answer="sorry, try later")
        config = _routing(
            {"a": {}, "b": {}, "canned": {}},
            chat={"deployments": ["a", "b"], "degraded": "apology", "retry": {"per_deployment": 1}},
            apology={"deployments": ["canned"]},
        )
        service = _service({"openai": upstream.model}, config, fail_max=1)

        failing = await _send(service)
        open_circuits = await _send(service)

        for outcome in (failing, open_circuits):
            _assert_served(outcome, "canned", "sorry, try later")
            assert outcome.data["degraded"] is True
        assert sorted(failing.attempts()[:2]) == [("a", "unavailable"), ("b", "unavailable")]
        assert failing.attempts()[2:] == [("canned", None)]
        assert open_circuits.attempts() == [("canned", None)]
        assert upstream.calls() == {"a": 1, "b": 1, "canned": 2}
        assert open_circuits.elapsed < AT_ONCE
        elapsed = failing.elapsed + open_circuits.elapsed
        matrix.record(
            "all failing / all open, degraded route",
            upstream.calls(),
            elapsed,
            open_circuits.summary(),
        )


@on_virtual_time
async def test_without_a_degraded_route_all_open_circuits_fail_promptly_as_unavailable(
    matrix: Matrix,
) -> None:
    async with _upstream() as upstream:
        upstream.fake.scenarios["a"] = upstream.fake.scenarios["b"] = Scenario(status=503)
        config = _routing(
            {"a": {}, "b": {}}, chat={"deployments": ["a", "b"], "retry": {"per_deployment": 1}}
        )
        service = _service({"openai": upstream.model}, config, fail_max=1)

        failing = await _send(service)
        open_circuits = await _send(service)

        _assert_failed(failing, "unavailable", retryable=True, says="OpenAI returned 503")
        _assert_failed(
            open_circuits, "unavailable", retryable=True, says="(a: circuit open; b: circuit open)"
        )
        assert upstream.calls() == {"a": 1, "b": 1}
        assert open_circuits.elapsed < AT_ONCE
        matrix.record(
            "all open, no degraded route",
            upstream.calls(),
            open_circuits.elapsed,
            open_circuits.summary(),
        )
