"""Model names producers choose (direct `provider/model` requests) keep bounded state.

Whatever models producers send, the worker keeps at most a bounded number of per-model
circuit breakers and Retry-After holds, one stats entry and one metric label per
provider (`provider/*`), and a small `/health`; configured deployments keep their own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman_runtime.bounded_keys import BoundedKeys
from ferryman_runtime.resilience import REPORTED_AD_HOC, Breaker, Breakers
from ferryman_runtime.upstreams.cooldowns import Cooldowns
from ferryman_runtime.upstreams.health import UpstreamRef, upstream_health
from ferryman_runtime.upstreams.quotas import REPORTED_UNNAMED, QuotaBook, QuotaLimits
from ferryman_runtime.upstreams.stats import UpstreamStats
from llm_worker.app import LlmWorker
from llm_worker.chat.service import ChatJob
from llm_worker.chat.streaming import Completion, Finish, StreamEvent, TextDelta, UsageReport, fold
from llm_worker.providers.mock import MockChatModel
from llm_worker.routing.table import MAX_DIRECT_MODEL
from llm_worker.settings import LlmWorkerSettings
from tests.unit.llm_worker.recording_replies import RecordingReplies

MAX_DIRECT = 32


class AnyModel:
    """Serves any model name: `busy-*` is rate limited (Retry-After 30 s), `down-*` is
    unavailable, anything else answers."""

    provider = "fuzz"

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[StreamEvent]:
        if model.startswith("busy"):
            raise FerrymanError(
                ErrorCode.RATE_LIMITED, "slow down", retryable=True, retry_after=30.0
            )
        if model.startswith("down"):
            raise FerrymanError(ErrorCode.UNAVAILABLE, "down", retryable=True)
        yield TextDelta(text="fine")
        yield UsageReport(input_tokens=1, output_tokens=1)
        yield Finish(reason="stop", model=model)

    async def generate(self, request: ChatRequest, model: str) -> Completion:
        return await fold(self.stream(request, model))

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _fail(breaker: Breaker) -> None:
    with pytest.raises(FerrymanError):
        async with breaker.guard():
            raise FerrymanError(ErrorCode.UNAVAILABLE, "down", retryable=True)


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str]]]:
    return [
        (sample.name, dict(sample.labels))
        for family in registry.collect()
        for sample in family.samples
    ]


# --- the bounded map ---------------------------------------------------------------


def test_ad_hoc_keys_are_bounded_while_listed_keys_are_kept() -> None:
    keys = BoundedKeys(lambda key: [key], max_ad_hoc=3)
    for name in ("a", "b"):
        keys.get(name)

    for n in range(100):
        keys.get(f"p/{n}", "p/*")

    assert len(keys) == 2 + 3
    assert [key for key, _ in keys.listed()] == ["a", "b"]
    assert [key for key, _, _ in keys.ad_hoc()] == ["p/99", "p/98", "p/97"]
    assert keys.peek("p/0") is None
    assert len(keys) == 5


def test_a_full_map_drops_its_least_recently_used_idle_entry_and_else_its_oldest() -> None:
    busy: set[str] = set()
    keys = BoundedKeys(lambda key: key, max_ad_hoc=3, idle=lambda key: key not in busy)
    for name in ("p/a", "p/b", "p/c"):
        keys.get(name, "p/*")
    busy.update({"p/a", "p/c"})
    keys.get("p/a", "p/*")  # used again: now the most recent

    keys.get("p/d", "p/*")  # p/b is the only idle one
    assert {key for key, _, _ in keys.ad_hoc()} == {"p/a", "p/c", "p/d"}

    busy.add("p/d")
    keys.get("p/e", "p/*")  # none idle: the least recently used (p/c) goes
    assert [key for key, _, _ in keys.ad_hoc()] == ["p/e", "p/d", "p/a"]


def test_an_ad_hoc_key_listed_later_keeps_its_value_for_good() -> None:
    keys = BoundedKeys(lambda key: [key], max_ad_hoc=1)
    value = keys.get("p/m", "p/*")

    assert keys.get("p/m") is value
    keys.get("p/other", "p/*")
    keys.get("p/third", "p/*")
    assert keys.get("p/m", "p/*") is value
    assert [key for key, _ in keys.listed()] == ["p/m"]


def test_the_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedKeys(lambda key: key, max_ad_hoc=0)


# --- breakers, holds, quotas ---------------------------------------------------------


async def test_open_ad_hoc_circuits_outlive_idle_ones_and_share_their_groups_gauge() -> None:
    registry = CollectorRegistry()
    breakers = Breakers(registry, fail_max=1, reset_timeout=600, max_ad_hoc=2)
    breakers.get("main")
    await _fail(breakers.get("p/broken", "p/*"))

    for n in range(50):
        breakers.get(f"p/{n}", "p/*")

    assert len(breakers) == 1 + 2
    assert breakers.state_of("p/broken") == "open"
    assert not breakers.allows("p/broken")
    assert breakers.allows("p/never-seen")
    assert len(breakers) == 3  # asking creates nothing
    assert breakers.states() == {"main": "closed", "p/broken": "open"}
    assert [s for s in _samples(registry) if s[0] == "ferryman_upstream_circuit_state"] == [
        ("ferryman_upstream_circuit_state", {"upstream": "p/*"}),
        ("ferryman_upstream_circuit_state", {"upstream": "main"}),
    ]
    assert registry.get_sample_value("ferryman_upstream_circuit_state", {"upstream": "p/*"}) == 2
    assert registry.get_sample_value("ferryman_upstream_circuit_state", {"upstream": "main"}) == 0


async def test_a_group_has_its_ad_hoc_circuits_worst_state_for_health() -> None:
    # Without a routing file, health judges each provider as its group (`p/*`): a group
    # whose direct models' circuits are open must not read as closed, hence healthy.
    breakers = Breakers(CollectorRegistry(), fail_max=1, reset_timeout=600, max_ad_hoc=8)
    breakers.get("p/fine", "p/*")
    assert breakers.state_of("p/*") == "closed"

    await _fail(breakers.get("p/broken", "p/*"))

    assert breakers.state_of("p/*") == "open"
    assert breakers.state_of("q/*") == "closed"  # no such group
    assert breakers.state_of("p/fine") == "closed"
    ref = UpstreamRef("p/*", "llm", {"provider": "p", "model": "*"})
    health = upstream_health(ref, UpstreamStats(), breakers.state_of("p/*"))
    assert health.status == "unhealthy"


async def test_when_every_ad_hoc_circuit_is_open_memory_still_wins() -> None:
    registry = CollectorRegistry()
    breakers = Breakers(registry, fail_max=1, reset_timeout=600, max_ad_hoc=4)

    for n in range(40):
        await _fail(breakers.get(f"p/{n}", "p/*"))

    assert len(breakers) == 4
    assert [breakers.state_of(f"p/{n}") for n in range(36, 40)] == ["open"] * 4
    assert breakers.state_of("p/0") == "closed"  # forgotten: called again if asked for
    assert len(breakers.states()) == 4


async def test_a_breaker_with_a_call_in_flight_or_a_counted_failure_is_not_idle() -> None:
    breaker = Breaker("p/m", fail_max=3, reset_timeout=600)
    assert breaker.idle

    async with breaker.guard():
        assert not breaker.idle
    assert breaker.idle
    await _fail(breaker)
    assert (breaker.state, breaker.idle) == ("closed", False)


def test_health_lists_at_most_a_few_ad_hoc_circuits_that_are_not_closed() -> None:
    breakers = Breakers(CollectorRegistry(), fail_max=1, reset_timeout=600, max_ad_hoc=100)
    for n in range(100):
        breakers.get(f"p/{n}", "p/*")._breaker.open()  # pyright: ignore[reportPrivateUsage]

    states = breakers.states()

    assert len(states) == REPORTED_AD_HOC
    assert set(states) == {f"p/{n}" for n in range(100 - REPORTED_AD_HOC, 100)}


def test_cooldowns_of_ad_hoc_deployments_are_bounded_and_expired_ones_go_first() -> None:
    clock = Clock()
    cooldowns = Cooldowns(clock, max_ad_hoc=3)
    cooldowns.hold("main", 1000)
    cooldowns.hold("p/long", 1000, "p/*")
    for n in range(20):
        cooldowns.hold(f"p/{n}", 1, "p/*")
        clock.now += 2  # each hold has expired before the next

    assert len(cooldowns) == 1 + 3
    assert cooldowns.remaining("p/long") == pytest.approx(1000 - 40)
    assert cooldowns.remaining("main") == pytest.approx(1000 - 40)
    assert cooldowns.remaining("p/19") == 0.0

    for n in range(20):
        cooldowns.hold(f"q/{n}", 1000, "q/*")
    assert len(cooldowns) == 1 + 3
    assert cooldowns.remaining("main") > 0


def test_the_quota_snapshot_reports_configured_keys_and_only_the_busiest_others() -> None:
    clock = Clock()
    book = QuotaBook(clock)
    book.set_limits({"acme": QuotaLimits(requests=10)}, QuotaLimits(requests=1000))
    for n in range(500):
        for _ in range(1 + (n == 7) * 5):
            assert book.try_acquire(f"tenant-{n}") == 0.0
            book.release(f"tenant-{n}")

    snapshot = book.snapshot()

    assert len(snapshot) == 1 + REPORTED_UNNAMED
    assert "acme" in snapshot
    assert snapshot["tenant-7"]["requests"] == 6


# --- the whole worker ----------------------------------------------------------------


def _routing(tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "deployments:\n"
        "  main: {provider: fuzz, model: ok-main}\n"
        "  flaky: {provider: fuzz, model: down-main}\n"
        "routes:\n"
        "  chat: {deployments: [main]}\n"
        "  broken: {deployments: [flaky]}\n"
        "tenants:\n"
        '  "*": {requests: 1000000, window: 60}\n'
    )
    return path


def _worker(registry: CollectorRegistry, routing: Path | None) -> LlmWorker:
    settings = LlmWorkerSettings(
        _env_file=None,  # type: ignore[call-arg]
        routing_file=routing,
        retry_max_attempts=1,
        breaker_fail_max=2,
        breaker_reset_timeout=600,
        max_direct_models=MAX_DIRECT,
    )
    providers = {"mock": MockChatModel(), "fuzz": AnyModel()}
    return LlmWorker(settings, providers=providers, registry=registry)


async def _send(worker: LlmWorker, model: str, tenant: str | None = None) -> str:
    replies = RecordingReplies()
    request = ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    job = ChatJob(request=request, replies=replies, tenant=tenant)  # type: ignore[arg-type]
    await worker.service.execute(job)
    return replies.types()[-1].rsplit(".", 1)[-1]


async def _send_unknown_models(worker: LlmWorker, first: int, count: int) -> dict[str, int]:
    """Every fifth request goes to a configured route; the others name a new model."""
    outcomes: dict[str, int] = {}
    for n in range(first, first + count):
        kind = n % 5
        if kind == 0:
            sent = [("chat" if n % 10 else "broken", None)]
        elif kind == 1:
            sent = [(f"mock/model-{n}", None)]  # the mock has only `echo`: not_found
        elif kind == 2:
            sent = [(f"fuzz/busy-{n}", None)]  # a Retry-After hold per model
        elif kind == 3:
            sent = [(f"fuzz/down-{n}", None)] * 2  # opens this model's circuit
        else:
            sent = [(f"fuzz/ok-{n}", f"tenant-{n}")]
        for model, tenant in sent:
            outcome = await _send(worker, model, tenant)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


async def test_thousands_of_unknown_models_leave_breakers_stats_metrics_and_health_bounded(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    worker = _worker(registry, _routing(tmp_path))
    res = worker.resilience

    await _send_unknown_models(worker, 0, 1000)
    worker.worker.health()  # exports the health gauge
    series_early = _samples(registry)
    outcomes = await _send_unknown_models(worker, 1000, 4000)
    health: dict[str, Any] = worker.worker.health()

    assert outcomes == {"completed": 1200, "failed": 3600}
    assert len(res.breakers or ()) <= 2 + MAX_DIRECT  # main, flaky and the direct models
    assert len(res.cooldowns) <= MAX_DIRECT
    assert len(res.stats) <= 2 + 2  # main, flaky, mock/*, fuzz/*
    assert _samples(registry) == series_early  # no new series after 1,000 requests
    labelled = {
        labels.get("deployment") or labels["upstream"]
        for _, labels in _samples(registry)
        if "deployment" in labels or "upstream" in labels
    }
    assert labelled <= {"main", "flaky", "mock/*", "fuzz/*", "none"}
    assert {"main", "flaky", "fuzz/*"} <= labelled
    assert registry.get_sample_value("ferryman_upstream_circuit_state", {"upstream": "flaky"}) == 2
    assert registry.get_sample_value("ferryman_upstream_circuit_state", {"upstream": "fuzz/*"}) == 2
    main_calls = {
        "gen_ai_operation_name": "chat", "gen_ai_provider_name": "fuzz",
        "gen_ai_request_model": "ok-main", "upstream": "main", "error_type": "",
    }  # fmt: skip
    assert (
        registry.get_sample_value("gen_ai_client_operation_duration_seconds_count", main_calls)
        == 500
    )
    call_models = _label_values(registry, "gen_ai_", "gen_ai_request_model")
    assert call_models == {"ok-main", "down-main", "fuzz/*", "mock/*"}
    usage_models = _label_values(registry, "ferryman_usage_", "gen_ai_request_model")
    assert len(usage_models) <= 2 + 20 + 1  # configured, the budget, `other`
    tenants = {labels["tenant"] for _, labels in _samples(registry) if "tenant" in labels}
    assert len(tenants) <= 50 + 2  # the budget, `other` and `none`
    assert len(health["circuits"]) <= 2 + REPORTED_AD_HOC
    assert health["circuits"]["flaky"] == "open"
    assert set(health["deployments"]) == {"main", "flaky"}
    assert len(health["quotas"]["tenants"]) <= REPORTED_UNNAMED
    assert len(json.dumps(health)) < 12_000


def _label_values(registry: CollectorRegistry, prefix: str, label: str) -> set[str]:
    return {
        labels[label]
        for name, labels in _samples(registry)
        if name.startswith(prefix) and label in labels
    }


async def test_without_a_routing_file_direct_calls_show_in_their_providers_health_entry() -> None:
    registry = CollectorRegistry()
    worker = _worker(registry, None)

    await _send_unknown_models(worker, 1, 4)  # one each: not_found, busy, down twice, ok

    deployments = worker.worker.health()["deployments"]
    assert set(deployments) == {"fuzz/*", "mock/*"}
    assert (deployments["fuzz/*"]["recent_calls"], deployments["fuzz/*"]["error_rate"]) == (4, 0.75)
    assert deployments["mock/*"]["recent_calls"] == 1


async def test_a_direct_model_name_longer_than_the_bound_is_an_invalid_request() -> None:
    worker = _worker(CollectorRegistry(), None)
    replies = RecordingReplies()
    model = "fuzz/" + "x" * MAX_DIRECT_MODEL
    request = ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )

    await worker.service.execute(ChatJob(request=request, replies=replies))  # type: ignore[arg-type]

    (error,) = [data["error"] for _, data in replies.events]
    assert error["code"] == "invalid_request"
    assert "x" * 20 not in error["message"]
    assert len(worker.resilience.breakers or ()) == 0
    assert len(worker.resilience.stats) == 0
