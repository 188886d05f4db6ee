"""Resilience end to end: timeouts, Retry-After, circuit breakers and failover through Kafka."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ferryman.client import ChatFailedError, FerrymanClient
from ferryman.contracts import ChatChunk, ChatCompleted, ChatRestarted
from ferryman.contracts.usage import UsageEvent
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.integration.conftest import Topics, WorkerProcess, read_topic, usage_topic

pytestmark = pytest.mark.integration


def _sample(worker: WorkerProcess, name: str, **labels: str) -> float | None:
    """The value of one sample on the worker's `/metrics` (None: absent)."""
    for family in text_string_to_metric_families(worker.metrics()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def _request(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "one two three four"}]}


async def test_no_first_token_and_a_stalled_stream_both_end_in_failed_timeout(
    worker_factory, client: FerrymanClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.scenarios["silent"] = Scenario(first_token_delay=3600)
    fake_openai.scenarios["stalling"] = Scenario(stall_after=2)
    worker = worker_factory(
        OPENAI_BASE_URL=fake_openai.base_url,
        LLM_WORKER_FIRST_TOKEN_TIMEOUT="1",
        LLM_WORKER_STREAM_IDLE_TIMEOUT="1",
    )
    worker.start()
    await worker.wait_ready()

    with pytest.raises(ChatFailedError) as silent:
        await client.chat(_request("openai/silent"), timeout=60)
    chunks: list[ChatChunk] = []

    async def stream_stalling() -> None:
        async for event in client.chat_stream(_request("openai/stalling"), timeout=60):
            assert isinstance(event, ChatChunk)
            chunks.append(event)

    with pytest.raises(ChatFailedError) as stalled:
        await stream_stalling()

    assert (silent.value.error.code, silent.value.error.retryable) == ("timeout", True)
    assert "first token" in silent.value.error.message
    assert stalled.value.error.code == "timeout"
    assert "idle" in stalled.value.error.message
    assert "".join(c.delta.content or "" for c in chunks) == "Echo: one"


async def test_a_429_with_retry_after_is_retried_no_sooner_than_asked(
    worker_factory,
    client: FerrymanClient,
    fake_openai: FakeOpenAI,
    kafka_bootstrap: str,
    topics: Topics,
) -> None:
    fake_openai.scenarios["busy"] = Scenario(status=429, fail_first=1, headers={"retry-after": "1"})
    worker = worker_factory(OPENAI_BASE_URL=fake_openai.base_url)
    worker.start()
    await worker.wait_ready()

    completed = await client.chat(_request("openai/busy"), timeout=60)

    first, second = fake_openai.chat_requests()
    assert completed.content == "Echo: one two three four"
    assert second.received_at - first.received_at >= 1.0
    assert (
        _sample(worker, "llm_worker_retries_total", service="llm_worker", upstream="openai/*") == 1
    )
    calls = "gen_ai_client_operation_duration_seconds_count"
    call = {"gen_ai_provider_name": "openai", "gen_ai_request_model": "openai/*"}
    assert _sample(worker, calls, **call, upstream="openai/*", error_type="rate_limited") == 1
    assert _sample(worker, calls, **call, upstream="openai/*", error_type="") == 1
    assert (
        _sample(
            worker,
            "ferryman_requests_total",
            operation="chat",
            target="direct",
            outcome="completed",
        )
        == 1
    )
    [record] = await read_topic(kafka_bootstrap, usage_topic(topics), until=1)
    usage = UsageEvent.model_validate_json(record.value)
    assert (usage.service, usage.operation, usage.target, usage.outcome) == (
        "llm_worker", "chat", "direct", "completed",
    )  # fmt: skip
    assert usage.model is not None
    assert usage.model.startswith("openai/")
    assert usage.output_tokens == completed.usage.output_tokens


async def test_a_persistently_failing_model_opens_its_circuit_and_then_fails_fast(
    worker_factory, client: FerrymanClient, fake_openai: FakeOpenAI
) -> None:
    fake_openai.scenarios["down"] = Scenario(status=503)
    worker = worker_factory(
        OPENAI_BASE_URL=fake_openai.base_url,
        LLM_WORKER_RETRY_MAX_ATTEMPTS="1",
        LLM_WORKER_BREAKER_FAIL_MAX="2",
        LLM_WORKER_BREAKER_RESET_TIMEOUT="600",
    )
    worker.start()
    await worker.wait_ready()

    errors = []
    for _ in range(3):
        with pytest.raises(ChatFailedError) as failure:
            await client.chat(_request("openai/down"), timeout=60)
        errors.append(failure.value.error)

    assert [e.code for e in errors] == ["unavailable"] * 3
    assert [e.status for e in errors] == [503, 503, None]
    assert "circuit open" in errors[2].message
    assert len(fake_openai.chat_requests()) == 2
    assert worker.health()["circuits"] == {"openai/down": "open"}  # type: ignore[index]


async def test_a_route_fails_over_from_a_down_deployment_to_its_fallback(
    worker_factory, client: FerrymanClient, fake_openai: FakeOpenAI, tmp_path
) -> None:
    fake_openai.scenarios["primary"] = Scenario(status=503)
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "deployments:\n"
        "  main: {provider: openai, model: primary}\n"
        "  spare: {provider: mock, model: echo}\n"
        "routes:\n"
        "  chat: {deployments: [main], fallbacks: [backup]}\n"
        "  backup: {deployments: [spare]}\n"
    )
    worker = worker_factory(
        OPENAI_BASE_URL=fake_openai.base_url,
        LLM_WORKER_ROUTING_FILE=str(routing),
        LLM_WORKER_RETRY_MAX_ATTEMPTS="2",
        LLM_WORKER_RETRY_BASE_DELAY="0.01",
    )
    worker.start()
    await worker.wait_ready()

    completed = await client.chat(_request("chat"), timeout=60)

    assert (completed.provider, completed.model, completed.deployment) == ("mock", "echo", "spare")
    assert completed.attempts is not None
    assert [(a.deployment, a.outcome, a.error_code) for a in completed.attempts] == [
        ("main", "failed", "unavailable"),
        ("main", "failed", "unavailable"),
        ("spare", "completed", None),
    ]
    assert completed.content == "You said: one two three four"
    assert len(fake_openai.chat_requests()) == 2
    failovers = _sample(
        worker, "llm_worker_failovers_total", service="llm_worker", upstream="main",
        reason="unavailable",
    )  # fmt: skip
    assert failovers == 1


