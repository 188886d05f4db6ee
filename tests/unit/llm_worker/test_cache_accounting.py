"""The worker's side of the caching contract: cache counts folded from the provider stream,
summed over turns and into the usage event; the routing and settings keys; the call context;
and the cache metric families."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from ferryman.contracts import ChatRequest
from ferryman.contracts.llm import Usage
from llm_worker.chat.accounting import UsageTally, usage_event
from llm_worker.chat.job import ChatJob
from llm_worker.chat.streaming import Finish, UsageReport, fold_events
from llm_worker.metrics import GeminiCacheStats, LlmMetrics, watch_gemini_caches
from llm_worker.providers.call_context import CallContext, call_context, current_call
from llm_worker.routing.config import RoutingConfig
from llm_worker.settings import LlmWorkerSettings
from llm_worker.tool_loop.turns import summed_usage


def test_the_fold_keeps_cache_reads_writes_and_long_writes() -> None:
    completion = fold_events(
        [
            UsageReport(
                input_tokens=1200, output_tokens=5, cached_input_tokens=100,
                cache_write_tokens=1000, cache_write_long_tokens=400,
            ),
            Finish(reason="stop"),
        ]
    )  # fmt: skip

    assert completion.usage == Usage(
        input_tokens=1200, output_tokens=5, cached_input_tokens=100, cache_write_tokens=1000,
        cache_write_long_tokens=400,
    )  # fmt: skip


def test_turns_sum_their_cache_counts_and_unknown_stays_none() -> None:
    first = Usage(input_tokens=10, output_tokens=1, cache_write_tokens=8, cache_write_long_tokens=8)
    second = Usage(input_tokens=12, output_tokens=1, cached_input_tokens=8, cache_write_tokens=2)

    total = summed_usage([first, second])

    assert (total.cached_input_tokens, total.cache_write_tokens, total.cache_write_long_tokens) == (
        8, 10, 8
    )  # fmt: skip
    plain = summed_usage([Usage(input_tokens=1, output_tokens=1)])
    assert (plain.cache_write_tokens, plain.cache_write_long_tokens) == (None, None)


def test_the_usage_event_carries_the_requests_cache_counts() -> None:
    tally = UsageTally()
    tally.answered("anthropic/claude-sonnet-4-5", Usage(
        input_tokens=1000, output_tokens=5, cache_write_tokens=900, cache_write_long_tokens=300
    ))  # fmt: skip
    tally.add(Usage(input_tokens=1000, output_tokens=5, cached_input_tokens=900))
    request = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    job = cast(
        ChatJob, SimpleNamespace(tally=tally, request=request, key=("/src", "req-1"), tenant="acme")
    )

    event = usage_event(job, operation="chat", target="default", outcome="completed", seconds=1.0)

    assert (event.input_tokens, event.cache_read_tokens, event.cache_write_tokens) == (
        2000,
        900,
        900,
    )
    assert event.cache_write_long_tokens == 300
    assert event.response_cache is None


def test_the_routing_file_takes_prompt_and_response_cache_keys() -> None:
    config = RoutingConfig.parse(
        b"""
deployments:
  flash: {provider: gemini, model: gemini-2.5-flash, prompt_cache: {min_tokens: 1024}}
  vllm:
    {provider: openai, model: llama, endpoint: "http://vllm:8000/v1", prompt_cache: {send: false}}
routes:
  agent:
    deployments: [flash, vllm]
    prompt_cache: {auto: true, retention: short}
    response_cache:
      {enabled: true, ttl: 600, max_ttl: 3600, cache_sampled: false, namespace: docs-v3}
  plain: {deployments: [flash]}
