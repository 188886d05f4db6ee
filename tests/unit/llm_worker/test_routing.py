"""Routes: the routing file, balancing strategies, fallbacks, skips and failover."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ferryman.contracts import ChatRequest, ErrorCode, FerrymanError
from ferryman_runtime.resilience import Breakers, RetryPolicy
from ferryman_runtime.upstreams.cooldowns import Cooldowns
from ferryman_runtime.upstreams.stats import StatsBoard
from llm_worker.chat.service import ChatJob, ChatService, LlmMetrics, Resilience
from llm_worker.providers.resolver import ModelResolver
from llm_worker.routing.config import RoutingConfig
from llm_worker.routing.plan import AttemptPlan, Skip
from llm_worker.routing.table import build_table
from tests.unit.llm_worker.recording_replies import RecordingReplies
from tests.unit.llm_worker.test_resilience import FlakyModel

CONFIG = {
    "deployments": {
        "a": {"provider": "flaky", "model": "a", "weight": 3},
        "b": {"provider": "flaky", "model": "b", "weight": 1},
        "c": {"provider": "healthy", "model": "c"},
    },
    "routes": {"chat": {"deployments": ["a", "b"], "fallbacks": ["backup"]},
               "backup": {"deployments": ["c"]}},
}  # fmt: skip


def _plan(config: dict, alias: str = "chat", gate=lambda _: None, **kw) -> AttemptPlan:
    return AttemptPlan(RoutingConfig.model_validate(config), alias, kw.pop("stats", StatsBoard()),
                     gate, **kw)  # fmt: skip


def _drain(plan: AttemptPlan) -> list[str]:
    names = []
    while (candidate := plan.next()) is not None:
        names.append(candidate.name)
    return names


def test_weighted_order_then_fallbacks_each_deployment_once() -> None:
    rng = random.Random(3)

    orders = [_drain(_plan(CONFIG, rng=rng)) for _ in range(400)]

    assert all(sorted(o[:2]) == ["a", "b"] and o[2:] == ["c"] for o in orders)
    firsts = Counter(o[0] for o in orders)
    assert 240 < firsts["a"] < 360  # weight 3 : 1


def test_gated_deployments_are_skipped_with_their_reason_and_reopened_after_the_wait() -> None:
    def gate(name: str) -> Skip | None:
        return {"a": Skip("quota", 2.5), "c": Skip("circuit_open", math.inf)}.get(name)

    plan = _plan(CONFIG, gate=gate)

    assert _drain(plan) == ["b"]
    assert {n: s.reason for n, s in plan.skipped.items()} == {"a": "quota", "c": "circuit_open"}
    assert plan.reopen() == 2.5
    assert plan.skipped == {}
    assert _drain(plan) == []  # b was tried; a and c are still gated


def test_least_in_flight_picks_the_idlest_deployment() -> None:
    config = {**CONFIG, "routes": {"chat": {"deployments": ["a", "b", "c"],
                                            "strategy": "least_in_flight"}}}  # fmt: skip
    stats = StatsBoard()
    for _ in range(3):
        stats.get("a").started()
    stats.get("c").started()

    assert _drain(_plan(config, stats=stats)) == ["b", "c", "a"]


def test_lowest_latency_prefers_untried_then_the_fastest_average() -> None:
    config = {**CONFIG, "routes": {"chat": {"deployments": ["a", "b", "c"],
                                            "strategy": "lowest_latency"}}}  # fmt: skip
    stats = StatsBoard()
    stats.get("a").started()
    stats.get("a").finished(failed=False, latency=0.9)
    stats.get("b").started()
    stats.get("b").finished(failed=False, latency=0.2)

    assert _drain(_plan(config, stats=stats)) == ["c", "b", "a"]


def test_divert_moves_to_another_route_and_exclude_removes_a_deployment() -> None:
    chat = {"deployments": ["a", "b"], "larger_context": "backup"}
    config = {**CONFIG, "routes": {**CONFIG["routes"], "chat": chat}}
    plan = _plan(config)
    first = plan.next()
    assert first is not None

    plan.exclude("a")
    plan.divert("backup")

    assert _drain(plan) == ["c"]


def test_cooldowns_hold_until_their_time_and_never_shorten() -> None:
    now = [100.0]
    cooldowns = Cooldowns(clock=lambda: now[0])

    cooldowns.hold("a", 2.0)
    cooldowns.hold("a", 1.0)
    now[0] = 101.5

    assert cooldowns.remaining("a") == pytest.approx(0.5)
    now[0] = 102.0
    assert cooldowns.remaining("a") == 0.0


def test_a_routing_file_with_unknown_references_is_rejected_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "routing.yaml"
    bad.write_text("deployments: {}\nroutes:\n  chat: {deployments: [nope]}\n")
    dangling = b"deployments: {a: {provider: mock, model: echo}}\n" \
        b"routes: {chat: {deployments: [a], larger_context: big}}\n"  # fmt: skip

    with pytest.raises(ValueError, match="unknown deployments"):
        RoutingConfig.load(bad)
    with pytest.raises(ValueError, match="unknown routes"):
        RoutingConfig.parse(dangling)
    with pytest.raises(ValueError, match="credentials"):
        RoutingConfig.parse(
            b"deployments: {a: {provider: openai, model: m, credentials: sk-live-123}}"
        )


def test_a_deployment_of_an_unconfigured_provider_is_rejected() -> None:
    config = RoutingConfig.model_validate(CONFIG)

    with pytest.raises(ValueError, match="'healthy', which is not configured"):
        build_table(config, ModelResolver({"flaky": FlakyModel(0, _down())}, {}), lambda _: None)


def _down() -> FerrymanError:
    return FerrymanError(ErrorCode.UNAVAILABLE, "down", retryable=True)


async def test_a_retryable_failure_fails_over_and_the_fallback_serves() -> None:
    registry, replies = CollectorRegistry(), RecordingReplies()
    down = FlakyModel(100, _down())
    healthy = FlakyModel(0, FerrymanError(ErrorCode.INTERNAL, "unused"))
    healthy.provider = "healthy"
    resolver = ModelResolver({"flaky": down, "healthy": healthy}, {})
    service = ChatService(
        resolver,
        LlmMetrics(registry),
        resilience=Resilience(
            breakers=Breakers(registry, fail_max=10, reset_timeout=30),
            retry=RetryPolicy(max_attempts=2, base_delay=0.001, max_delay=0.002),
        ),
    )
    service.apply_routing(
        build_table(RoutingConfig.model_validate(CONFIG), resolver, lambda _: None)
    )
    request = ChatRequest.model_validate(
        {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    )

    await service.execute(ChatJob(request=request, replies=replies))  # type: ignore[arg-type]

    assert replies.types()[-1] == "ferryman.llm.chat.completed"
    completed = replies.events[-1][1]
    assert completed["provider"] == "healthy"
    assert down.calls == 4  # two deployments of the primary route, two attempts each
    assert healthy.calls == 1
    assert completed["deployment"] == "c"
    attempts = completed["attempts"]
    assert [(a["outcome"], a.get("error_code")) for a in attempts] == [
        ("failed", "unavailable")
    ] * 4 + [("completed", None)]
    assert sorted(a["deployment"] for a in attempts[:4]) == ["a", "a", "b", "b"]
    assert attempts[4]["deployment"] == "c"
    assert (
        registry.get_sample_value(
            "llm_worker_failovers_total", {"upstream": "a", "reason": "unavailable"}
        )
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "ferryman_requests_total",
            {"operation": "chat", "target": "chat", "outcome": "completed"},
        )
        == 1.0
    )


def test_the_documented_example_routing_file_is_valid() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "llm-routing.md").read_text(encoding="utf-8")
    section = doc.split("## The routing file", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]

    config = RoutingConfig.parse(example.encode())

    assert set(config.routes) == {"chat", "cheap", "long", "apology"}
    assert config.routes["chat"].strategy == "least_in_flight"
    assert config.deployments["openai-eu"].credentials == "env:OPENAI_EU_KEY"
    assert config.tenant_quotas()[1] is not None


def test_waiting_out_a_retry_after_is_a_per_route_choice_off_by_default() -> None:
    routes = b"deployments: {a: {provider: p, model: m}}\nroutes: {chat: {deployments: [a]%s}}"

    waiting = RoutingConfig.parse(routes % b", retry: {wait_retry_after: 2.5}")
    default = RoutingConfig.parse(routes % b"")

    assert waiting.routes["chat"].retry.wait_retry_after == 2.5
    assert default.routes["chat"].retry.wait_retry_after is None
    with pytest.raises(ValueError, match="wait_retry_after"):
        RoutingConfig.parse(routes % b", retry: {wait_retry_after: -1}")