async def test_a_stream_cut_mid_answer_is_restarted_on_the_fallback_and_announced(
    worker_factory, client: FerrymanClient, fake_openai: FakeOpenAI, tmp_path
) -> None:
    fake_openai.scenarios["cut"] = Scenario(cut_after=2)
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "deployments:\n"
        "  main: {provider: openai, model: cut}\n"
        "  spare: {provider: openai, model: whole}\n"
        "routes:\n"
        "  chat: {deployments: [main], fallbacks: [backup], retry: {per_deployment: 3}}\n"
        "  backup: {deployments: [spare]}\n"
    )
    worker = worker_factory(
        OPENAI_BASE_URL=fake_openai.base_url, LLM_WORKER_ROUTING_FILE=str(routing)
    )
    worker.start()
    await worker.wait_ready()

    events = [event async for event in client.chat_stream(_request("chat"), timeout=60)]

    kinds = [type(event).__name__ for event in events]
    restart_at = kinds.index("ChatRestarted")
    assert kinds == ["ChatChunk"] * restart_at + ["ChatRestarted"] + ["ChatChunk"] * (
        len(kinds) - restart_at - 2
    ) + ["ChatCompleted"]
    restarted, completed = events[restart_at], events[-1]
    assert isinstance(restarted, ChatRestarted)
    assert isinstance(completed, ChatCompleted)
    assert (restarted.attempt, restarted.discarded_chunks, restarted.deployment) == (2, 2, "spare")
    assert restarted.reason.code == "unavailable"
    assert "stream was cut after 2 chunks" in restarted.reason.message
    # `main` had calls left, but the restart went where the answer is published once more.
    assert [r.body["model"] for r in fake_openai.chat_requests()] == ["cut", "whole"]
    after = [e for e in events[restart_at + 1 : -1] if isinstance(e, ChatChunk)]
    assert [c.attempt for c in after] == [2] * len(after)
    assert [c.index for c in after] == list(range(len(after)))
    assert "".join(c.delta.content or "" for c in after) == completed.content
    assert completed.content == "Echo: one two three four"
    assert (completed.deployment, completed.stream_attempt) == ("spare", 2)
    assert _sample(worker, "llm_worker_stream_restarts_total", upstream="spare") == 1