"""
    )

    assert config.deployments["flash"].prompt_cache.min_tokens == 1024
    assert config.deployments["flash"].prompt_cache.send is True
    assert config.deployments["vllm"].prompt_cache.send is False
    agent, plain = config.routes["agent"], config.routes["plain"]
    assert (agent.prompt_cache.auto, agent.prompt_cache.retention) == (True, "short")
    assert (agent.response_cache.enabled, agent.response_cache.ttl) == (True, 600)
    assert (agent.response_cache.max_ttl, agent.response_cache.namespace) == (3600, "docs-v3")
    assert (plain.prompt_cache.auto, plain.response_cache.enabled) == (False, False)


@pytest.mark.parametrize(
    "route",
    [
        "{deployments: [d], response_cache: {namespace: 'a/b'}}",
        "{deployments: [d], response_cache: {ttl: 0}}",
        "{deployments: [d], prompt_cache: {retention: forever}}",
        "{deployments: [d], response_cache: {enable: true}}",
    ],
)
def test_bad_cache_keys_in_the_routing_file_are_refused(route: str) -> None:
    text = f"deployments: {{d: {{provider: openai, model: m}}}}\nroutes: {{r: {route}}}\n"

    with pytest.raises(ValueError, match="routing file is invalid"):
        RoutingConfig.parse(text.encode())


def test_cache_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_WORKER_RESPONSE_CACHE__BACKEND", "redis")
    monkeypatch.setenv("LLM_WORKER_RESPONSE_CACHE__REDIS_URL", "redis://:s3cret@cache:6379/0")
    monkeypatch.setenv("LLM_WORKER_RESPONSE_CACHE__MAX_TTL", "600")
    monkeypatch.setenv("LLM_WORKER_PROMPT_CACHE_AUTO", "true")
    monkeypatch.setenv("LLM_WORKER_GEMINI__CACHE_TTL_SHORT", "120")

    settings = LlmWorkerSettings()

    cache = settings.response_cache
    assert (cache.backend, cache.max_ttl, cache.default_ttl) == ("redis", 600, 3600)
    assert cache.redis_url is not None
    assert "s3cret" not in repr(cache)  # the URL may hold the password
    assert settings.prompt_cache_auto is True
    assert (settings.gemini.cache_ttl_short, settings.gemini.cache_ttl_long) == (120, 3600)


def test_a_redis_backend_without_a_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_WORKER_RESPONSE_CACHE__BACKEND", "redis")

    with pytest.raises(ValidationError, match=r"needs response_cache\.redis_url"):
        LlmWorkerSettings()


async def test_the_call_context_is_seen_by_the_call_and_its_tasks_and_reset_after() -> None:
    seen: list[CallContext | None] = []

    async def adapter_task() -> None:
        seen.append(current_call())

    context = CallContext(tenant="acme", request_id="req-1", first_token_timeout=30.0)
    with call_context(context):
        seen.append(current_call())
        await asyncio.create_task(adapter_task())

    assert seen == [context, context]
    assert current_call() is None


class _GeminiClient:
    def __init__(self, alive: int, operations: dict[tuple[str, str], int]) -> None:
        self.stats = GeminiCacheStats(cached_contents=alive, operations=operations)

    def cache_stats(self) -> GeminiCacheStats:
        return self.stats


def test_gemini_cache_families_read_every_client_once_at_scrape_time() -> None:
    registry = CollectorRegistry()
    shared = _GeminiClient(2, {("create", "ok"): 3, ("create", "invalid_request"): 1})
    dedicated = _GeminiClient(1, {("delete", "ok"): 4})
    table: dict[str, Any] = {}
    watch_gemini_caches(registry, {"gemini": shared, "openai": object()}, lambda: table or None)

    assert (
        registry.get_sample_value("llm_worker_gemini_cached_contents", {"upstream": "gemini/*"})
        == 2
    )
    table.update({"flash": shared, "pro-eu": dedicated, "gpt": object()})
    shared.stats = GeminiCacheStats(cached_contents=5, operations=shared.stats.operations)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("llm_worker_gemini_cached_contents", upstream="gemini/*") == 5
    assert value("llm_worker_gemini_cached_contents", upstream="pro-eu") == 1
    assert value("llm_worker_gemini_cached_contents", upstream="flash") is None  # same client
    ops = "llm_worker_gemini_cache_operations_total"
    assert value(ops, upstream="gemini/*", operation="create", outcome="invalid_request") == 1
    assert value(ops, upstream="pro-eu", operation="delete", outcome="ok") == 4
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        watch_gemini_caches(registry, {}, lambda: None)


def test_response_cache_families_and_the_store_gauges() -> None:
    registry = CollectorRegistry()
    metrics = LlmMetrics(registry)
    held = {"entries": 3, "bytes": 4096}

    metrics.response_cache.lookups.labels(target="docs", outcome="hit").inc()
    metrics.response_cache.skips.labels(reason="sampled").inc()
    metrics.response_cache.invalidations.labels(scope="tenant").inc()
    metrics.response_cache.watch_store(lambda: held["entries"], lambda: held["bytes"])
    held["entries"] = 4

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("llm_worker_response_cache_lookups_total", target="docs", outcome="hit") == 1
    assert value("llm_worker_response_cache_skips_total", reason="sampled") == 1
    assert value("llm_worker_response_cache_invalidations_total", scope="tenant") == 1
    assert value("llm_worker_response_cache_entries") == 4
    assert value("llm_worker_response_cache_held_bytes") == 4096
