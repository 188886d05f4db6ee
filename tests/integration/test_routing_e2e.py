"""Routing end to end: hot reload under load, quotas across replicas, health reports, breakers.

Each test runs real worker processes against the real Kafka and the fake OpenAI server,
and appends its key measurements to `e2e.txt` (see `tests.notes` for where).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ferryman.client import ChatFailedError, FerrymanClient
from ferryman.contracts import HEALTH_REPORTED, ChatCompleted, ErrorCode
from ferryman.contracts.health import HealthReport
from tests.fakes.openai_server import FakeOpenAI, Scenario
from tests.integration.conftest import Topics, WorkerProcess, open_client, read_topic
from tests.notes import Notes, note_path

pytestmark = pytest.mark.integration

T = TypeVar("T")
WorkerFactory = Callable[..., WorkerProcess]


async def eventually(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Return the first truthy result of `check()` (run in a thread), polling until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


@pytest.fixture(scope="module")
def note(tmp_path_factory: pytest.TempPathFactory) -> Notes:
    """Appends one line of measurements to the notes file."""
    return Notes(note_path(tmp_path_factory, "e2e.txt"))


def sample(worker: WorkerProcess, name: str, **labels: str) -> float | None:
    """The value of one sample on the worker's `/metrics`, or None when absent."""
    for family in text_string_to_metric_families(worker.metrics()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def replace_file(path: Path, text: str) -> str:
    """Replace `path` atomically (write a sibling, then rename); return the content's version."""
    staged = path.with_name(path.name + ".staged")
    staged.write_text(text)
    os.replace(staged, path)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def health(worker: WorkerProcess) -> dict[str, Any]:
    """The worker's `/health` document (it must answer)."""
    status = worker.health()
    assert status is not None, "worker /health did not answer"
    return status


def chat_models(fake: FakeOpenAI) -> Counter[str]:
    """Chat-completion calls the fake received, by model."""
    return Counter(r.body["model"] for r in fake.chat_requests())


def one_route(deployment: str, model: str, *, routed_to: str | None = None) -> str:
    """A routing file with one openai deployment and route `chat` to `routed_to` (default: it)."""
    return (
        f"deployments:\n  {deployment}: {{provider: openai, model: {model}}}\n"
        f"routes:\n  chat: {{deployments: [{routed_to or deployment}]}}\n"
    )


def _request(text: str) -> dict[str, object]:
    return {"model": "chat", "messages": [{"role": "user", "content": text}]}


async def start_replicas(make: WorkerFactory, count: int, **env: str) -> list[WorkerProcess]:
    """Start `count` workers in the test's group; return once each holds an equal share."""
    workers = [make(LLM_WORKER_INSTANCE_ID=f"replica-{i}", **env) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        await worker.wait_ready()
    await eventually(
        lambda: all(
            (s := w.health()) and s["quotas"]["share"] == round(1 / count, 4) for w in workers
        )
    )
    return workers


@pytest.fixture
async def client4(kafka_bootstrap: str, topics: Topics) -> AsyncIterator[FerrymanClient]:
    """A client of this test's topics, the request topic made with 4 partitions."""
    async with open_client(kafka_bootstrap, topics, partitions=4) as c:
        yield c


async def test_a_hot_reload_under_load_loses_no_request_and_rejects_a_bad_version(
    note: Notes,
    worker_factory: WorkerFactory,
    client: FerrymanClient,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    streaming = Scenario(tokens=12, token_delay=0.05)  # about 0.55 s per stream
    fake_openai.scenarios["alpha"] = fake_openai.scenarios["beta"] = streaming
    routing = tmp_path / "routing.yaml"
    first = replace_file(
        routing,
        one_route("a", "alpha"),
    )
    worker = worker_factory(
        OPENAI_BASE_URL=fake_openai.base_url,
        LLM_WORKER_ROUTING_FILE=str(routing),
        LLM_WORKER_ROUTING_POLL_INTERVAL="0.2",
    )
    worker.start()
    await worker.wait_ready()
    assert health(worker)["routing"]["version"] == first
    finished: set[int] = set()

    async def stream(i: int) -> ChatCompleted:
        async for event in client.chat_stream(_request(f"request {i}"), timeout=90):
            if isinstance(event, ChatCompleted):
                finished.add(i)
                return event
        raise AssertionError(f"request {i} ended without a completion")

    early = [asyncio.create_task(stream(i)) for i in range(40)]
    # Every early request has reached deployment a (its table is fixed) before the swap.
    await eventually(lambda: chat_models(fake_openai)["alpha"] == 40, interval=0.02)
    second = replace_file(
        routing,
        one_route("b", "beta"),
    )
    in_flight_at_swap = 40 - len(finished)
    await eventually(lambda: health(worker)["routing"]["version"] == second, interval=0.05)
    late = [asyncio.create_task(stream(i)) for i in range(40, 60)]
    results = await asyncio.wait_for(asyncio.gather(*early, *late), 90)
    served = Counter(r.deployment for r in results)
    applied = sample(worker, "ferryman_config_reloads_total", config="routing", outcome="applied")
    active = sample(worker, "ferryman_config_info", config="routing", version=second)

    rejected_before = sample(
        worker, "ferryman_config_reloads_total", config="routing", outcome="rejected"
    )
    replace_file(
        routing,
        one_route("b", "beta", routed_to="c"),
    )
    await eventually(
        lambda: (
            sample(worker, "ferryman_config_reloads_total", config="routing", outcome="rejected")
            == (rejected_before or 0) + 1
        )
    )
    status = health(worker)["routing"]
    after_rejection = await client.chat(_request("still served"), timeout=60)
    note(
        f"reload: {len(results)}/60 completed, A served {served['a']}, B served {served['b']},"
        f" {in_flight_at_swap} streams in flight at the swap; invalid version rejected,"
        f" still serving {status['version']}"
    )

    assert [r.content for r in results] == [" ".join(f"tok{n}" for n in range(12))] * 60
    assert [r.deployment for r in results[:40]] == ["a"] * 40
    assert [r.deployment for r in results[40:]] == ["b"] * 20
    assert chat_models(fake_openai)["alpha"] == 40
    assert in_flight_at_swap > 0
    assert applied is not None
    assert applied >= 1
    assert active == 1.0
    assert status["version"] == second
    assert "unknown deployments" in status["last_error"]
    assert after_rejection.deployment == "b"
    assert chat_models(fake_openai)["beta"] == 21


async def test_a_deployment_limit_holds_across_two_replicas(
    note: Notes,
    worker_factory: WorkerFactory,
    client4: FerrymanClient,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "deployments:\n"
        "  limited: {provider: openai, model: limited, limits: {rpm: 6}}\n"
        "  spare: {provider: openai, model: spare}\n"
        "routes:\n"
        "  chat: {deployments: [limited], fallbacks: [spare]}\n"
        "  spare: {deployments: [spare]}\n"
    )
    workers = await start_replicas(
        worker_factory,
        2,
        OPENAI_BASE_URL=fake_openai.base_url,
        LLM_WORKER_ROUTING_FILE=str(routing),
        LLM_WORKER_TOPIC_PARTITIONS="4",
    )

    started = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(*(client4.chat(_request(f"quota {i}"), timeout=60) for i in range(30))), 90
    )
    elapsed = time.monotonic() - started
    calls = chat_models(fake_openai)
    served = Counter(r.deployment for r in results)
    per_replica = [health(w)["quotas"]["deployments"]["limited"]["requests"] for w in workers]
    note(
        f"quotas two replicas: limited={calls['limited']} spare={calls['spare']}"
        f" (per replica {per_replica}), 30/30 completed, elapsed={elapsed:.2f}s"
    )

    assert len(results) == 30
    assert calls["limited"] <= 6
    assert all(n <= 3 for n in per_replica)
    assert sum(per_replica) == calls["limited"]
    assert served["limited"] == calls["limited"]
    assert served["spare"] == calls["spare"] == 30 - calls["limited"]

    # Both replicas converge on a new version of the file (same bytes, same hash).
    raised = routing.read_text().replace("rpm: 6", "rpm: 600")
    version = replace_file(routing, raised)
    converged = time.monotonic()
    await eventually(lambda: all(health(w)["routing"]["version"] == version for w in workers))
    note(f"two replicas converged on {version} in {time.monotonic() - converged:.2f}s")
    for worker in workers:
        assert sample(worker, "ferryman_config_info", config="routing", version=version) == 1.0
        assert health(worker)["quotas"]["deployments"]["limited"]["requests_limit"] == 600


def busiest(times: list[float], window: float) -> int:
    """The most of `times` inside any window `[t, t + window)` that starts at one of them."""
    ordered = sorted(times)
    return max(sum(1 for u in ordered[i:] if u - t < window) for i, t in enumerate(ordered))


async def test_a_tenant_over_its_quota_waits_for_budget_and_fails_only_past_its_deadline(
    note: Notes,
    worker_factory: WorkerFactory,
    client4: FerrymanClient,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "deployments:\n"
        "  main: {provider: openai, model: tenant-model}\n"
        "routes:\n"
        "  chat: {deployments: [main]}\n"
        "tenants:\n"
        "  acme: {requests: 2, window: 3}\n"
    )
    workers = await start_replicas(
        worker_factory,
        2,
        OPENAI_BASE_URL=fake_openai.base_url,
        LLM_WORKER_ROUTING_FILE=str(routing),
        LLM_WORKER_TOPIC_PARTITIONS="4",
    )
    options: dict[str, Any] = {"tenant": "acme", "key": b"acme"}

    started = time.monotonic()
    generous = datetime.now(UTC) + timedelta(seconds=60)
    results = await asyncio.wait_for(
        asyncio.gather(
            *(
                client4.chat(_request(f"tenant {i}"), timeout=60, expires_at=generous, **options)
                for i in range(6)
            )
        ),
        60,
    )
    elapsed = time.monotonic() - started
    received = sorted(r.received_at for r in fake_openai.chat_requests())
    # Admission is exact; the hop from admission to the fake adds a little jitter.
    within_window = busiest(received, 3.0 - 0.25)
    two_apart = min(b - a for a, b in zip(received, received[2:], strict=False))
    with pytest.raises(ChatFailedError) as refused:
        await client4.chat(
            _request("too late"),
            timeout=30,
            expires_at=datetime.now(UTC) + timedelta(seconds=1),
            **options,
        )
    admitted = [health(w)["quotas"]["tenants"]["acme"]["requests"] for w in workers]
    note(
        f"tenant backpressure: max calls in any 3s window={within_window} (0.25s jitter allowed),"
        f" min spacing of calls two apart={two_apart:.3f}s, elapsed={elapsed:.2f}s,"
        f" short-expiry request -> {refused.value.error.code};"
        f" admitted in the current window per replica {admitted}"
    )

    assert len(results) == 6
    assert len(received) == 6
    assert within_window == 2
    assert two_apart >= 3.0 - 0.25
    # Three windows of two: `within_window == 2` shows the owning replica has the whole
    # budget (half of it would admit one call per window); no upper bound on real time.
    assert elapsed >= 6.0
    assert (refused.value.error.code, refused.value.error.retryable) == (
        ErrorCode.RATE_LIMITED,
        True,
    )
    assert len(fake_openai.chat_requests()) == 6
    assert sorted(admitted) == [0, 2]  # one replica owns the tenant's partition and budget


async def test_health_reports_reach_the_health_topic_and_probes_never_bill_a_completion(
    note: Notes,
    worker_factory: WorkerFactory,
    kafka_bootstrap: str,
    unique: str,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    health_topic = f"t-{unique}.health"
    routing = tmp_path / "routing.yaml"
    version = replace_file(
        routing,
        one_route("main", "gpt-fake"),
    )
    worker = worker_factory(
        OPENAI_BASE_URL=fake_openai.base_url,
        LLM_WORKER_ROUTING_FILE=str(routing),
        LLM_WORKER_HEALTH_TOPIC=health_topic,
        LLM_WORKER_HEALTH_REPORT_INTERVAL="0.5",
        LLM_WORKER_HEALTH_PROBE_INTERVAL="0.5",
    )
    worker.start()
    await worker.wait_ready()

    def probed(report: HealthReport) -> bool:
        return report.config_version == version and any(
            u.name == "main" and u.probe == "ok" for u in report.upstreams
        )

    records = await read_topic(
        kafka_bootstrap,
        health_topic,
        until=lambda rs: any(probed(HealthReport.model_validate_json(r.value)) for r in rs),
        timeout=30,
    )
    report = next(
        r for r in map(HealthReport.model_validate_json, (r.value for r in records)) if probed(r)
    )
    listings = [r for r in fake_openai.requests if r.path == "/v1/models"]
    deployments = health(worker)["deployments"]
    note(
        f"health topic: {len(records)} reports, probe ok, {len(listings)} model listings,"
        f" {len(fake_openai.chat_requests())} completions billed by probing"
    )

    assert {dict(r.headers)["ce_type"] for r in records} == {HEALTH_REPORTED.encode()}
    assert report.service == "llm_worker"
    assert [(u.name, u.kind, u.labels) for u in report.upstreams] == [
        ("main", "llm", {"provider": "openai", "model": "gpt-fake"})
    ]
    assert listings
    assert fake_openai.chat_requests() == []
    assert deployments["main"]["probe"] == "ok"


async def test_an_open_circuit_routes_around_its_deployment_until_it_recovers(
    note: Notes,
    worker_factory: WorkerFactory,
    client: FerrymanClient,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
) -> None:
    fake_openai.scenarios["primary"] = Scenario(status=503)
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "deployments:\n"
        "  primary: {provider: openai, model: primary}\n"
        "  echo: {provider: mock, model: echo}\n"
        "routes:\n"
        "  chat: {deployments: [primary], fallbacks: [backup]}\n"
        "  backup: {deployments: [echo]}\n"
    )
    reset_timeout = 3.0  # generous: the requests "while open" must land before it ends
    worker = worker_factory(
        OPENAI_BASE_URL=fake_openai.base_url,
        LLM_WORKER_ROUTING_FILE=str(routing),
        LLM_WORKER_RETRY_MAX_ATTEMPTS="1",
        LLM_WORKER_BREAKER_FAIL_MAX="2",
        LLM_WORKER_BREAKER_RESET_TIMEOUT=str(reset_timeout),
    )
    worker.start()
    await worker.wait_ready()

    def trail(completed: ChatCompleted) -> list[tuple[str, str]]:
        return [(a.deployment, a.outcome) for a in completed.attempts or []]

    tripping = [await client.chat(_request(f"trip {i}"), timeout=30) for i in range(2)]
    opened_at = time.monotonic()
    circuit_after_trip = health(worker)["circuits"]["primary"]
    while_open = [await client.chat(_request(f"while open {i}"), timeout=30) for i in range(3)]
    answered_within_timeout = time.monotonic() - opened_at < reset_timeout
    calls_while_open = chat_models(fake_openai)["primary"] - 2

    fake_openai.scenarios["primary"] = Scenario()
    recovery: list[ChatCompleted] = []
    recovered = time.monotonic() + 30
    while not recovery or recovery[-1].deployment != "primary":
        assert time.monotonic() < recovered, "the primary never served again"
        recovery.append(await client.chat(_request("recovering"), timeout=30))
    later = [await client.chat(_request(f"later {i}"), timeout=30) for i in range(3)]
    circuit_after_recovery = health(worker)["circuits"]["primary"]
    note(
        f"breaker: opened after 2 failures, {len(while_open)} requests served by the fallback"
        f" while open with {calls_while_open} primary calls, {len(recovery)} requests until the"
        f" primary served again, then circuit {circuit_after_recovery}"
    )

    assert [trail(c) for c in tripping] == [[("primary", "failed"), ("echo", "completed")]] * 2
    assert circuit_after_trip == "open"
    assert answered_within_timeout
    assert [trail(c) for c in while_open] == [[("echo", "completed")]] * len(while_open)
    assert calls_while_open == 0
    assert circuit_after_recovery == "closed"
    assert [trail(c) for c in later] == [[("primary", "completed")]] * 3
    assert [c.content for c in later] == [f"Echo: later {i}" for i in range(3)]
